"""Answer accuracy (exact match of normalised answers) and corpus BLEU (METRICS.md, "Implicit patterns")."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

Normaliser = Callable[[str], str]

_PUNCT = string.punctuation + "“”‘’"


def normalise_answer(s: str) -> str:
    """A ready-made normaliser: lower-case, collapse whitespace, strip surrounding whitespace and
    punctuation ("  Positive.\\n" -> "positive"). Inner punctuation is kept ("3.5" stays "3.5")."""
    return re.sub(r"\s+", " ", s.lower()).strip().strip(_PUNCT).strip()


def exact_match(pred: str, gold: str, normalise: Normaliser | None = None) -> bool:
    """True iff `normalise(pred) == normalise(gold)` — whole-string equality, never substring
    match. With `normalise=None` the strings are compared exactly as given (pass
    `normalise_answer` for the usual case/whitespace/punctuation-insensitive match)."""
    if normalise is not None:
        pred, gold = normalise(pred), normalise(gold)
    return pred == gold


def accuracy(preds: Sequence[str], golds: Sequence[str], normalise: Normaliser | None = None) -> float:
    """Fraction of positions where `exact_match(pred, gold, normalise)` holds; lists of equal
    length n ≥ 1 (ValueError otherwise)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    if not preds:
        raise ValueError("accuracy of an empty list is undefined")
    return sum(exact_match(p, g, normalise) for p, g in zip(preds, golds, strict=True)) / len(preds)


def bleu(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing), on a 0–100 scale.

    `hyps`: n hypothesis strings. `refs`: either n reference strings (one per hypothesis) or n lists
    of references (every hypothesis with the same number of references).
    """
    try:
        import sacrebleu  # optional dependency: only text-generation tasks need it
    except ImportError as e:
        msg = "bleu() needs sacrebleu: pip install 'iclft[hub]' (or pip install sacrebleu)"
        raise ImportError(msg) from e
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if all(isinstance(r, str) for r in refs):
        streams = [list(refs)]
    else:
        counts = {len(r) for r in refs}
        if len(counts) != 1:
            raise ValueError("every hypothesis needs the same number of references")
        # sacrebleu wants one list per reference position ("streams"), not one list per hypothesis.
        streams = [list(s) for s in zip(*refs, strict=True)]
    return float(sacrebleu.corpus_bleu(list(hyps), streams).score)
