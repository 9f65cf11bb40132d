"""Exact-match accuracy and corpus BLEU."""

import pytest

from iclft.metrics.accuracy import accuracy, bleu, exact_match, normalise_answer


def test_exact_match_is_whole_string():
    assert exact_match("positive", "positive")
    assert not exact_match("Positive", "positive")  # no normaliser: compared as given
    assert exact_match(" Positive.\n", "positive", normalise=normalise_answer)
    assert not exact_match("positive sentiment", "positive", normalise=normalise_answer)  # no substring
    assert exact_match("3.5", "3.5", normalise=normalise_answer)
    assert exact_match("ABC", "abc", normalise=str.lower)


def test_normalise_answer():
    assert normalise_answer("  The   Answer: 42!  ") == "the answer: 42"


def test_accuracy():
    preds = ["positive", "Negative", "neutral", "positive"]
    golds = ["positive", "negative", "positive", "positive"]
    assert accuracy(preds, golds) == pytest.approx(2 / 4)
    assert accuracy(preds, golds, normalise=normalise_answer) == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        accuracy(preds, golds[:2])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_bleu_by_hand():
    pytest.importorskip("sacrebleu")
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (6 tokens each, BP = 1)
    # clipped n-gram precisions: 1-gram 5/6, 2-gram 3/5, 3-gram 2/4, 4-gram 1/3
    # BLEU = (5/6 · 3/5 · 1/2 · 1/3)^(1/4) = (1/12)^(1/4) = 0.537285
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    assert bleu([hyp], [ref]) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-3)
    assert bleu([hyp, "hello there"], [ref, "hello there"]) > bleu([hyp], [ref])
    assert bleu([hyp], [[ref, hyp]]) == pytest.approx(100.0)  # several references per hypothesis
    with pytest.raises(ValueError):
        bleu([hyp], [ref, ref])


def test_bleu_without_sacrebleu_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` raise ImportError
    with pytest.raises(ImportError, match="pip install"):
        bleu(["a"], ["a"])
