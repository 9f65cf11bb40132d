"""Dual form of linear attention (Dai et al.) and GD-as-attention (von Oswald et al.) in float64."""

import numpy as np
import pytest

from iclft.metrics.dualform import (
    check_dual_form,
    gd_step_prediction,
    linear_attention,
    lsa_gd_weights,
    lsa_layer,
    outer_sum,
)


def test_linear_attention_by_hand():
    # keys k1=[1,0], k2=[0,1]; values v1=[1,2], v2=[1,3]; q=[1,2] -> 1·v1 + 2·v2 = [3, 8]
    out = linear_attention(np.array([1.0, 2.0]), np.eye(2), np.array([[1.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_allclose(out, [3.0, 8.0])
    # one token [1,2] with W_V = W_K = I -> [[1,2],[2,4]]
    np.testing.assert_allclose(outer_sum(np.eye(2), np.eye(2), np.array([[1.0], [2.0]])), [[1, 2], [2, 4]])


def test_gd_step_and_constructed_layer_by_hand():
    # x = [1, 2], y = [2, 4], W0 = 0, η = 0.5: ∇L = (1/2) Σ (0 - y_i) x_i = -(2 + 8)/2 = -5
    # W1 = 0 - 0.5·(-5) = 2.5; at x_q = 3 the prediction is 7.5
    x, y = np.array([[1.0, 2.0]]), np.array([[2.0, 4.0]])
    y_hat, w1 = gd_step_prediction(x, y, np.array([3.0]), lr=0.5)
    assert w1[0, 0] == pytest.approx(2.5) and y_hat[0] == pytest.approx(7.5)
    # the layer adds [0; -ΔW x_q] to the query token [3; 0]: y-part becomes -7.5
    out = lsa_layer(np.vstack([x, y]), np.array([3.0, 0.0]), lsa_gd_weights(1, 1, 2, lr=0.5))
    np.testing.assert_allclose(out, [3.0, -7.5])
    # from W0 = 1: ∇L = (1/2)((1-2)·1 + (2-4)·2) = -2.5, W1 = 1 + 1.25 = 2.25, ŷ(3) = 6.75
    y_hat, _ = gd_step_prediction(x, y, np.array([3.0]), lr=0.5, w0=np.array([[1.0]]))
    assert y_hat[0] == pytest.approx(6.75)


@pytest.mark.parametrize("seed,d,n,random_w0", [(0, 8, 16, True), (1, 4, 3, False), (2, 16, 40, True)])
def test_check_dual_form_holds(seed, d, n, random_w0):
    r = check_dual_form(seed=seed, d=d, n=n, random_w0=random_w0)
    assert set(r) == {"max_abs_error_linear_attention", "max_abs_error_gd", "max_abs_error"}
    assert r["max_abs_error"] < 1e-6
    assert r["max_abs_error"] == max(r["max_abs_error_linear_attention"], r["max_abs_error_gd"])


def test_check_dual_form_detects_a_wrong_construction():
    r = check_dual_form(seed=0, perturbation=0.1)
    assert r["max_abs_error_linear_attention"] > 1e-2
    assert r["max_abs_error_gd"] > 1e-2
