"""Kendall's τ as Dai et al.'s code computes it (mode "scores"), against a line-by-line port of that code; the
earlier iclft computation (mode "probs"); and ties between repeated tokens surviving the pre-RoPE query capture.

The port mirrors microsoft/LMOps, understand_icl (quoted line numbers are of that folder):
  struprompting/criterions/fs_eval.py   l. 130-144 (what is recorded of the ICL pass)
  struprompting/criterions/fs_ft.py     l. 96-100  (what is recorded of the FT pass)
  fairseq/fairseq/modules/multihead_attention.py l. 314-333, 450-452 (q is recorded after `q *= self.scaling`;
                                        the recorded map is bmm(q, kᵀ), before mask and softmax)
  icl_ft/compute_training_example_attn.py l. 74-158, 197-211 (slicing, softmax, Kendall)
It runs in float64 on the recorded (float32) tensors; their records were in the model's dtype, which only moves
the rounding.
"""

import numpy as np
import pytest
import scipy.stats
import torch

from iclft.capture.attention import attention_scaling, query_source, record_attention
from iclft.capture.core import capture
from iclft.metrics.dual import (
    KENDALL_MODES,
    ft_demo_side,
    ft_kv_scores,
    icl_demo_attention,
    icl_demo_side,
    kendall,
    kendall_sides,
    official_softmax,
    tau_b,
)
from iclft.models.families import _LLAMA_LIKE, Family, blocks_of, family_for
from iclft.models.toy import tiny_model
from iclft.tuning.ft_kv import FtKvSession

VOCAB = 40
BOS, EOS = 2, 3
ROPE_KINDS = ["llama", "qwen2", "mistral", "gemma", "gemma2", "gpt_neox"]


# ------------------------------------------------------------------------ port of Dai et al.'s code
def port_process_attention_map_classification(attn_map, c_len):
    # struprompting/criterions/fs_eval.py l. 130-137
    attn_map = torch.stack(attn_map, dim=0)  # (n_layers, n_heads, len, len)
    record_attn_map = attn_map[:, :, -1, c_len:]  # (n_layers, n_heads, query_len)
    record_attn_map_ctx = attn_map[:, :, -1, :c_len]  # (n_layers, n_heads, context_len)
    record_attn_map_ctx = record_attn_map_ctx.sum(dim=-2)  # (n_layers, context_len)
    return record_attn_map, record_attn_map_ctx


def port_process_attention_q_classification(attn_q):
    # struprompting/criterions/fs_ft.py l. 96-100 (= fs_eval.py l. 140-144)
    attn_q = torch.stack(attn_q, dim=0)  # (n_layers, n_token, bzs (1), q_hidden_dim)
    record_attn_q = attn_q[:, :, -1, :]  # (n_layers, n_token, q_hidden_dim)
    return record_attn_q


def port_slice_icl_attn_map(icl_attn_map_ctx, ft_attn_q):
    # icl_ft/compute_training_example_attn.py l. 74-95 (the global ft_attn_q is an argument here)
    n_example = len(ft_attn_q)
    example_len = []
    for i in range(n_example):
        example_len.append(len(ft_attn_q[i][0]) - 1)

    slice_idx = []
    cur_pos = 1
    for i in range(n_example):
        new_range = list(range(cur_pos, cur_pos + example_len[i]))
        slice_idx.extend(new_range)
        cur_pos += example_len[i] + 1

    icl_attn_map_ctx = icl_attn_map_ctx[:, :, slice_idx]
    return icl_attn_map_ctx


def port_compact_ft_attn_q(ft_attn_q):
    # l. 105-118
    n_examples = len(ft_attn_q)
    n_layers = len(ft_attn_q[0])
    compacted_ft_attn_q = []
    for i in range(n_layers):
        layer_ft_attn_q = []
        for j in range(n_examples):
            cur_len = len(ft_attn_q[j][i])
            for k in range(1, cur_len):
                q_vector = ft_attn_q[j][i][k]
                layer_ft_attn_q.append(q_vector)
        compacted_ft_attn_q.append(layer_ft_attn_q)
    return compacted_ft_attn_q


def port_np_softmax(x, axis=-1):
    # l. 142-145
    x -= np.max(x, axis=axis, keepdims=True)
    x = np.exp(x) / np.sum(np.exp(x), axis=axis, keepdims=True)
    return x


