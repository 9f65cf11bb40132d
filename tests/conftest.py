import random

import pytest

from iclft.models.toy import TINY_CONFIGS, tiny_model, word_tokenizer

WORDS = "the a movie was good bad great awful film plot actor i loved hated it this really not very".split()


@pytest.fixture(scope="session")
def tok():
    return word_tokenizer([" ".join(WORDS)], extra=("positive", "negative"))


@pytest.fixture(scope="session")
def tiny_models(tok):
    return {kind: tiny_model(kind, len(tok), seed=1) for kind in TINY_CONFIGS}


def random_prompts(n, vocab, seed=0, lo=3, hi=20):
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
