"""Cosine, convergence metrics and demonstration–query similarity against hand-computed values."""

import math
import warnings

import numpy as np
import pytest
import torch

from iclft.metrics.similarity import CONVERGENCE_KEYS, convergence_metrics, cosine, demo_query_similarity

R2 = 1 / math.sqrt(2)


def test_cosine_hand_values():
    assert cosine([1, 0], [1, 1]) == pytest.approx(R2)  # 1 / (1 * √2)
    assert cosine([1, 2, 2], [2, 0, 1]) == pytest.approx(4 / (3 * math.sqrt(5)))  # (2+0+2) / (3 * √5)
    assert cosine([3, 4], [-6, -8]) == pytest.approx(-1.0)
    assert cosine([1, 0], [0, 5]) == pytest.approx(0.0)


def test_cosine_batched_last_dim_and_torch_float64():
    a = torch.tensor([[1.0, 0.0], [3.0, 4.0]], dtype=torch.float32)
    b = torch.tensor([[1.0, 1.0], [4.0, 3.0]], dtype=torch.bfloat16)
    out = cosine(a, b)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (2,)
    np.testing.assert_allclose(out, [R2, 24 / 25])  # (12+12)/(5*5)


def test_cosine_zero_vector_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(cosine([0, 0], [1, 2]))
        out = cosine(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [1.0, 0.0]]))
    assert math.isnan(out[0]) and out[1] == pytest.approx(1.0)


def test_convergence_metrics_two_layers_by_hand():
    # layer 0: ZSL=[1,0], ICL=[1,1], IT=[0,1], SL=[2,0]
    #   ICL-ZSL=[0,1], IT-ZSL=[-1,1] -> d_icl_it = 1/√2; SL-ZSL=[1,0] -> d_icl_sl = 0
    # layer 1: ZSL=ICL=[3,4], IT=[4,3], SL=[-3,-4]; ICL-ZSL = 0 -> both d_* undefined (NaN)
    h_zsl = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    h_icl = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    h_it = torch.tensor([[0.0, 1.0], [4.0, 3.0]])
    h_sl = torch.tensor([[2.0, 0.0], [-3.0, -4.0]])
    m = convergence_metrics(h_zsl, h_icl, h_it, h_sl)
    assert set(m) == set(CONVERGENCE_KEYS)
    expected = {
        "s_anchor_icl": [R2, 1.0],
        "s_anchor_it": [0.0, 0.96],  # (12+12)/25
        "s_icl_it": [R2, 0.96],
        "s_icl_sl": [R2, -1.0],
        "d_icl_it": [R2, np.nan],
        "d_icl_sl": [0.0, np.nan],
    }
    for key, want in expected.items():
        assert m[key].shape == (2,) and m[key].dtype == np.float64
        np.testing.assert_allclose(m[key], want, atol=1e-12, err_msg=key)


def test_convergence_metrics_shape_mismatch():
    with pytest.raises(ValueError):
        convergence_metrics(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), np.ones((3, 3)))


def test_demo_query_similarity_by_hand():
    # cos with query [1,1]: [1,0] -> 1/√2, [0,2] -> 1/√2, [3,3] -> 1; mean = (√2 + 1)/3
    demos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert demo_query_similarity(demos, torch.tensor([1.0, 1.0])) == pytest.approx((math.sqrt(2) + 1) / 3)
    assert demo_query_similarity([2.0, 0.0], [1.0, 1.0]) == pytest.approx(R2)  # single demonstration
    assert math.isnan(demo_query_similarity([[0.0, 0.0]], [1.0, 1.0]))
    with pytest.raises(ValueError):
        demo_query_similarity(np.ones((2, 3)), np.ones(2))


def test_update_size_by_hand():
    from iclft.metrics.similarity import convergence_metrics, relative_update

    z = np.array([[3.0, 4.0], [0.0, 0.0]])  # ‖z‖ = 5 at layer 0; a zero state at layer 1
    x = np.array([[3.0, 1.0], [1.0, 0.0]])  # ‖x − z‖ = 3
    u = relative_update(z, x)
    assert u[0] == pytest.approx(0.6) and np.isnan(u[1])
    m = convergence_metrics(z, x, z, 2 * z)
    assert m["u_icl"][0] == pytest.approx(0.6) and m["u_it"][0] == 0.0 and m["u_sl"][0] == pytest.approx(1.0)
