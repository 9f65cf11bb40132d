import math

import pytest
import torch

from iclft.capture import capture, site_names
from iclft.models.families import family_for, get_module
from iclft.models.toy import TINY_CONFIGS
from tests.conftest import random_prompts

KINDS = list(TINY_CONFIGS)
ALL_SITES = ("resid_post", "attn.out", "attn.scores", "mlp.out")


def n_layers(model, fam):
    return len(get_module(model, fam.blocks))


@pytest.mark.parametrize("kind", KINDS)
def test_resid_post_equals_hf_hidden_states(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    L = n_layers(model, fam)
    prompts = random_prompts(5, len(tok), seed=3)
    cap = capture(model, fam, prompts, site_names(L), pad_id=tok.pad_token_id, batch_size=2)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            hs = model(torch.tensor([p]), output_hidden_states=True).hidden_states
        assert len(hs) == L + 1
        for layer in range(L):
            torch.testing.assert_close(cap.acts[f"blocks.{layer}.resid_post"][i], hs[layer + 1][0, -1],
                                       atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_one_at_a_time(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    L = n_layers(model, fam)
    prompts = random_prompts(7, len(tok), seed=5, lo=2, hi=25)
    sites = site_names(L, ALL_SITES)
    batched = capture(model, fam, prompts, sites, pad_id=tok.pad_token_id, batch_size=4, logits=True)
    for i, p in enumerate(prompts):
        single = capture(model, fam, [p], sites, pad_id=tok.pad_token_id, batch_size=1, logits=True)
        torch.testing.assert_close(batched.logits[i], single.logits[0], atol=1e-4, rtol=1e-4)
        for s in sites:
            b, o = batched.acts[s][i], single.acts[s][0]
            if s.endswith("attn.scores"):
                assert b.shape == (model.config.num_attention_heads, len(p))
            torch.testing.assert_close(b, o, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_all_positions_match_last(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    prompts = random_prompts(3, len(tok), seed=9)
    sites = ["blocks.0.resid_post", "blocks.1.attn.scores"]
    last = capture(model, fam, prompts, sites, pad_id=tok.pad_token_id, batch_size=3)
    full = capture(model, fam, prompts, sites, pad_id=tok.pad_token_id, batch_size=3, last=False)
    for i, p in enumerate(prompts):
        assert full.acts["blocks.0.resid_post"][i].shape[0] == len(p)
        torch.testing.assert_close(full.acts["blocks.0.resid_post"][i][-1], last.acts["blocks.0.resid_post"][i])
        torch.testing.assert_close(full.acts["blocks.1.attn.scores"][i][-1], last.acts["blocks.1.attn.scores"][i])


def _attn_input(model, fam, layer, prompt):
    """Hidden states and kwargs entering the attention module of `layer` (pre-hook)."""
    got = {}
    attn = get_module(get_module(model, fam.blocks)[layer], fam.attn)

    def pre(_m, args, kwargs):
        got["x"] = kwargs.get("hidden_states", args[0] if args else None)
        got["kw"] = kwargs

    h = attn.register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        model(torch.tensor([prompt]))
    h.remove()
    return attn, got["x"][0], got["kw"]


def test_scores_by_hand_gpt2(tiny_models, tok):
    model = tiny_models["gpt2"]
    fam = family_for(model.config)
    prompt = random_prompts(1, len(tok), seed=11, lo=9, hi=9)[0]
    cap = capture(model, fam, [prompt], ["blocks.1.attn.scores"], pad_id=tok.pad_token_id)
    attn, x, _ = _attn_input(model, fam, 1, prompt)
    H, D = model.config.n_head, model.config.n_embd // model.config.n_head
    q, k, _ = attn.c_attn(x).split(model.config.n_embd, dim=-1)
    q, k = q.view(-1, H, D), k.view(-1, H, D)
    want = torch.einsum("hd,khd->hk", q[-1], k) / math.sqrt(D)
    torch.testing.assert_close(cap.acts["blocks.1.attn.scores"][0], want, atol=1e-5, rtol=1e-5)


def test_scores_by_hand_llama_gqa_rope(tiny_models, tok):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = tiny_models["llama"]
    fam = family_for(model.config)
    prompt = random_prompts(1, len(tok), seed=12, lo=10, hi=10)[0]
    cap = capture(model, fam, [prompt], ["blocks.2.attn.scores"], pad_id=tok.pad_token_id)
    attn, x, kw = _attn_input(model, fam, 2, prompt)
    c = model.config
    H, KV, D = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    q = attn.q_proj(x).view(-1, H, D).transpose(0, 1)[None]
    k = attn.k_proj(x).view(-1, KV, D).transpose(0, 1)[None]
    cos, sin = kw["position_embeddings"]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    group = H // KV
    want = torch.stack([q[0, h, -1] @ k[0, h // group].T for h in range(H)]) / math.sqrt(D)
    torch.testing.assert_close(cap.acts["blocks.2.attn.scores"][0], want, atol=1e-5, rtol=1e-5)


def test_scores_by_hand_opt_prescaled_query(tiny_models, tok):
    model = tiny_models["opt"]
    fam = family_for(model.config)
    prompt = random_prompts(1, len(tok), seed=13, lo=8, hi=8)[0]
    cap = capture(model, fam, [prompt], ["blocks.0.attn.scores"], pad_id=tok.pad_token_id)
    attn, x, _ = _attn_input(model, fam, 0, prompt)
    H = model.config.num_attention_heads
    D = model.config.hidden_size // H
    q = attn.q_proj(x).view(-1, H, D)
    k = attn.k_proj(x).view(-1, H, D)
    want = torch.einsum("hd,khd->hk", q[-1], k) / math.sqrt(D)
    torch.testing.assert_close(cap.acts["blocks.0.attn.scores"][0], want, atol=1e-5, rtol=1e-5)


def test_capture_restores_attention_implementation(tiny_models, tok):
    model = tiny_models["llama"]
    before = model.config._attn_implementation
    capture(model, family_for(model.config), [[5, 6, 7]], ["blocks.0.attn.scores"], pad_id=tok.pad_token_id)
    assert model.config._attn_implementation == before


def test_bad_site_is_rejected(tiny_models, tok):
    model = tiny_models["gpt2"]
    with pytest.raises(ValueError, match="unknown hook site"):
        capture(model, family_for(model.config), [[5, 6]], ["blocks.0.resid"], pad_id=0)
    with pytest.raises(ValueError, match="blocks"):
        capture(model, family_for(model.config), [[5, 6]], ["blocks.99.resid_post"], pad_id=0)
