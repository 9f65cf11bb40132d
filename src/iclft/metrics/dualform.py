"""Numerical check of the dual form of (linear) attention, in float64 (METRICS.md, "Dual view").

(a) Dai et al.: linear attention of a query over demonstration tokens x'_i and query-context tokens
x_j equals W_ZSL q + ΔW q, W_ZSL = Σ_j (W_V x_j)(W_K x_j)ᵀ, ΔW = Σ_i (W_V x'_i)(W_K x'_i)ᵀ.
(b) von Oswald et al. 2023: one gradient-descent step on L(W) = 1/(2N) Σ_i ||W x_i − y_i||² equals a
linear self-attention layer over tokens e_i = [x_i; y_i] with W_K = W_Q = [[I, 0], [0, 0]],
W_V = [[0, 0], [W0, −I]], P = (η/N) I.

Columns are tokens throughout: a token matrix X has shape (d, n_tokens).
"""

from __future__ import annotations

import numpy as np


def linear_attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Unnormalised linear attention (no softmax) of one query: Σ_j v_j (k_j · q).

    q: (d_k,); keys: (d_k, n_tokens); values: (d_v, n_tokens). Returns (d_v,).
    """
    scores = keys.T @ q  # one score per token, as attention computes them
    return values @ scores


def outer_sum(w_v: np.ndarray, w_k: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Σ_i (W_V t_i)(W_K t_i)ᵀ over the columns t_i of `tokens` (d, n): shape (d_v, d_k)."""
    out = np.zeros((w_v.shape[0], w_k.shape[0]))
    for i in range(tokens.shape[1]):  # written as the paper's sum of outer products, not a matmul
        out += np.outer(w_v @ tokens[:, i], w_k @ tokens[:, i])
    return out


def gd_step_prediction(x: np.ndarray, y: np.ndarray, x_q: np.ndarray, lr: float,
                       w0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One GD step on L(W) = 1/(2N) Σ ||W x_i − y_i||² from W0, then predict at x_q.

    x: (d_in, N); y: (d_out, N); x_q: (d_in,); w0: (d_out, d_in), default 0.
    Returns (ŷ, W1) with W1 = W0 − η ∇L(W0), ∇L(W0) = 1/N Σ (W0 x_i − y_i) x_iᵀ, and ŷ = W1 x_q.
    """
    d_in, n = x.shape
    w0 = np.zeros((y.shape[0], d_in)) if w0 is None else w0
    grad = (w0 @ x - y) @ x.T / n
    w1 = w0 - lr * grad
    return w1 @ x_q, w1


def lsa_gd_weights(d_in: int, d_out: int, n: int, lr: float,
                   w0: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The von Oswald et al. construction for tokens e = [x; y] (size d_in + d_out).

    W_K = W_Q = [[I, 0], [0, 0]] (keys and queries see only x), W_V = [[0, 0], [W0, −I]] (value =
    [0; W0 x_i − y_i], the residual), P = (η/N) I. Then the layer's update to any token e_j is
    [0; −ΔW x_j] with ΔW = −η ∇L(W0).
    """
    d = d_in + d_out
    w0 = np.zeros((d_out, d_in)) if w0 is None else w0
    w_kq = np.zeros((d, d))
    w_kq[:d_in, :d_in] = np.eye(d_in)
    w_v = np.zeros((d, d))
    w_v[d_in:, :d_in] = w0
    w_v[d_in:, d_in:] = -np.eye(d_out)
    return {"W_K": w_kq, "W_Q": w_kq.copy(), "W_V": w_v, "P": (lr / n) * np.eye(d)}


def lsa_layer(context: np.ndarray, e_q: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Linear self-attention update of the query token: e_q + P Σ_i (W_V e_i)(W_K e_i)ᵀ (W_Q e_q).

    context: (d, N) tokens e_i (the query does not attend to itself, as in the paper's construction);
    e_q: (d,). Returns the updated query token (d,).
    """
    return e_q + w["P"] @ linear_attention(w["W_Q"] @ e_q, w["W_K"] @ context, w["W_V"] @ context)


def check_dual_form(seed: int = 0, d: int = 8, n: int = 16, d_out: int = 3, n_context: int = 5,
                    lr: float = 0.1, random_w0: bool = True, perturbation: float = 0.0) -> dict[str, float]:
    """Run both dual-form checks on random float64 data and return the worst absolute errors.

    d: token / input dimension; n: number of demonstrations (tokens x'_i in (a), pairs (x_i, y_i) in
    (b)); d_out: dimension of y in (b); n_context: query-context tokens in (a); lr: η; random_w0:
    start GD from a random W0 instead of 0. `perturbation` > 0 adds that much Gaussian noise to W_K
    of the attention side of (a) and to P of the constructed layer in (b) — a deliberately wrong
    construction, used to show the check can fail.

    Returns `max_abs_error_linear_attention`, `max_abs_error_gd` and their max `max_abs_error`;
    a correct construction gives ~1e-15.
    """
    rng = np.random.default_rng(seed)

    # (a) Dai et al.: attention over [demonstrations, query context] vs (W_ZSL + ΔW) q.
    w_k, w_v, w_q = (rng.standard_normal((d, d)) for _ in range(3))
    demos = rng.standard_normal((d, n))
    ctx = rng.standard_normal((d, n_context))
    q = w_q @ rng.standard_normal(d)
    w_k_attn = w_k + perturbation * rng.standard_normal((d, d))
    tokens = np.concatenate([demos, ctx], axis=1)
    attn = linear_attention(q, w_k_attn @ tokens, w_v @ tokens)
    w_zsl = outer_sum(w_v, w_k, ctx)
    delta_w = outer_sum(w_v, w_k, demos)
    err_a = float(np.max(np.abs(attn - (w_zsl @ q + delta_w @ q))))

    # (b) von Oswald et al.: one GD step vs the constructed linear self-attention layer.
    x = rng.standard_normal((d, n))
    y = rng.standard_normal((d_out, d)) @ x + 0.1 * rng.standard_normal((d_out, n))
    x_q = rng.standard_normal(d)
    w0 = rng.standard_normal((d_out, d)) if random_w0 else np.zeros((d_out, d))
    y_hat, _ = gd_step_prediction(x, y, x_q, lr, w0)
    w = lsa_gd_weights(d, d_out, n, lr, w0)
    w["P"] = w["P"] + perturbation * rng.standard_normal(w["P"].shape)
    # The query's y-part starts at −W0 x_q, so after the update [0; −ΔW x_q] it holds −(W0 + ΔW) x_q
    # = −ŷ; the prediction is read out with the sign flipped, as in the paper.
    e_q = np.concatenate([x_q, -w0 @ x_q])
    out = lsa_layer(np.concatenate([x, y], axis=0), e_q, w)
    err_b = float(max(np.max(np.abs(-out[d:] - y_hat)), np.max(np.abs(out[:d] - x_q))))

    return {"max_abs_error_linear_attention": err_a, "max_abs_error_gd": err_b,
            "max_abs_error": max(err_a, err_b)}
