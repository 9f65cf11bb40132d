import copy

import pytest
import torch

from iclft.capture.attention import record_attention
from iclft.models.families import blocks_of, family_for, get_module
from iclft.tuning.ft_kv import FtKvSession, kv_parameters, lm_loss
from tests.conftest import random_prompts

KINDS = ["llama", "gpt2", "gpt_neox", "opt"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _kv_names(kind, n_layers):
    """state_dict names FT-KV may change."""
    if kind == "gpt2":
        return {f"transformer.h.{i}.attn.c_attn.{w}" for i in range(n_layers) for w in ("weight", "bias")}
    if kind == "gpt_neox":
        return {f"gpt_neox.layers.{i}.attention.query_key_value.{w}" for i in range(n_layers)
                for w in ("weight", "bias")}
    base = "model.layers" if kind == "llama" else "model.decoder.layers"
    return {f"{base}.{i}.self_attn.{p}_proj.{w}" for i in range(n_layers) for p in ("k", "v")
            for w in ("weight", "bias")}


def _q_slice(kind, model, w_or_b: torch.Tensor) -> torch.Tensor:
    """The Q part of a fused qkv weight or bias."""
    if kind == "gpt2":  # Conv1D (d_in, 3d) / bias (3d,): [Q | K | V]
        d = w_or_b.shape[-1] // 3
        return w_or_b[..., :d]
    h = model.config.num_attention_heads  # NeoX Linear (3d, d_in): per head [q_h | k_h | v_h]
    hd = w_or_b.shape[0] // (3 * h)
    return w_or_b.reshape(h, 3, hd, *w_or_b.shape[1:])[:, 0]


def _kv_slices(kind, model, w_or_b):
    if kind == "gpt2":
        d = w_or_b.shape[-1] // 3
        return w_or_b[..., d:]
    h = model.config.num_attention_heads
    hd = w_or_b.shape[0] // (3 * h)
    return w_or_b.reshape(h, 3, hd, *w_or_b.shape[1:])[:, 1:]


@pytest.mark.parametrize("kind", KINDS)
def test_only_k_and_v_change_and_base_is_restored(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    n_layers = len(blocks_of(model, fam))
    before = _state(model)
    flags = [p.requires_grad for p in model.parameters()]
    examples = random_prompts(3, len(tok), seed=4, lo=5, hi=12)
    with FtKvSession(model, fam) as s:
        res = s.train(examples, lr=0.5)
        during = _state(model)
    changed = {k for k in before if not torch.equal(before[k], during[k])}
    assert changed, "FT-KV changed nothing"
    assert changed <= _kv_names(kind, n_layers), f"non-K/V tensors changed: {changed - _kv_names(kind, n_layers)}"
    if fam.qkv_layout != "separate":
        for name in changed:
            assert torch.equal(_q_slice(kind, model, before[name]), _q_slice(kind, model, during[name])), name
            assert not torch.equal(_kv_slices(kind, model, before[name]), _kv_slices(kind, model, during[name]))
    else:
        assert any(".k_proj." in n for n in changed) and any(".v_proj." in n for n in changed)
    assert res.steps == len(examples) and len(res.losses) == len(examples)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical base model
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt_neox"])
def test_lr_zero_changes_nothing(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    before = _state(model)
    with FtKvSession(model, fam) as s:
        res = s.train(random_prompts(2, len(tok), seed=6), lr=0.0)
        during = _state(model)
    assert res.steps == 2
    assert all(torch.equal(before[k], during[k]) for k in before)


def _reference_sgd(model, fam, examples, lr):
    """Plain SGD written out by hand on a copy: batch 1, one step per example in order, all-token loss."""
    ref = copy.deepcopy(model)
    params = [(p, m) for _, p, m in kv_parameters(ref, fam)]
    losses = []
    for ids in examples:
        x = torch.tensor([ids])
        for p, _ in params:
            p.requires_grad_(True)
            p.grad = None
        logits = ref(input_ids=x).logits[0]
        # every token after the first is predicted from the one before it
        loss = sum(torch.nn.functional.cross_entropy(logits[t - 1:t], x[0, t:t + 1]) for t in range(1, len(ids)))
        loss = loss / (len(ids) - 1)
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for p, m in params:
                step = lr * p.grad if m is None else lr * p.grad * m
                p -= step
    return ref, losses


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_matches_hand_written_sgd_in_order(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    examples = random_prompts(3, len(tok), seed=7, lo=4, hi=10)
    ref, ref_losses = _reference_sgd(model, fam, examples, lr=0.3)
    with FtKvSession(model, fam) as s:
        res = s.train(examples, lr=0.3)
        got = _state(model)
        assert res.losses == pytest.approx(ref_losses, abs=1e-5)
        res_rev = s.train(examples[::-1], lr=0.3)  # order matters: a different model
        got_rev = _state(model)
    want = ref.state_dict()
    for k in got:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(got[k], got_rev[k]) for k in got)
    assert res_rev.steps == 3


def test_loss_is_over_every_token(tiny_models, tok):
    model = tiny_models["llama"]
    ids = random_prompts(1, len(tok), seed=8, lo=9, hi=9)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        want = -sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))) / (len(ids) - 1)
        assert float(lm_loss(model, ids)) == pytest.approx(want, abs=1e-5)


def test_records_demo_queries_of_each_pass(tiny_models, tok):
    model = tiny_models["llama"]
    fam = family_for(model.config)
    examples = random_prompts(2, len(tok), seed=9, lo=5, hi=8)
    with FtKvSession(model, fam) as s:
        res = s.train(examples, lr=0.2, record_from=[1, 2])
    h, d = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    total = (len(examples[0]) - 1) + (len(examples[1]) - 2)
    assert set(res.demo_queries) == set(range(len(blocks_of(model, fam))))
    assert res.demo_queries[0].shape == (h, total, d)
    # the first demonstration's queries come from the untouched model (post-RoPE, as attention sees them)
    with torch.no_grad(), record_attention(model, fam, [1]) as rec:
        model(torch.tensor([examples[0]]))
    torch.testing.assert_close(res.demo_queries[1][:, : len(examples[0]) - 1], rec.queries[1][0, :, 1:])
    # the second one's come after the first update, so its layer-1 queries differ from the base model's
    with torch.no_grad(), record_attention(model, fam, [1]) as rec:
        model(torch.tensor([examples[1]]))
    assert not torch.allclose(res.demo_queries[1][:, len(examples[0]) - 1:], rec.queries[1][0, :, 2:])
    attn = get_module(blocks_of(model, fam)[0], fam.attn)
    assert model.config._attn_implementation in ("sdpa", "eager") and attn is not None
