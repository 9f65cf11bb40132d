"""Dai et al. dual-view metrics: Rec2FTP, SimAOU, SimAM, Kendall (METRICS.md, "Dual view").

All functions take torch tensors or numpy arrays, compute in float64 and return numpy values.
Per-layer results are arrays of shape (n_layers,); averaging over layers is left to the caller so
that the per-layer curve is kept.

Kendall has two modes (`KENDALL_MODES`); "scores" is the computation of Dai et al.'s code (microsoft/LMOps,
understand_icl: struprompting/criterions/fs_eval.py, `process_attention_map_classification`, and
icl_ft/compute_training_example_attn.py, `compute_training_attn`), "probs" the earlier iclft one:
- ICL side. scores: the last token's raw pre-softmax scores q·k·scale, summed over heads, at the demonstration
  tokens, softmaxed over those tokens. probs: the last token's attention probabilities (softmax over all keys,
  per head), summed over heads, at the demonstration tokens.
- FT side. scores: the demonstration tokens' and the test token's queries, each multiplied by the attention
  scale (fairseq records q after `q *= self.scaling`), dotted over all heads' dimensions, softmaxed over the
  demonstration tokens. probs: the same without the scale (`ft_kv_scores`).
Each softmax is strictly increasing within its row, so it changes Kendall's τ only where float64 rounding or
underflow makes two values equal; it is kept to match the official numbers exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from iclft.metrics.similarity import cosine, l2_normalise, to_float64


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    # An all-NaN slice is a legitimate outcome (e.g. every query undefined at a layer): NaN, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def predict_labels(logits_at_last: Any, label_first_token_ids: Sequence[int]) -> np.ndarray:
    """Classification prediction by label scoring.

    `logits_at_last`: shape (n, V), the next-token logits at each prompt's last (non-padding) token
    (a single (V,) row is treated as n = 1). `label_first_token_ids`: length n_labels, the id of the
    first token of each label word, in label order. Returns int64 array (n,) of indices into the
    label list: argmax over the label words of their first-token logit (ties go to the earlier
    label). Raises ValueError if two label words share a first token, since the prediction would
    then be ambiguous.
    """
    ids = [int(i) for i in label_first_token_ids]
    if not ids:
        raise ValueError("need at least one label word")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"label words share first token id(s) {dup}; label scoring is ambiguous")
    if isinstance(logits_at_last, torch.Tensor):
        logits = logits_at_last.detach()
    else:
        logits = np.asarray(logits_at_last)
    if logits.ndim == 1:
        logits = logits[None]
    if logits.ndim != 2:
        raise ValueError(f"expected logits of shape (n, V), got {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    if min(ids) < 0 or max(ids) >= vocab:
        raise ValueError(f"label token ids {ids} out of range for vocabulary size {vocab}")
    # Select the few label columns before converting, so a (n, 150k) bf16 tensor is never copied.
    picked = to_float64(logits[:, ids])
    return np.argmax(picked, axis=-1).astype(np.int64)


def rec2ftp(correct_zsl: Any, correct_icl: Any, correct_ft: Any) -> float:
    """Recall to fine-tuning predictions: |(C_ICL ∩ C_FT) \\ C_ZSL| / |C_FT \\ C_ZSL|.

    Inputs: boolean arrays of shape (n_queries,), True where that setting got the query right (same
    query order in all three). Returns a float in [0, 1], or NaN with a `warnings.warn` when FT fixes
    no query that ZSL got wrong (denominator 0).
    """
    z, i, f = (np.asarray(to_float64(c), dtype=bool).ravel() for c in (correct_zsl, correct_icl, correct_ft))
    if not (z.shape == i.shape == f.shape):
        raise ValueError(f"correctness arrays differ in length: {z.size}, {i.size}, {f.size}")
    ft_new = f & ~z
    denom = int(ft_new.sum())
    if denom == 0:
        warnings.warn("rec2ftp undefined: FT gets no query right that ZSL gets wrong", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    return int((ft_new & i).sum()) / denom


def _check_attn(*arrays: np.ndarray) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"attn_out arrays must share one shape, got {sorted(shapes)}")
    if arrays[0].ndim != 3:
        raise ValueError(f"expected attn_out of shape (n_queries, n_layers, d), got {arrays[0].shape}")


def simaou(a_zsl: Any, a_icl: Any, a_ft: Any) -> np.ndarray:
    """Similarity of attention-output updates, per layer.

    Inputs: `attn_out` at the last token for each setting, shape (n_queries, n_layers, d), queries in
    the same order. Each vector is L2-normalised over d; then for every (query, layer)
    `cos(a_ICL − a_ZSL, a_FT − a_ZSL)`, averaged over queries (NaN-aware: a query whose update is
    exactly zero is skipped). Returns float64 array (n_layers,).
    """
    z, i, f = (to_float64(a) for a in (a_zsl, a_icl, a_ft))
    _check_attn(z, i, f)
    z, i, f = l2_normalise(z), l2_normalise(i), l2_normalise(f)
    return _nanmean(np.asarray(cosine(i - z, f - z)), axis=0)


def simaou_random(a_zsl: Any, a_icl: Any, generator: torch.Generator) -> np.ndarray:
    """Random baseline for `simaou`: the FT update replaced by r ~ N(0, I).

    Inputs as in `simaou`, shape (n_queries, n_layers, d). One zero-mean Gaussian vector r is drawn
    per (query, layer) from `generator` (CPU, float64), and `cos(a_ICL − a_ZSL, r)` (a L2-normalised)
    is averaged over queries. Returns float64 array (n_layers,), near 0 in expectation.
    """
    z, i = to_float64(a_zsl), to_float64(a_icl)
    _check_attn(z, i)
    r = torch.randn(z.shape, generator=generator, dtype=torch.float64).numpy()
    return _nanmean(np.asarray(cosine(l2_normalise(i) - l2_normalise(z), r)), axis=0)


def simam(m_x: Sequence[Sequence[Any]], m_y: Sequence[Sequence[Any]]) -> np.ndarray:
    """Similarity of attention maps, per layer.

    `m_x`, `m_y`: per query (outer, length n_queries) a sequence over layers (length n_layers) of
    pre-softmax attention scores of the last token, shape (n_heads, n_query_tokens), restricted to the
    query's own tokens (same tokens, same order, in both settings; the query length may differ between
    queries). A 4-D array (n_queries, n_layers, n_heads, n_query_tokens) also works.
    For each (query, layer): cosine over tokens per head, mean over heads; then mean over queries
    (NaN-aware). Returns float64 array (n_layers,).
    `simam_before = simam(m_ICL, m_ZSL)`, `simam_after = simam(m_ICL, m_FT)`.
    """
    if len(m_x) != len(m_y) or len(m_x) == 0:
        raise ValueError(f"need the same, non-zero number of queries, got {len(m_x)} and {len(m_y)}")
    per_query = []
    for q, (lx, ly) in enumerate(zip(m_x, m_y, strict=True)):
        if len(lx) != len(ly):
            raise ValueError(f"query {q}: {len(lx)} vs {len(ly)} layers")
        row = []
        for layer, (x, y) in enumerate(zip(lx, ly, strict=True)):
            x, y = to_float64(x), to_float64(y)
            if x.shape != y.shape or x.ndim != 2:
                raise ValueError(f"query {q} layer {layer}: expected two (n_heads, n_query_tokens) "
                                 f"arrays of one shape, got {x.shape} and {y.shape}")
            row.append(_nanmean(np.asarray(cosine(x, y)).reshape(-1), axis=0))
        per_query.append(row)
    if len({len(r) for r in per_query}) != 1:
        raise ValueError("all queries must have the same number of layers")
    return _nanmean(np.asarray(per_query, dtype=np.float64), axis=0)


def icl_demo_attention(attn_probs: Any, demo_positions: Any) -> np.ndarray:
    """ICL side of `kendall` in mode "probs": the last token's post-softmax attention to each demonstration
    token, summed over heads (`icl_demo_side` gives either mode from the pre-softmax scores).

    `attn_probs`: shape (n_heads, n_keys) for one layer (or (n_layers, n_heads, n_keys));
    `demo_positions`: indices (or a slice) of the demonstration tokens among the keys.
    Returns (n_demo_tokens,) (or (n_layers, n_demo_tokens)).
    """
    p = to_float64(attn_probs)
    return p[..., demo_positions].sum(axis=-2)


def ft_kv_scores(demo_queries: Any, test_query: Any) -> np.ndarray:
    """FT side of `kendall` in mode "probs": softmax over demonstration tokens of Σ_heads q_demo_i · q_test
    (`ft_demo_side` gives either mode).

    `demo_queries`: attention queries of the demonstration tokens seen in the FT-KV pass, shape
    (n_heads, n_demo_tokens, d_head) for one layer (or with a leading n_layers dimension);
    `test_query`: the last test token's query, shape (n_heads, d_head) (or (n_layers, n_heads, d_head)).
    Returns (n_demo_tokens,) (or (n_layers, n_demo_tokens)).
    """
    qd, qt = to_float64(demo_queries), to_float64(test_query)
    s = np.einsum("...htd,...hd->...t", qd, qt)
    s = s - s.max(axis=-1, keepdims=True)  # stable softmax
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


KENDALL_MODES: tuple[str, ...] = ("scores", "probs")


def _check_mode(mode: str) -> None:
    if mode not in KENDALL_MODES:
        raise ValueError(f"unknown Kendall mode {mode!r}; expected one of {KENDALL_MODES}")


def official_softmax(x: Any, axis: int = -1) -> np.ndarray:
    """Dai et al.'s `np_softmax` (compute_training_example_attn.py, l. 142-145), in float64 on a copy (theirs
    subtracts the max from its argument in place): exp(x - max) / Σ exp(x - max)."""
    x = np.array(to_float64(x), dtype=np.float64, copy=True)
    x -= np.max(x, axis=axis, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=axis, keepdims=True)


def icl_demo_side(attn_scores: Any, demo_positions: Any, mode: str = "scores") -> np.ndarray:
    """ICL side of `kendall` from the last token's pre-softmax scores (site `attn.scores`: q·k·scale as the
    model softmaxes it, Gemma2 soft-capped) over all of the prompt's keys.

    `attn_scores`: (n_heads, n_keys) for one layer, or (n_layers, n_heads, n_keys); `demo_positions`: indices
    of the demonstration tokens among the keys, in order.
    mode "scores" (Dai et al.'s code): Σ_heads of the raw scores at the demonstration tokens, then
    `official_softmax` over the demonstration tokens. mode "probs": softmax over all keys per head, then
    `icl_demo_attention` (Σ_heads of the probabilities at the demonstration tokens).
    Returns (n_demo_tokens,) (or (n_layers, n_demo_tokens)), float64.
    """
    _check_mode(mode)
    s = to_float64(attn_scores)
    if mode == "probs":
        return icl_demo_attention(torch.softmax(torch.from_numpy(np.ascontiguousarray(s)), dim=-1).numpy(),
                                  demo_positions)
    return official_softmax(s[..., demo_positions].sum(axis=-2))


def ft_demo_side(demo_queries: Any, test_query: Any, mode: str = "scores", scaling: Any = 1.0) -> np.ndarray:
    """FT side of `kendall`: how much the test token's query "attends" to each demonstration token's query.

    `demo_queries`: (n_heads, n_demo_tokens, d_head) for one layer, or (n_layers, n_heads, n_demo_tokens,
    d_head); `test_query`: (n_heads, d_head) (or (n_layers, n_heads, d_head)); `scaling`: the scale attention
    multiplies q·k by (a number, or one per layer: (n_layers,)), used by mode "scores" only.
    mode "scores" (Dai et al.'s code): both queries multiplied by `scaling`, heads concatenated as fairseq
    stores q ((n_heads·d_head)), the elementwise product summed over those dimensions, then `official_softmax`
    over the demonstration tokens. mode "probs": `ft_kv_scores` (no scale).
    Returns (n_demo_tokens,) (or (n_layers, n_demo_tokens)), float64.
    """
    _check_mode(mode)
    if mode == "probs":
        return ft_kv_scores(demo_queries, test_query)
    qd, qt = to_float64(demo_queries), to_float64(test_query)
    if qd.ndim not in (3, 4) or qt.shape != qd.shape[:-2] + qd.shape[-1:]:
        raise ValueError(f"expected demo queries ([n_layers,] n_heads, n_demo_tokens, d_head) and a test query "
                         f"([n_layers,] n_heads, d_head), got {qd.shape} and {qt.shape}")
    scale = np.asarray(to_float64(scaling), dtype=np.float64)
    if scale.ndim == 1 and qd.ndim == 4 and len(scale) == qd.shape[0]:
        scale_d, scale_t = scale[:, None, None, None], scale[:, None, None]
    elif scale.ndim == 0:
        scale_d = scale_t = scale
    else:
        raise ValueError(f"scaling must be a number or one per layer, got shape {scale.shape} for {qd.shape}")
    qd, qt = qd * scale_d, qt * scale_t  # fairseq's `q *= self.scaling` (multihead_attention.py l. 331)
    # (..., heads, T, d) -> (..., T, heads·d): fairseq's q is (len, heads·d_head), heads concatenated
    flat_d = np.moveaxis(qd, -3, -2).reshape(*qd.shape[:-3], qd.shape[-2], -1)
    flat_t = qt.reshape(*qt.shape[:-2], -1)
    if flat_d.ndim == 2:
        s = (flat_d * flat_t[None, :]).sum(axis=-1)
    else:  # one layer at a time: the (T, heads·d) product of all layers at once would be large
        s = np.stack([(flat_d[layer] * flat_t[layer][None, :]).sum(axis=-1) for layer in range(flat_d.shape[0])])
    return official_softmax(s)


def kendall_sides(attn_scores: Any, demo_positions: Any, demo_queries: Any, test_query: Any,
                  mode: str = "scores", scaling: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(ICL side, FT side) of `kendall` for one query: `icl_demo_side(attn_scores, demo_positions, mode)` and
    `ft_demo_side(demo_queries, test_query, mode, scaling)`, each (n_layers, n_demo_tokens) for inputs with a
    leading n_layers dimension."""
    return (icl_demo_side(attn_scores, demo_positions, mode),
            ft_demo_side(demo_queries, test_query, mode, scaling))


def tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b along the last axis, batched over the leading ones: (C - D) / sqrt((n0 - n1)(n0 - n2)),
    n0 = n(n-1)/2 pairs, n1/n2 pairs tied in x/y. Same value as scipy.stats.kendalltau (τ-b), computed with
    one pairwise sign product instead of a Python loop of scipy calls (which took a fifth of a dual seed).
    A constant vector (zero denominator) or a NaN gives NaN."""
    sx = np.sign(x[..., :, None] - x[..., None, :])
    sy = np.sign(y[..., :, None] - y[..., None, :])
    n = x.shape[-1]
    n0 = n * (n - 1) / 2
    s = (sx * sy).sum(axis=(-2, -1)) / 2  # each unordered pair counted twice
    n1 = ((sx == 0).sum(axis=(-2, -1)) - n) / 2  # the diagonal is always a tie
    n2 = ((sy == 0).sum(axis=(-2, -1)) - n) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = s / np.sqrt((n0 - n1) * (n0 - n2))
    return np.where(np.isfinite(tau), tau, np.nan)


def kendall(icl_attn_to_demo: Any, ft_scores: Any) -> np.ndarray:
    """Kendall's τ (τ-b, as scipy.stats.kendalltau) per layer between ICL attention and FT scores.

    Inputs over the same demonstration tokens in the same order: shape (n_layers, n_demo_tokens) for
    one query, or (n_queries, n_layers, n_demo_tokens), in which case τ is averaged over queries
    (NaN-aware; Dai et al.'s script takes the plain mean). See `kendall_sides` for how each side is built.
    Returns float64 array (n_layers,); a constant vector gives NaN for that layer.
    """
    x, y = to_float64(icl_attn_to_demo), to_float64(ft_scores)
    if x.shape != y.shape or x.ndim not in (2, 3):
        raise ValueError(f"expected two arrays of shape ([n_queries,] n_layers, n_demo_tokens), "
                         f"got {x.shape} and {y.shape}")
    x3 = x if x.ndim == 3 else x[None]
    y3 = y if y.ndim == 3 else y[None]
    taus = np.stack([tau_b(x3[q], y3[q]) for q in range(x3.shape[0])])  # per query: memory n_layers·n²
    return _nanmean(taus, axis=0)


def kendall_random(icl_attn_to_demo: Any, generator: torch.Generator) -> np.ndarray:
    """Random baseline for `kendall`: the FT scores replaced by U[0, 1) values drawn from `generator`
    (only their ranks matter). Same input shape and return as `kendall`."""
    x = to_float64(icl_attn_to_demo)
    r = torch.rand(x.shape, generator=generator, dtype=torch.float64).numpy()
    return kendall(x, r)
