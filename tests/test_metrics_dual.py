"""Dai et al. dual-view metrics against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from iclft.metrics.dual import (
    ft_kv_scores,
    icl_demo_attention,
    kendall,
    kendall_random,
    predict_labels,
    rec2ftp,
    simam,
    simaou,
    simaou_random,
)


def test_predict_labels_argmax_over_label_first_tokens():
    # label ids [4, 1, 5]; the global argmax (column 0 / 2) is not a label token and must be ignored
    logits = torch.tensor([
        [9.0, 0.5, 9.0, 0.0, 2.0, 1.0],  # label logits [2.0, 0.5, 1.0] -> 0
        [0.0, 3.0, 0.0, 0.0, 2.0, 1.0],  # [2.0, 3.0, 1.0] -> 1
        [0.0, 0.0, 0.0, 0.0, -1.0, 0.0],  # [-1.0, 0.0, 0.0] -> tie between 1 and 2 -> earlier (1)
    ], dtype=torch.bfloat16)
    out = predict_labels(logits, [4, 1, 5])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [0, 1, 1])
    np.testing.assert_array_equal(predict_labels(np.array([0.0, 1.0, 5.0]), [1, 2]), [1])


def test_predict_labels_rejects_collisions_and_bad_ids():
    with pytest.raises(ValueError, match="share first token"):
        predict_labels(torch.zeros(2, 6), [3, 1, 3])
    with pytest.raises(ValueError, match="out of range"):
        predict_labels(torch.zeros(2, 6), [1, 6])


def test_rec2ftp_six_queries():
    zsl = [1, 0, 0, 1, 0, 0]
    icl = [1, 1, 0, 0, 1, 0]
    ft = [0, 1, 1, 1, 1, 0]
    # C_FT \ C_ZSL = {1, 2, 4} (query 3 is right under ZSL already); ICL gets 1 and 4 of them -> 2/3
    assert rec2ftp(np.array(zsl, bool), np.array(icl, bool), np.array(ft, bool)) == pytest.approx(2 / 3)
    assert rec2ftp(zsl, [1, 1, 1, 1, 1, 1], ft) == 1.0
    assert rec2ftp(zsl, [0, 0, 0, 0, 0, 0], ft) == 0.0


def test_rec2ftp_undefined_warns():
    with pytest.warns(RuntimeWarning, match="undefined"):
        out = rec2ftp([1, 0, 1], [1, 1, 1], [1, 0, 0])  # FT fixes nothing ZSL got wrong
    assert math.isnan(out)
    with pytest.raises(ValueError):
        rec2ftp([1, 0], [1, 0], [1, 0, 1])


def test_simaou_by_hand():
    # shape (n_queries=2, n_layers=2, d=2); vectors are L2-normalised first, so their lengths are noise.
    a_zsl = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    a_icl = torch.tensor([[[0.0, 3.0], [0.0, 1.0]], [[4.0, 0.0], [2.0, 0.0]]])
    a_ft = torch.tensor([[[5.0, 5.0], [0.0, 7.0]], [[-1.0, 0.0], [3.0, 0.0]]])
    # q0 l0: ICL-ZSL = [-1,1], FT-ZSL = [1/√2-1, 1/√2]; dot = 1, |FT-ZSL|² = 2-√2
    #        -> cos = 1/√(2(2-√2)) = cos(π/8)   (unnormalised vectors would give 9/√(13·34) ≈ 0.43)
    # q0 l1: ICL-ZSL = [-1,1] = FT-ZSL -> 1
    # q1 l0: ICL-ZSL = [1,-1], FT-ZSL = [-1,-1] -> 0
    # q1 l1: normalised ICL == ZSL -> undefined, skipped in the mean over queries
    out = simaou(a_zsl, a_icl, a_ft)
    assert 1 / math.sqrt(2 * (2 - math.sqrt(2))) == pytest.approx(math.cos(math.pi / 8))
    np.testing.assert_allclose(out, [math.cos(math.pi / 8) / 2, 1.0], atol=1e-12)


def test_simaou_random_is_zero_mean_and_reproducible():
    d = 4000
    a_zsl = torch.zeros(3, 2, d)
    a_zsl[..., 0] = 1.0
    a_icl = torch.ones(3, 2, d)  # update direction ≈ all-positive: a U[0,1) "baseline" would give ≈ 0.87
    out = simaou_random(a_zsl, a_icl, torch.Generator().manual_seed(0))
    assert out.shape == (2,)
    assert np.all(np.abs(out) < 0.1)  # N(0, I): cos ~ N(0, 1/d)
    again = simaou_random(a_zsl, a_icl, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(out, again)


def test_simam_by_hand():
    # query 0 (3 query tokens, 2 heads)
    #   layer 0: head0 cos([1,0,0],[1,0,0]) = 1, head1 cos([1,1,0],[0,1,1]) = 1/2 -> 0.75
    #   layer 1: head0 cos([1,2,2],[2,2,1]) = 8/9, head1 cos([0,0,1],[0,0,-3]) = -1 -> -1/18
    # query 1 (2 query tokens, 2 heads)
    #   layer 0: head0 cos([1,0],[0,1]) = 0, head1 cos([3,4],[4,3]) = 24/25 -> 0.48
    #   layer 1: identical up to scale -> 1
    m_x = [
        [np.array([[1, 0, 0], [1, 1, 0]]), np.array([[1, 2, 2], [0, 0, 1]])],
        [torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])],
    ]
    m_y = [
        [np.array([[1, 0, 0], [0, 1, 1]]), np.array([[2, 2, 1], [0, 0, -3]])],
        [torch.tensor([[0.0, 1.0], [4.0, 3.0]]), torch.tensor([[2.0, 2.0], [2.0, 0.0]])],
    ]
    np.testing.assert_allclose(simam(m_x, m_y), [(0.75 + 0.48) / 2, (-1 / 18 + 1) / 2], atol=1e-12)
    with pytest.raises(ValueError):
        simam(m_x, m_y[:1])


def test_kendall_by_hand():
    # layer 0: x = [.1,.4,.3,.2], y = [1,4,2,3]. Pairs: (0,1)(0,2)(0,3)(1,2)(1,3) concordant,
    #          (2,3) discordant (x falls, y rises) -> tau = (5-1)/6 = 2/3
    # layer 1: reversed order -> -1
    x = np.array([[0.1, 0.4, 0.3, 0.2], [1, 2, 3, 4]])
    y = np.array([[1, 4, 2, 3], [4, 3, 2, 1]])
    np.testing.assert_allclose(kendall(x, y), [2 / 3, -1.0])
    # with a second query: layer 0 identical order -> 1; layer 1 constant FT side -> NaN, skipped
    x2 = np.stack([x, [[1, 2, 3, 4], [1, 2, 3, 4]]])
    y2 = np.stack([y, [[1, 2, 3, 4], [5, 5, 5, 5]]])
    np.testing.assert_allclose(kendall(x2, y2), [(2 / 3 + 1) / 2, -1.0])


def test_kendall_tau_b_with_ties():
    # x = [1,1,2], y = [1,2,3]: 2 concordant, 0 discordant, 1 pair tied in x
    # tau_b = 2 / √((3-1)·(3-0)) = 2/√6
    np.testing.assert_allclose(kendall([[1, 1, 2]], [[1, 2, 3]]), [2 / math.sqrt(6)])


def test_tau_b_equals_scipy_with_ties_and_constants():
    from scipy.stats import kendalltau

    from iclft.metrics.dual import tau_b

    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=(40, 25)).astype(float)  # many ties on both sides
    y = rng.integers(0, 4, size=(40, 25)).astype(float)
    x[3] = 2.0  # a constant row -> NaN, as scipy
    y[7, :12] = rng.random(12)  # mixed tied / untied
    got = tau_b(x, y)
    want = np.array([kendalltau(a, b).statistic for a, b in zip(x, y, strict=True)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.isnan(got[3])


def test_kendall_random_baseline():
    x = torch.arange(300, dtype=torch.float64).reshape(1, 300).repeat(2, 1)
    out = kendall_random(x, torch.Generator().manual_seed(1))
    assert out.shape == (2,) and np.all(np.abs(out) < 0.15)  # sd of tau ≈ √(2(2n+5)/(9n(n-1))) ≈ 0.04
    np.testing.assert_array_equal(out, kendall_random(x, torch.Generator().manual_seed(1)))


def test_icl_demo_attention_and_ft_kv_scores():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])  # (heads=2, keys=4)
    np.testing.assert_allclose(icl_demo_attention(probs, [0, 2]), [0.5, 0.5])
    np.testing.assert_allclose(icl_demo_attention(probs, slice(1, 4)), [0.5, 0.5, 0.5])
    # head 0: q_test [1,0], demo queries [1,0],[0,0],[2,0] -> [1,0,2]
    # head 1: q_test [0,1], demo queries [0,1],[0,0],[0,-1] -> [1,0,-1]; summed [2,0,1] -> softmax
    q_demo = np.array([[[1, 0], [0, 0], [2, 0]], [[0, 1], [0, 0], [0, -1]]], dtype=float)
    q_test = np.array([[1, 0], [0, 1]], dtype=float)
    z = math.e**2 + 1 + math.e
    np.testing.assert_allclose(ft_kv_scores(q_demo, q_test), [math.e**2 / z, 1 / z, math.e / z])