def port_token_level(ft_attn_q, ftzs_attn_q, icl_attn_map_ctx):
    """l. 98-99, 121-122, 148-158 and 197-211 with level='token': returns (kendall per layer, icl map, ft map)."""
    icl_attn_map_ctx = np.array(icl_attn_map_ctx)  # (n_example, n_layers, tot_len)
    icl_attn_map_ctx = port_slice_icl_attn_map(icl_attn_map_ctx, ft_attn_q)
    ft_attn_q = port_compact_ft_attn_q(ft_attn_q)
    ft_attn_q = np.array(ft_attn_q)  # (n_layers, tot_len, q_hidden_dim)

    expand_ftzs_attn_q = np.array(ftzs_attn_q)[:, :, np.newaxis, :]  # (n_example, n_layers, 1, q_hidden_dim)
    expand_ft_attn_q = ft_attn_q[np.newaxis, :, :, :]  # (1, n_layers, tot_len, q_hidden_dim)
    ftzs_attn_map = (expand_ft_attn_q * expand_ftzs_attn_q).sum(axis=-1)  # (n_example, n_layers, tot_len)
    icl_attn_map = icl_attn_map_ctx  # (n_example, n_layers, tot_len)
    icl_attn_map = port_np_softmax(icl_attn_map, axis=-1)
    ftzs_attn_map = port_np_softmax(ftzs_attn_map, axis=-1)

    kendall = [0 for i in range(len(icl_attn_map[0]))]
    for i in range(icl_attn_map.shape[0]):
        for j in range(icl_attn_map.shape[1]):
            cur_icl_map = np.array(icl_attn_map[i][j])
            cur_ftzs_map = np.array(ftzs_attn_map[i][j])
            kendall[j] += scipy.stats.kendalltau(cur_icl_map, cur_ftzs_map)[0]
    kendall = [kendall[i] / icl_attn_map.shape[0] for i in range(icl_attn_map.shape[1])]
    return np.array(kendall), icl_attn_map, ftzs_attn_map


def fairseq_q(q_heads: torch.Tensor, scaling: float) -> torch.Tensor:
    """A recorded query (heads, len, d_head) as fairseq's attention keeps it: (len, bsz = 1, heads·d_head) after
    `q *= self.scaling` (multihead_attention.py l. 314, 331, 333), in float64."""
    h, n, d = q_heads.shape
    return (q_heads.double().permute(1, 0, 2).reshape(n, 1, h * d)) * scaling


# --------------------------------------------------------------------------- recorded tiny-model runs
# Demonstrations (input + label) that share tokens (4, 12, 20, 21), so the FT side has exact ties at layer 0.
DEMOS = [[4, 12, 13, 20], [4, 14, 12, 15, 21], [16, 4, 17, 20], [18, 12, 19, 4, 21]]
TESTS = [[22, 23, 4, 24], [25, 12, 26], [27, 28, 29, 30, 31]]


def _recorded(kind: str, seed: int = 4, lr: float = 0.5):
    """What both computations read, recorded from a tiny model in Dai et al.'s layout: context = BOS + Σ (demo +
    EOS), ICL prompt = context + test input, FT examples = BOS + demo (the EOS dropped, fewshot_task.py l. 59-63,
    93-95), FT-KV with lr, then the FT-KV model's query at the last token of BOS + test input."""
    model = tiny_model(kind, VOCAB, seed=seed)
    fam = family_for(model.config)
    n_layers = len(blocks_of(model, fam))
    context = [BOS] + [t for d in DEMOS for t in d + [EOS]]
    icl = [context + t for t in TESTS]
    train = [[BOS] + d for d in DEMOS]
    demo_positions, pos = [], 1
    for d in DEMOS:
        demo_positions += list(range(pos, pos + len(d)))
        pos += len(d) + 1
    # full pre-softmax maps of the ICL prompts (fairseq records bmm(q, kᵀ) for every query position)
    cap = capture(model, fam, icl, [f"blocks.{layer}.attn.scores" for layer in range(n_layers)], pad_id=0,
                  last=False)
    maps = [[cap.acts[f"blocks.{layer}.attn.scores"][i].permute(1, 0, 2) for layer in range(n_layers)]
            for i in range(len(icl))]  # per prompt, per layer (heads, len, len)
    with FtKvSession(model, fam) as session:
        ft = session.train(train, lr, record_from=0, pre_rope=True)  # every token (the port skips BOS itself)
        q_sites = [f"blocks.{layer}.attn.q_pre" for layer in range(n_layers)]
        test_q = capture(model, fam, [[BOS] + t for t in TESTS], q_sites, pad_id=0)
    test_q = torch.stack([test_q.acts[s] for s in q_sites], dim=1)  # (n_tests, layers, heads, d)
    demo_q = torch.stack([ft.demo_queries[layer] for layer in range(n_layers)])  # (layers, heads, all tokens, d)
    return dict(model=model, fam=fam, n_layers=n_layers, maps=maps, demo_q=demo_q, test_q=test_q, train=train,
                demo_positions=demo_positions, context_len=len(context), scaling=attention_scaling(model, fam))


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def rec(request):
    return _recorded(request.param)


