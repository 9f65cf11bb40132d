"""Dual view (issue 13): Kendall's query handling before / after RoPE against hand computation, the FT-KV update
size, and a default learning-rate grid that moves the built-in model's predictions."""

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from iclft.capture.attention import record_attention
from iclft.capture.core import capture
from iclft.metrics.dual import ft_kv_scores
from iclft.models.families import family_for
from iclft.models.toy import tiny_model
from iclft.tuning.ft_kv import FtKvSession

VOCAB = 40


def _q_by_hand(model, ids):
    """Pre-RoPE queries from q_proj, and post-RoPE ones by HF's own rotary function: (layers, heads, len, d)."""
    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    got = {}
    hooks = [layer.self_attn.q_proj.register_forward_hook(
        lambda m, i, o, n=n: got.__setitem__(n, o.detach())) for n, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            x = torch.tensor([ids])
            model(input_ids=x)
    finally:
        for h in hooks:
            h.remove()
    pos = torch.arange(len(ids))[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, len(ids), cfg.hidden_size), pos)
    pre = torch.stack([got[n].view(1, len(ids), heads, d).transpose(1, 2)[0] for n in range(len(got))])
    post = torch.stack([apply_rotary_pos_emb(p[None], p[None], cos, sin)[0][0] for p in pre])
    return pre, post


def test_recorder_pre_rope_queries_equal_q_proj_and_post_equal_hf_rotary():
    model = tiny_model("llama", VOCAB, seed=2)
    fam = family_for(model.config)
    ids = [5, 9, 11, 7, 30, 21, 8]
    pre, post = _q_by_hand(model, ids)
    assert not torch.allclose(pre, post, atol=1e-3)  # RoPE really rotates
    with record_attention(model, fam, range(3), pre_rope=True) as rec, torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for layer in range(3):
        torch.testing.assert_close(rec.queries_pre[layer][0], pre[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rec.queries[layer][0], post[layer], atol=1e-5, rtol=1e-5)
    # the capture site, at the last token, batched with left padding
    cap = capture(model, fam, [ids, ids[:4]], ["blocks.1.attn.q_pre", "blocks.1.attn.q"], pad_id=0)
    torch.testing.assert_close(cap.acts["blocks.1.attn.q_pre"][0], pre[1][:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap.acts["blocks.1.attn.q"][0], post[1][:, -1], atol=1e-5, rtol=1e-5)


def test_without_rope_pre_equals_post():
    model = tiny_model("gpt2", VOCAB, seed=2)
    cap = capture(model, family_for(model.config), [[5, 9, 11, 7]], ["blocks.0.attn.q_pre", "blocks.0.attn.q"],
                  pad_id=0)
    torch.testing.assert_close(cap.acts["blocks.0.attn.q_pre"], cap.acts["blocks.0.attn.q"])


@pytest.mark.parametrize("rope", ["pre", "post"])
def test_ft_kv_recorded_demo_queries_and_kendall_ft_side_by_hand(rope):
    model = tiny_model("llama", VOCAB, seed=2)
    fam = family_for(model.config)
    demo, test = [4, 12, 13, 14, 15], [4, 20, 21, 22, 23, 24, 25, 26]
    pre_d, post_d = _q_by_hand(model, demo)  # the first FT step sees the original weights
    pre_t, post_t = _q_by_hand(model, test)
    with FtKvSession(model, fam) as session:
        ft = session.train([demo], lr=0.0, record_from=1, pre_rope=rope == "pre")  # lr 0: weights unchanged
    want_d = (pre_d if rope == "pre" else post_d)[:, :, 1:]
    got_d = torch.stack([ft.demo_queries[layer] for layer in range(3)])
    torch.testing.assert_close(got_d, want_d, atol=1e-5, rtol=1e-5)
    q_t = (pre_t if rope == "pre" else post_t)[:, :, -1]  # (layers, heads, d)
    # Kendall's FT side: softmax over demonstration tokens of Σ_heads q_demo · q_test, by hand
    s = np.einsum("lhtd,lhd->lt", want_d.double().numpy(), q_t.double().numpy())
    e = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(ft_kv_scores(got_d, q_t), e / e.sum(-1, keepdims=True), atol=1e-9)


def test_default_lr_grid_moves_the_builtin_model_and_reports_update_size():
    from iclft.studies.dual_view import STUDY, DualSpec, too_few

    spec = DualSpec(seeds=1, queries=60, val_size=40)  # the default grid, k and RoPE handling
    assert max(spec.lr_grid) >= 1.0 and spec.kendall_rope == "pre"
    ctx = STUDY.setup(spec)
    rec = STUDY.run_unit(spec, ctx, STUDY.units(spec, ctx)[0])
    first = rec[rec["layer"] == 0]
    assert (first["pred_ft"] != first["pred_zsl"]).any()  # FT-KV changes predictions at the chosen lr
    assert first["lr"].iloc[0] >= 0.1
    ratio = rec.groupby("layer")["update_ratio"].mean()
    assert len(ratio) == ctx.loaded.info["n_layers"] and (ratio > 0.05).all()  # measurable next to ICL's update
    summary = STUDY.summarise(rec, spec, ctx.loaded.info)
    assert summary["update_ratio"]["mean"] > 0.05 and summary["kendall_rope"] == "pre"
    assert summary["f_to_t_total"] == int((first["correct_ft"] & ~first["correct_zsl"]).sum())
    verdict = summary["headlines"][0]["verdict"]
    assert verdict.startswith("not testable: too few F→T") == too_few(summary)
