import os
import random
import shutil
import subprocess
import sys

import pytest

from iclft.models.toy import TINY_CONFIGS, tiny_model, word_tokenizer

WORDS = "the a movie was good bad great awful film plot actor i loved hated it this really not very".split()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def tok():
    return word_tokenizer([" ".join(WORDS)], extra=("positive", "negative"))


@pytest.fixture(scope="session")
def tiny_models(tok):
    return {kind: tiny_model(kind, len(tok), seed=1) for kind in TINY_CONFIGS}


@pytest.fixture(scope="session")
def quick_all(tmp_path_factory):
    """One `iclft run all --quick` on the built-in model for the whole session, run as a user runs it.

    Read-only: a test that changes a run directory works on `copy_run(...)` of it. Its study directories
    (`/convergence`, `/dual`, `/implicit`) are the quick-preset runs the study tests check.
    """
    out = tmp_path_factory.mktemp("all") / "run"
    proc = subprocess.run([sys.executable, "-m", "iclft", "run", "all", "--quick", "--out", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{out / 'report.html'}" in proc.stdout
    assert "FutureWarning" not in proc.stderr and "RuntimeWarning" not in proc.stderr  # said once, in words
    return out


def copy_run(src, dst):
    """A private copy of a finished run directory (its lock file left behind) to resume, edit or re-render."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def icl_pairs(n, vocab, seed=0, prefix_len=20):
    """Clean/corrupt token pairs (answer ids 5, 6) sharing a per-pair prefix (like demonstrations) and differing in
    one token just after it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a = torch.randint(4, vocab, (prefix_len + 4 + i,), generator=g).tolist()
        b = list(a)
        j = prefix_len + 1 + i % 3
        b[j] = (b[j] + 5) % (vocab - 4) + 4
        out.append((a, b, 5, 6))
    return out


def random_prompts(n, vocab, seed=0, lo=3, hi=20):
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]
