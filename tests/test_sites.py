import numpy as np
import pytest
import torch

from iclft.capture import capture, site_names
from iclft.capture import sites as S
from iclft.circuits.patching import Component, make_pairs, patch_together
from iclft.models.families import blocks_of, family_for, get_module, n_heads
from iclft.models.toy import TINY_CONFIGS
from iclft.prompts.batching import length_batches, pad_after_prefix, pad_left
from tests.conftest import random_prompts

KINDS = list(TINY_CONFIGS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_site_resolves_and_captures(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    blocks = blocks_of(model, fam)
    L, H, d = len(blocks), n_heads(model.config), model.config.hidden_size
    for layer in range(L):
        for site in S.SITES.values():
            assert isinstance(S.module(model, fam, layer, site), torch.nn.Module)
    assert S.module(model, fam, L - 1, S.SITES["resid_post"]) is get_module(model, fam.final_norm)
    assert S.module(model, fam, 0, S.SITES["resid_post"]) is blocks[0]
    prompts = random_prompts(4, len(tok), seed=2)
    cap = capture(model, fam, prompts, site_names(L, tuple(S.SITES)), pad_id=tok.pad_token_id, batch_size=3)
    for layer in range(L):
        a = {k: cap.acts[f"blocks.{layer}.{k}"] for k in S.SITES}
        assert a["resid_post"].shape == a["attn.out"].shape == a["mlp.out"].shape == (4, d)
        assert a["attn.z"].shape == a["attn.q"].shape == (4, H, d // H)
        assert [s.shape for s in a["attn.scores"]] == [(H, len(p)) for p in prompts]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("last", [True, False])
def test_attn_z_through_o_proj_equals_attn_out(kind, last, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    blocks = blocks_of(model, fam)
    prompts = random_prompts(5, len(tok), seed=4)
    sites = site_names(len(blocks), ("attn.z", "attn.out"))
    cap = capture(model, fam, prompts, sites, pad_id=tok.pad_token_id, batch_size=2, last=last)
    for layer, block in enumerate(blocks):
        o_proj = get_module(block, fam.o_proj)
        zs, outs = cap.acts[f"blocks.{layer}.attn.z"], cap.acts[f"blocks.{layer}.attn.out"]
        for z, out in zip(zs, outs, strict=True):
            with torch.no_grad():
                again = o_proj(z.flatten(-2))  # (.., heads, d_head) -> (.., heads * d_head)
                if fam.attn_resid:  # Gemma2: the post-attention norm sits between o_proj and the residual
                    again = get_module(block, fam.attn_resid)(again)
            torch.testing.assert_close(again, out, atol=1e-5, rtol=0)


def test_new_site_is_one_row(tiny_models, tok, monkeypatch):
    # the input of the MLP's module (OPT: of fc2, the MLP's last Linear): that module maps it to mlp.out
    monkeypatch.setitem(S.SITES, "mlp.in", S.Site("mlp.in", "mlp", "input"))
    for kind in KINDS:
        model = tiny_models[kind]
        fam = family_for(model.config)
        blocks = blocks_of(model, fam)
        cap = capture(model, fam, random_prompts(3, len(tok), seed=1), site_names(len(blocks), ("mlp.in", "mlp.out")),
                      pad_id=tok.pad_token_id)
        for layer, block in enumerate(blocks):
            with torch.no_grad():
                again = get_module(block, fam.mlp)(cap.acts[f"blocks.{layer}.mlp.in"])
            torch.testing.assert_close(again, cap.acts[f"blocks.{layer}.mlp.out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_new_attention_site_is_one_row(kind, tiny_models, tok, monkeypatch):
    # the key at each kept query position (after RoPE, per query head), read from the attention recorder: the
    # row says what the recorder must keep and how to read it; capture needs nothing else
    from iclft.capture.attention import record_attention

    row = S.Site("attn.k", "attn", "attention", heads=True, record=("keys",),
                 read=lambda rec, layer: rec.keys[layer].transpose(1, 2)[:, -rec.queries[layer].shape[2]:])
    monkeypatch.setitem(S.SITES, "attn.k", row)
    model = tiny_models[kind]
    fam = family_for(model.config)
    prompts = random_prompts(4, len(tok), seed=6)
    last = capture(model, fam, prompts, ["blocks.1.attn.k"], pad_id=tok.pad_token_id, batch_size=3)
    every = capture(model, fam, prompts, ["blocks.1.attn.k"], pad_id=tok.pad_token_id, batch_size=3, last=False)
    for i, p in enumerate(prompts):
        with torch.no_grad(), record_attention(model, fam, [1], keys=True) as rec:
            model(torch.tensor([p]))
        want = rec.keys[1][0].transpose(0, 1)  # (len, heads, d_head)
        torch.testing.assert_close(every.acts["blocks.1.attn.k"][i], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(last.acts["blocks.1.attn.k"][i], want[-1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs `read`"):
        S.Site("attn.v", "attn", "attention")


def test_bad_sites_are_rejected():
    with pytest.raises(ValueError, match="unknown hook site"):
        S.parse(["blocks.0.attn.nope"], 2)
    with pytest.raises(ValueError, match="unknown hook site"):
        S.parse(["resid_post"], 2)
    with pytest.raises(ValueError, match="has 2 blocks"):
        S.parse(["blocks.2.resid_post"], 2)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt"])
def test_patching_any_site(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    L, H = len(blocks_of(model, fam)), n_heads(model.config)
    clean = random_prompts(3, len(tok), seed=7, lo=8, hi=8)
    corrupt = random_prompts(3, len(tok), seed=8, lo=8, hi=8)
    pairs = [(c, c[:3] + x[3:], 5, 6) for c, x in zip(clean, corrupt, strict=True)]
    batch = make_pairs(pairs, tok.pad_token_id)
    # all heads of a layer patched together == its whole attention output patched
    heads = patch_together(model, fam, batch, [Component("head", 1, h) for h in range(H)])
    whole = patch_together(model, fam, batch, [Component("attn.out", 1)])
    np.testing.assert_allclose(whole, heads, atol=1e-5)
    assert Component("attn.out", 1).name == "L1.attn.out"
    np.testing.assert_array_equal(patch_together(model, fam, batch, [Component("mlp.out", 0)]),
                                  patch_together(model, fam, batch, [Component("mlp", 0)]))
    # the last resid_post (after the final norm) patched everywhere gives the clean run's LD
    ld_clean = patch_together(model, fam, make_pairs([(c, c, r, w) for c, _, r, w in pairs], tok.pad_token_id), [])
    np.testing.assert_allclose(patch_together(model, fam, batch, [Component("resid_post", L - 1)]), ld_clean,
                               atol=1e-5)


def test_padding_layouts():
    ids, mask, pos = pad_left([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, pos = pad_after_prefix([[5, 6], [8]], 3, pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 8]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]]
    assert pos.tolist() == [[3, 4], [3, 3]]
    assert length_batches([[1, 2], [1], [1, 2, 3], [4]], 2) == [[1, 3], [0, 2]]


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma2", "gpt2"])
def test_attn_scores_softmax_is_the_models_attention(kind, tok):
    """attn.scores is what attention softmaxes: HF's eager attention weights come back from it (Gemma2's logit
    soft-capping and query_pre_attn_scalar included)."""
    from iclft.models.toy import tiny_model

    model = tiny_model(kind, len(tok), seed=3, attn_implementation="eager")
    fam = family_for(model.config)
    L = len(blocks_of(model, fam))
    if kind == "gemma2":  # a cap that bites on random weights (the tiny config's 50 would not)
        for block in blocks_of(model, fam):
            get_module(block, fam.attn).attn_logit_softcapping = 0.05
    prompt = random_prompts(1, len(tok), seed=5, lo=12, hi=12)[0]
    cap = capture(model, fam, [prompt], site_names(L, ("attn.scores",)), pad_id=tok.pad_token_id, last=True)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([prompt]), output_attentions=True).attentions
    for layer in range(L):
        got = torch.softmax(cap.acts[f"blocks.{layer}.attn.scores"][0], dim=-1)
        torch.testing.assert_close(got, ref[layer][0, :, -1].float(), atol=1e-5, rtol=0)
