"""Cosine similarities for the convergence analysis (METRICS.md, "Convergence")."""

from __future__ import annotations

from typing import Any

import numpy as np

CONVERGENCE_KEYS = ("s_anchor_icl", "s_anchor_it", "s_icl_it", "s_icl_sl", "d_icl_it", "d_icl_sl",
                    "u_icl", "u_it", "u_sl")


def to_float64(x: Any) -> np.ndarray:
    """A torch tensor, numpy array or nested sequence as a float64 numpy array (a copy for tensors)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def cosine(a: Any, b: Any) -> np.ndarray | float:
    """Cosine similarity along the last dimension, computed in float64.

    `a` and `b` are tensors/arrays of shape (..., d) that broadcast against each other; the result has
    the broadcast leading shape (a float for 1-D inputs). Where either vector has zero norm the cosine
    is undefined and the result is NaN (no exception, no warning).
    """
    a = to_float64(a)
    b = to_float64(b)
    dot = np.sum(a * b, axis=-1)
    norm = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), np.nan)
    # Rounding can push |cos| of (anti)parallel vectors a hair past 1; clip so arccos etc. stay valid.
    out = np.clip(out, -1.0, 1.0)
    return float(out) if out.ndim == 0 else out


def convergence_metrics(h_zsl: Any, h_icl: Any, h_it: Any, h_sl: Any) -> dict[str, np.ndarray]:
    """Per-layer convergence numbers for one trial (Duan et al.; METRICS.md "Convergence").

    Each input is the last-token `resid_post` of one setting, shape (n_layers, d) (extra leading
    dimensions, e.g. (n_queries, n_layers, d), are carried through). Returns float64 arrays of shape
    (n_layers,) for:

    - `s_anchor_icl = cos(h_ZSL, h_ICL)`, `s_anchor_it = cos(h_ZSL, h_IT)`,
      `s_icl_it = cos(h_ICL, h_IT)`, `s_icl_sl = cos(h_ICL, h_SL)`;
    - `d_icl_it = cos(h_ICL − h_ZSL, h_IT − h_ZSL)`, `d_icl_sl = cos(h_ICL − h_ZSL, h_SL − h_ZSL)`;
    - update sizes `u_x = ‖h_x − h_ZSL‖ / ‖h_ZSL‖` for x = ICL, IT, SL: how far each setting moved the state
      (a cosine between two changes says nothing when one of them is ~0).

    A layer where a difference vector is exactly zero (e.g. ICL left the state unchanged) gives NaN.
    """
    z, icl, it, sl = (to_float64(h) for h in (h_zsl, h_icl, h_it, h_sl))
    shapes = {z.shape, icl.shape, it.shape, sl.shape}
    if len(shapes) != 1:
        raise ValueError(f"all hidden-state arrays must have the same shape, got {sorted(shapes)}")
    if z.ndim < 2:
        raise ValueError(f"expected shape (n_layers, d), got {z.shape}")
    d_icl = icl - z
    return {
        "s_anchor_icl": np.asarray(cosine(z, icl)),
        "s_anchor_it": np.asarray(cosine(z, it)),
        "s_icl_it": np.asarray(cosine(icl, it)),
        "s_icl_sl": np.asarray(cosine(icl, sl)),
        "d_icl_it": np.asarray(cosine(d_icl, it - z)),
        "d_icl_sl": np.asarray(cosine(d_icl, sl - z)),
        "u_icl": relative_update(z, icl), "u_it": relative_update(z, it), "u_sl": relative_update(z, sl),
    }


def relative_update(h_ref: Any, h: Any) -> np.ndarray:
    """‖h − h_ref‖ / ‖h_ref‖ along the last dim (float64); NaN where h_ref is zero."""
    ref, x = to_float64(h_ref), to_float64(h)
    norm = np.linalg.norm(ref, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, np.linalg.norm(x - ref, axis=-1) / np.where(norm > 0, norm, 1.0), np.nan)


def l2_normalise(x: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm along the last dim (float64); zero rows become NaN."""
    x = to_float64(x)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), np.nan)


def demo_query_similarity(demo_emb: Any, query_emb: Any) -> float:
    """Demonstration–query similarity: mean over demonstrations of cos(ê_demo_i, ê_query).

    `demo_emb` has shape (k, e) (one sentence embedding per demonstration input; a single (e,)
    vector counts as k = 1) and `query_emb` shape (e,). Embeddings are L2-normalised first (as for
    mean-pooled sentence-transformer outputs) and the cosines averaged over the k demonstrations.
    A zero embedding makes the result NaN.
    """
    demos = l2_normalise(np.atleast_2d(to_float64(demo_emb)))
    query = l2_normalise(to_float64(query_emb))
    if query.ndim != 1 or demos.shape[-1] != query.shape[0]:
        raise ValueError(f"expected demo_emb (k, e) and query_emb (e,), got {demos.shape} and {query.shape}")
    if demos.shape[0] == 0:
        raise ValueError("demo_query_similarity needs at least one demonstration")
    return float(np.mean(cosine(demos, query[None, :])))
