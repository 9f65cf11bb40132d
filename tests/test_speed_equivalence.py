"""The speed-ups of the "Fast studies" work compute the same numbers as the straightforward code they replace.

- fine-tuning: the LM head applied only where labels are (`lm_loss`) == cross-entropy of the full logits, loss
  and gradients (tied embeddings too), on tiny models of several families, plain and under PEFT's LoRA;
  a whole `finetune` run with it and the fused AdamW == the reference loop (full logits, per-tensor AdamW);
- the implicit study's circuits unit reusing the ft unit's model == training it again;
- activation patching from the KV cache of the shared prefix, and with several components per forward pass,
  == one full corrupted run per component (`patch_together`);
- capture with `logits_to_keep=1` and the copy-free prefix cache == full recomputation.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from iclft.capture import capture
from iclft.capture.prefix import cache_of, prefix_cache
from iclft.circuits.patching import activation_patching, components, make_pairs, patch_together
from iclft.models.families import family_for
from iclft.models.toy import tiny_model
from iclft.tuning import finetune as ft_mod
from iclft.tuning.finetune import FinetuneSpec, finetune, lm_batch, lm_loss
from tests.conftest import icl_pairs

VOCAB = 40
KINDS = ["llama", "gpt2", "gpt_neox", "opt", "gemma"]


INSTRUCTION = [7, 8, 9, 10, 11, 12, 13]


def _examples(n=10, seed=0, instruction=()):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        q = list(instruction) + torch.randint(4, VOCAB, (5 + i % 4,), generator=g).tolist()
        ans = [4 + (q[-1] % 5), 4 + (q[-2] % 3), 3][: 1 + i % 3]
        out.append((q + ans, [0] * len(q) + [1] * len(ans)))
    return out


def _tied_llama():
    cfg = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                               pad_token_id=0)
    torch.manual_seed(3)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _full_logits_loss(net, ids, mask, pos, labels):
    """The loss as finetune computed it before: full logits at every position."""
    logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                             labels[:, 1:].reshape(-1))


def _grads(net, loss_fn, batch):
    net.zero_grad(set_to_none=True)
    loss = loss_fn(net, *batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", [*KINDS, "qwen2", "tied_llama"])
def test_shared_prefix_loss_equals_full_logits(kind):
    model = _tied_llama() if kind == "tied_llama" else tiny_model(kind, VOCAB, seed=1)
    net = copy.deepcopy(model).requires_grad_(True)
    examples, idx = _examples(instruction=INSTRUCTION), list(range(8))
    cut = ft_mod.shared_prefix(examples, idx, "answer")
    assert cut == len(INSTRUCTION)
    assert ft_mod.shared_prefix(examples, idx, "all") == 0 and ft_mod.shared_prefix(examples, [0], "answer") == 0
    ref_loss, ref = _grads(net, _full_logits_loss, lm_batch(examples, idx, 0, "answer", "cpu"))
    prefix, *rows = ft_mod.prefix_lm_batch(examples, idx, cut, 0, "cpu")
    for keep in (True, False):
        loss, got = _grads(net, lambda n, *b, keep=keep: lm_loss(n, *b, keep=keep, prefix=prefix), rows)
        torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
        assert set(got) == set(ref)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=0, msg=name)


def test_shared_prefix_stops_before_the_first_predicted_answer_token():
    # the hidden state at position t predicts token t + 1: an answer token right after the common prefix
    # needs the prefix's last position, which must then be computed per row
    ex = [([5, 6, 7, 8, 9], [0, 0, 0, 1, 1]), ([5, 6, 7, 8, 10, 11], [0, 0, 0, 0, 1, 1])]
    assert ft_mod.shared_prefix(ex, [0, 1], "answer") == 2
    ex = [([5, 6, 7, 8], [0, 0, 0, 1]), ([5, 6, 7, 8], [0, 0, 0, 1])]  # identical rows: a suffix is left
    assert ft_mod.shared_prefix(ex, [0, 1], "answer") == 2


@pytest.mark.parametrize("kind", [*KINDS, "tied_llama"])
@pytest.mark.parametrize("loss_on", ["answer", "all"])
def test_answer_only_head_equals_full_logits(kind, loss_on):
    model = _tied_llama() if kind == "tied_llama" else tiny_model(kind, VOCAB, seed=1)
    if kind == "tied_llama":
        assert model.lm_head.weight is model.get_input_embeddings().weight
    net = copy.deepcopy(model).requires_grad_(True)
    batch = lm_batch(_examples(), list(range(8)), 0, loss_on, "cpu")
    ref_loss, ref = _grads(net, _full_logits_loss, batch)
    assert ft_mod.takes_logits_to_keep(net)
    loss, got = _grads(net, lambda n, *b: lm_loss(n, *b, keep=True), batch)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=0, msg=name)
    # models without `logits_to_keep`: the full logits, then the labelled positions
    loss2, got2 = _grads(net, lambda n, *b: lm_loss(n, *b, keep=False), batch)
    torch.testing.assert_close(loss2, ref_loss, atol=1e-6, rtol=0)
    for name in ref:
        torch.testing.assert_close(got2[name], ref[name], atol=1e-5, rtol=0, msg=name)


def _reference_finetune(monkeypatch):
    """Patch finetune back to the old computation: full left-padded rows, full logits, per-tensor AdamW."""
    from transformers import get_constant_schedule_with_warmup

    def old_optimizer(params, spec):
        opt = torch.optim.AdamW(list(params), lr=spec.lr, weight_decay=spec.weight_decay)
        return opt, get_constant_schedule_with_warmup(opt, num_warmup_steps=spec.warmup_steps)

    def old_loss(net, ids, mask, pos, labels, keep=True, prefix=None):
        assert prefix is None  # shared_prefix is patched to 0: every row is whole and left-padded
        return _full_logits_loss(net, ids, mask, pos, labels)

    monkeypatch.setattr(ft_mod, "make_optimizer", old_optimizer)
    monkeypatch.setattr(ft_mod, "shared_prefix", lambda *a: 0)
    monkeypatch.setattr(ft_mod, "lm_loss", old_loss)


@pytest.mark.parametrize("kind,method,instruction", [
    ("llama", "full", ()), ("gpt2", "full", INSTRUCTION), ("gpt_neox", "lora", INSTRUCTION),
    ("tied_llama", "full", INSTRUCTION), ("opt", "lora", ()), ("llama", "lora", INSTRUCTION)])
def test_finetune_weights_equal_reference_loop(kind, method, instruction, monkeypatch):
    model = _tied_llama() if kind == "tied_llama" else tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    # A few steps: Adam divides by sqrt(v), so 1-ulp differences in near-zero gradient entries grow step by
    # step into visible weight differences, as any float reordering (another thread count) would make them.
    spec = FinetuneSpec(method=method, lr=3e-3 if method == "full" else 3e-2, steps=4, batch_size=4,
                        warmup_steps=2)
    examples = _examples(instruction=instruction)
    new = finetune(model, fam, examples, spec, seed=5, pad_id=0)
    with monkeypatch.context() as m:
        _reference_finetune(m)
        ref = finetune(model, fam, examples, spec, seed=5, pad_id=0)
    np.testing.assert_allclose(new.losses, ref.losses, atol=1e-5, rtol=0)
    a, b = new.model.state_dict(), ref.model.state_dict()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_fused_adamw_matches_per_tensor_adamw():
    g = torch.Generator().manual_seed(0)
    p1 = [torch.nn.Parameter(torch.randn(5, 7, generator=g)) for _ in range(3)]
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    opt1, _ = ft_mod.make_optimizer(p1, FinetuneSpec(lr=1e-2, weight_decay=0.01, warmup_steps=0))
    opt2 = torch.optim.AdamW(p2, lr=1e-2, weight_decay=0.01)
    for _ in range(50):
        grads = [torch.randn(p.shape, generator=g) for p in p1]
        for p, q, gr in zip(p1, p2, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt1.step()
        opt2.step()
    for p, q in zip(p1, p2, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=0)


def test_evaluate_does_not_change_the_tuned_model():
    # what lets the circuits unit reuse the ft unit's model (trained with `evaluate`) bit for bit
    model = tiny_model("llama", VOCAB, seed=1)
    fam = family_for(model.config)
    spec = FinetuneSpec(lr=3e-3, steps=8, batch_size=4, eval_every=2)
    calls = []

    def evaluate(m):
        calls.append(1)
        with torch.no_grad():
            m(input_ids=torch.tensor([[5, 6, 7]]))
        return {}

    a = finetune(model, fam, _examples(), spec, seed=2, pad_id=0, evaluate=evaluate).model.state_dict()
    b = finetune(model, fam, _examples(), spec, seed=2, pad_id=0).model.state_dict()
    assert calls and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ implicit study


def test_circuits_unit_with_handover_equals_training_again():
    from iclft.models.load import load
    from iclft.studies import implicit_patterns as ip

    loaded = load("builtin")
    spec = ip.ImplicitSpec(families=["parity"], n_eval=4, k_values=[0, 2], ft_sizes=[16], curve_eval=2,
                           full=FinetuneSpec(method="full", lr=3e-4, steps=3, batch_size=8, warmup_steps=1),
                           ft_methods=["full"], circuit_pairs=3, circuit_k=2, top_k=4)
    n_train = 17
    ip._FT_HANDOVER.clear()
    alone = ip.run_unit(spec, loaded, "parity", 0, "circuits", n_train)
    assert not ip._FT_HANDOVER
    ip.run_unit(spec, loaded, "parity", 0, "ft_full", n_train)
    assert len(ip._FT_HANDOVER) == 1
    handed = ip.run_unit(spec, loaded, "parity", 0, "circuits", n_train)
    assert not ip._FT_HANDOVER  # popped
    cols = [c for c in alone.columns if not c.startswith("seconds")]
    assert len(alone) > 3
    pd_equal = alone[cols].reset_index(drop=True).equals(handed[cols].reset_index(drop=True))
    assert pd_equal


# ------------------------------------------------------------------------------------------ patching


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_prefix_cached_patching_equals_full_runs(kind):
    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    batch = make_pairs(icl_pairs(5, VOCAB), 0)
    assert min(batch.first_diff) > 10  # the prefix cache is used
    res = activation_patching(model, fam, batch, batch_size=3)
    comps = components(model, fam)
    ref = np.stack([patch_together(model, fam, batch, [c]) for c in comps])  # one full corrupted run each
    ld_corrupt = patch_together(model, fam, batch, [])
    np.testing.assert_allclose(res.ld_corrupt, ld_corrupt, atol=1e-5)
    np.testing.assert_allclose(res.delta, ref - ld_corrupt[None], atol=1e-5)
    # several components per forward pass: the same numbers
    grouped = activation_patching(model, fam, batch, batch_size=3, max_tokens=10_000)
    np.testing.assert_allclose(grouped.delta, res.delta, atol=1e-5)
    np.testing.assert_allclose(grouped.ld_clean, res.ld_clean, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_prefix_cached_per_position_patching_equals_full_runs(kind):
    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    pairs = icl_pairs(3, VOCAB, seed=1, prefix_len=8)
    batch = make_pairs(pairs, 0)
    comps = components(model, fam)[:3] + [components(model, fam)[4]]
    res = activation_patching(model, fam, batch, comps, per_position=True)
    grouped = activation_patching(model, fam, batch, comps, per_position=True, max_tokens=10_000)
    assert res.positions == grouped.positions
    np.testing.assert_allclose(grouped.delta, res.delta, atol=1e-5)
    # the reference: the old one-run-per-(component, position) loop over the full prompts
    from iclft.circuits import patching as P

    sites = P._Sites(model, fam)
    with torch.no_grad():
        clean_acts, _, ld_corrupt = P._clean_and_corrupt(model, sites, batch)
        rows = []
        for c, p in res.positions:
            pos = torch.zeros_like(batch.mask, dtype=torch.bool)
            pos[:, p] = True
            rows.append(P._run_patched(model, sites, batch, P._patch_spec(sites, clean_acts, [c], pos)) - ld_corrupt)
    np.testing.assert_allclose(res.delta, torch.stack(rows).numpy(), atol=1e-5)


# ------------------------------------------------------------------------------------------ capture


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_capture_logits_equal_full_forward(kind):
    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15], [4, 20]]
    cap = capture(model, fam, prompts, [], pad_id=0, batch_size=2, logits=True)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            full = model(input_ids=torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(cap.logits[i], full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_copy_free_prefix_cache(kind):
    from transformers.cache_utils import DynamicCache

    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    prefix = list(range(4, 30))
    kv = prefix_cache(model, prefix)
    saved = [(k.clone(), v.clone()) for k, v in kv]
    ids = torch.tensor([[31, 32, 33], [34, 35, 36]])
    mask = torch.ones((2, len(prefix) + 3), dtype=torch.long)
    pos = torch.arange(len(prefix), len(prefix) + 3).expand(2, -1)
    with torch.no_grad():
        old = DynamicCache(ddp_cache_data=[(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in kv],
                           config=model.config)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=old, use_cache=True).logits
        got = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache_of(model, kv, 2),
                    use_cache=True).logits
        again = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache_of(model, kv, 2),
                      use_cache=True).logits
    assert torch.equal(got, ref) and torch.equal(again, ref)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(kv, saved, strict=True))
    # and the whole prefixed capture still equals full recomputation
    cap = capture(model, fam, [[31, 32], [33, 34, 35]], [], prefix=prefix, pad_id=0, logits=True)
    full = capture(model, fam, [prefix + [31, 32], prefix + [33, 34, 35]], [], pad_id=0, logits=True)
    torch.testing.assert_close(cap.logits, full.logits, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ implicit scoring


def _recompute_greedy(model, prompt, n, stop):
    """Greedy decoding without any cache: the whole sequence again for every new token."""
    ids, out = list(prompt), []
    for _ in range(n):
        with torch.no_grad():
            t = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        if t in stop:
            break
        out.append(t)
        ids.append(t)
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_scoring_with_a_shared_prefix_equals_recomputation(kind):
    from iclft.capture.decode import greedy_decode, last_logits

    model = tiny_model(kind, VOCAB, seed=2)
    g = torch.Generator().manual_seed(1)
    # a shared instruction, then prompts of different lengths (two of them identical up to their last token)
    prompts = [INSTRUCTION + torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 1)]
    prompts.append(prompts[1][:-1] + [(prompts[1][-1] + 1) % VOCAB])
    stop = {7, 11}
    got = greedy_decode(model, prompts, pad_id=0, max_new_tokens=6, stop_ids=stop, batch_size=4)
    assert got == [_recompute_greedy(model, p, 6, stop) for p in prompts]
    ll = last_logits(model, prompts, pad_id=0, batch_size=4)
    for p, row in zip(prompts, ll, strict=True):
        with torch.no_grad():
            full = model(input_ids=torch.tensor([p])).logits[0, -1]
        torch.testing.assert_close(row, full, atol=1e-5, rtol=0)


def test_prefix_split_of_a_batch():
    from iclft.capture.decode import batch_inputs

    model = tiny_model("llama", VOCAB, seed=2)
    kw, mask, pos = batch_inputs(model, [[5, 6, 7, 8], [5, 6, 9]], 0, "cpu")
    assert kw["past_key_values"].get_seq_length() == 2  # [5, 6]; each prompt keeps at least one token
    assert kw["input_ids"].tolist() == [[7, 8], [0, 9]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 1]] and pos.tolist() == [[2, 3], [2, 2]]
    kw, _, _ = batch_inputs(model, [[5, 6, 7]], 0, "cpu")  # one prompt: nothing to share
    assert "past_key_values" not in kw