def _per_example(demo_q: torch.Tensor, train) -> list[torch.Tensor]:
    out, start = [], 0
    for ids in train:
        out.append(demo_q[:, :, start:start + len(ids)])
        start += len(ids)
    assert start == demo_q.shape[2]
    return out


def _port(rec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The port on the records, laid out as Dai et al.'s records are."""
    L, scal = rec["n_layers"], rec["scaling"]
    icl_attn_map_ctx = []
    for per_layer in rec["maps"]:
        _, ctx = port_process_attention_map_classification([m.double() for m in per_layer], rec["context_len"])
        icl_attn_map_ctx.append(ctx.tolist())
    ft_attn_q = []
    for ex in _per_example(rec["demo_q"], rec["train"]):  # (layers, heads, len, d)
        attn_q = [fairseq_q(ex[layer], scal[layer]) for layer in range(L)]
        ft_attn_q.append(port_process_attention_q_classification(attn_q).tolist())
    ftzs_attn_q = []  # (n_example, n_layers, q_hidden_dim): the test token's query (the last position)
    for q in rec["test_q"]:  # (layers, heads, d)
        attn_q = [fairseq_q(q[layer][:, None], scal[layer]) for layer in range(L)]
        ftzs_attn_q.append(port_process_attention_q_classification(attn_q)[:, -1].tolist())
    return port_token_level(ft_attn_q, ftzs_attn_q, icl_attn_map_ctx)


def _iclft(rec, mode: str):
    """iclft's computation, fed as the dual study feeds it: last-token scores over all keys (layers, heads, keys),
    the demonstration positions, the demonstration queries without each example's BOS, the test query."""
    demo_q = torch.cat([ex[:, :, 1:] for ex in _per_example(rec["demo_q"], rec["train"])], dim=2)
    sides = [kendall_sides(torch.stack([m[:, -1] for m in maps]), rec["demo_positions"], demo_q, q, mode=mode,
                           scaling=rec["scaling"]) for maps, q in zip(rec["maps"], rec["test_q"], strict=True)]
    icl, ft = np.stack([s[0] for s in sides]), np.stack([s[1] for s in sides])
    return kendall(icl, ft), icl, ft


# ------------------------------------------------------------------------------------------------ tests
def test_official_mode_equals_port_on_recorded_scores(rec):
    want, want_icl, want_ft = _port(rec)
    got, got_icl, got_ft = _iclft(rec, "scores")
    np.testing.assert_allclose(got_icl, want_icl, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got_ft, want_ft, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isfinite(got).all()
    # the default mode is Dai et al.'s
    np.testing.assert_array_equal(kendall(*kendall_sides(
        torch.stack([m[:, -1] for m in rec["maps"][0]]), rec["demo_positions"],
        torch.cat([ex[:, :, 1:] for ex in _per_example(rec["demo_q"], rec["train"])], dim=2), rec["test_q"][0],
        scaling=rec["scaling"])), kendall(got_icl[0], got_ft[0]))


def test_layer0_ft_side_has_exact_ties_and_tau_b_handles_them(rec):
    """Tokens repeated across demonstrations have bitwise-equal layer-0 pre-RoPE queries (read at q_proj), so the
    FT side ties exactly there; τ then equals scipy's τ-b, which the port uses."""
    _, icl, ft = _iclft(rec, "scores")
    demo_tokens = [t for d in DEMOS for t in d]
    tied = [(a, b) for a in range(len(demo_tokens)) for b in range(a + 1, len(demo_tokens))
            if demo_tokens[a] == demo_tokens[b]]
    assert len(tied) >= 5
    for i in range(len(TESTS)):
        for a, b in tied:
            assert ft[i, 0, a] == ft[i, 0, b]
        assert len(np.unique(ft[i, 0])) == len(set(demo_tokens))
        for layer in range(rec["n_layers"]):
            want = scipy.stats.kendalltau(icl[i, layer], ft[i, layer])[0]
            assert tau_b(icl[i, layer], ft[i, layer]) == pytest.approx(want, abs=1e-12)


def test_probs_mode_is_the_earlier_computation(rec):
    """mode "probs": softmax of each head's scores over all keys, Σ_heads at the demonstration tokens; FT side
    softmax over demonstration tokens of Σ_heads q_demo · q_test (no scale) -- bit for bit what iclft computed."""
    _, icl, ft = _iclft(rec, "probs")
    demo_q = torch.cat([ex[:, :, 1:] for ex in _per_example(rec["demo_q"], rec["train"])], dim=2).double().numpy()
    for i, (maps, q) in enumerate(zip(rec["maps"], rec["test_q"], strict=True)):
        old_icl = np.stack([icl_demo_attention(torch.softmax(m[:, -1].double(), dim=-1).numpy(),
                                               rec["demo_positions"]) for m in maps])
        np.testing.assert_array_equal(icl[i], old_icl)
        np.testing.assert_array_equal(ft[i], ft_kv_scores(demo_q, q))
    assert KENDALL_MODES == ("scores", "probs")


def test_the_two_modes_rank_differently_on_the_icl_side(rec):
    _, icl_s, _ = _iclft(rec, "scores")
    _, icl_p, _ = _iclft(rec, "probs")
    assert not np.allclose(kendall(icl_s, icl_p), 1.0)  # not the same ranking: the choice matters


def test_official_mode_equals_port_where_softmax_underflows():
    """Scores spread over thousands: float64 exp underflows to 0, making ties that the official numbers have; the
    official mode keeps its softmax so that it has them too."""
    rng = np.random.default_rng(0)
    L, H, d = 3, 4, 8
    lens = [5, 7, 4]
    context_len = 1 + sum(n + 1 for n in lens)
    scores = rng.normal(0, 400, (2, L, H, context_len + 3))
    demo_q = [rng.normal(0, 30, (L, H, n + 1, d)) for n in lens]  # with each example's BOS
    test_q = rng.normal(0, 30, (2, L, H, d))
    scal = [d ** -0.5] * L
    ft_attn_q = [port_process_attention_q_classification([fairseq_q(torch.from_numpy(ex[layer]), scal[layer])
                                                          for layer in range(L)]).tolist() for ex in demo_q]
    ftzs = [port_process_attention_q_classification([fairseq_q(torch.from_numpy(q[layer][:, None]), scal[layer])
                                                     for layer in range(L)])[:, -1].tolist() for q in test_q]
    icl_ctx = [port_process_attention_map_classification(
        [torch.from_numpy(s[layer])[:, None, :].expand(H, context_len + 3, -1) for layer in range(L)],
        context_len)[1].tolist() for s in scores]
    want, want_icl, want_ft = port_token_level(ft_attn_q, ftzs, icl_ctx)
    assert (want_icl == 0).sum() > 10 and (want_ft == 0).sum() > 10  # underflow ties exist
    positions, pos = [], 1
    for n in lens:
        positions += list(range(pos, pos + n))
        pos += n + 1
    dq = np.concatenate([ex[:, :, 1:] for ex in demo_q], axis=2)
    sides = [kendall_sides(s, positions, dq, q, scaling=scal) for s, q in zip(scores, test_q, strict=True)]
    icl, ft = np.stack([s[0] for s in sides]), np.stack([s[1] for s in sides])
    np.testing.assert_array_equal(icl == 0, want_icl == 0)
    np.testing.assert_array_equal(ft == 0, want_ft == 0)
    np.testing.assert_allclose(icl, want_icl, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ft, want_ft, rtol=1e-12, atol=0)
    np.testing.assert_allclose(kendall(icl, ft), want, rtol=0, atol=1e-12)


def test_tau_b_equals_scipy_with_ties():
    rng = np.random.default_rng(3)
    for n in (2, 5, 17, 60):
        x = rng.integers(0, 4, (6, n)).astype(float)
        y = rng.integers(0, 3, (6, n)).astype(float)
        for row in range(6):
            want = scipy.stats.kendalltau(x[row], y[row])[0]
            got = tau_b(x[row][None], y[row][None])[0]
            if np.isnan(want):
                assert np.isnan(got)
            else:
                assert got == pytest.approx(want, abs=1e-12)


def _projection_output(model, module, ids):
    got = {}
    h = module.register_forward_hook(lambda m, i, o: got.__setitem__("q", o.detach()))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        h.remove()
    return got["q"]


@pytest.mark.parametrize("kind", ROPE_KINDS)
def test_pre_rope_queries_of_repeated_tokens_stay_bitwise_tied(kind):
    """At layer 0 a token's pre-RoPE query depends on the token alone: equal tokens at different positions of one
    sequence, across sequences of other lengths, and batched with left padding give bitwise-equal queries, within
    rounding of the model's own query projection output."""
    model = tiny_model(kind, VOCAB, seed=5)
    fam = family_for(model.config)
    a, b = [5, 9, 5, 11, 9, 5, 30, 9, 12, 5, 9], [9, 7, 5]
    with record_attention(model, fam, [0], pre_rope=True) as r, torch.no_grad():
        model(input_ids=torch.tensor([a]))
    q = r.queries_pre[0][0]  # (heads, len, d)
    for x, y in [(0, 2), (0, 5), (0, 9), (1, 4), (1, 7), (1, 10)]:
        assert torch.equal(q[:, x], q[:, y])
        assert not torch.equal(r.queries[0][0][:, x], r.queries[0][0][:, y])  # RoPE does separate them
    cap = capture(model, fam, [a, b, b[:2]], ["blocks.0.attn.q_pre"], pad_id=0)  # last tokens: 9, 5, 7
    assert torch.equal(cap.acts["blocks.0.attn.q_pre"][0], q[:, 1])
    assert torch.equal(cap.acts["blocks.0.attn.q_pre"][1], q[:, 0])
    with record_attention(model, fam, [0], pre_rope=True) as r2, torch.no_grad():
        model(input_ids=torch.tensor([b]))
    assert torch.equal(r2.queries_pre[0][0][:, 0], q[:, 1]) and torch.equal(r2.queries_pre[0][0][:, 2], q[:, 0])
    # the model's own projection output, split into heads by the model's layout, up to its rounding
    proj, norm, layout = query_source(blocks_of(model, fam)[0], fam)
    assert norm is None
    out = _projection_output(model, proj, a)
    heads, n, d = q.shape
    want = out.view(1, n, heads, -1)[..., :d] if layout == "per_head" else out.view(1, n, heads, d)
    torch.testing.assert_close(q, want[0].transpose(0, 1), rtol=1e-6, atol=1e-7)


def test_pre_rope_queries_after_a_query_norm():
    """A family whose attention normalises the query after the projection (Qwen3's per-head q_norm): the pre-RoPE
    query is the norm's output, ties included."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    fam = Family(name="qwen3", model_types=("qwen3",), **_LLAMA_LIKE)
    block = blocks_of(model, fam)[1]
    assert query_source(block, fam) == (block.self_attn.q_proj, block.self_attn.q_norm, "separate")
    ids = [5, 9, 5, 11, 9, 5, 30]
    with record_attention(model, fam, [0, 1], pre_rope=True) as r, torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    out = _projection_output(model, block.self_attn.q_norm, ids)  # (1, len, heads, d)
    torch.testing.assert_close(r.queries_pre[1][0], out[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    assert torch.equal(r.queries_pre[0][0][:, 0], r.queries_pre[0][0][:, 2])
    assert torch.equal(r.queries_pre[0][0][:, 0], r.queries_pre[0][0][:, 5])


def test_mode_and_shape_errors():
    s = np.zeros((2, 3, 6))
    with pytest.raises(ValueError, match="unknown Kendall mode"):
        icl_demo_side(s, [1, 2], mode="logits")
    with pytest.raises(ValueError, match="unknown Kendall mode"):
        ft_demo_side(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 5)), mode="x")
    with pytest.raises(ValueError, match="scaling"):
        ft_demo_side(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 5)), scaling=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="expected demo queries"):
        ft_demo_side(np.zeros((2, 3, 4, 5)), np.zeros((2, 5)))
    # one layer, and a per-layer scale that equals a scalar one
    one = ft_demo_side(np.ones((3, 4, 5)), np.ones((3, 5)))
    np.testing.assert_allclose(one, np.full(4, 0.25))
    qd, qt = np.random.default_rng(1).normal(size=(2, 3, 4, 5)), np.random.default_rng(2).normal(size=(2, 3, 5))
    np.testing.assert_array_equal(ft_demo_side(qd, qt, scaling=[0.5, 0.5]), ft_demo_side(qd, qt, scaling=0.5))
    np.testing.assert_allclose(official_softmax(np.array([[1.0, 1.0, 1.0]])), np.full((1, 3), 1 / 3))
