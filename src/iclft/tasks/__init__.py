"""Task registry: `get_task(name)` for the built-in tasks (builtin.yaml), YAML task files and JSONL/CSV files."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from iclft import UserError
from iclft.tasks.base import Example, Task
from iclft.tasks.config import HubData, TaskConfig, builtin_config, builtin_configs, read_config


class TaskEntry(NamedTuple):
    shown: str  # how `iclft tasks` shows the name
    help: str


# Built-in tasks first (builtin.yaml, in its order), then the names that take a parameter or a path.
TASKS: dict[str, TaskEntry] = {
    **{name: TaskEntry(name, f"{c.description} [{c.source()}]") for name, c in builtin_configs().items()},
    "sentiment/": TaskEntry("sentiment/<neg>-<pos>", "the sentiment task with new label words for negative and "
                            "positive (e.g. sentiment/apple-tiger): what the labels mean is only in the "
                            "demonstrations [generator tweets, offline]"),
    ".yaml": TaskEntry("PATH.yaml", "a task file: data (JSONL, CSV or a hub id), fields, label words, template, "
                       "instruction, separator, splits (see the README)"),
    ".jsonl": TaskEntry("PATH.jsonl", "rows with `input`, `label` (optional `split`: train/test); the default "
                        "template"),
    ".csv": TaskEntry("PATH.csv", "columns `input`, `label` (optional `split`: train/test); the default template"),
}
ALIASES = {"sst2": "glue/sst2"}
# How an unknown name under a built-in group is called in the error ("unknown implicit family 'x'").
GROUPS = {"implicit": "implicit family", "dai": "Dai et al. dataset", "glue": "GLUE dataset"}


def task_config(name: str) -> tuple[TaskConfig, Path]:
    """The config of a task name, and the directory its data paths are relative to."""
    name = ALIASES.get(name, name)
    builtin = builtin_configs()
    if name in builtin:
        return builtin[name], Path(".")
    suffix = Path(name).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return read_config(Path(name)), Path(name).parent
    if suffix in (".jsonl", ".csv"):  # a data file alone: the default fields, template and split
        path = Path(name)
        return TaskConfig(name=path.stem, data=name, description=f"custom task from {path.name}"), Path(".")
    group, sep, rest = name.partition("/")
    if group == "sentiment" and sep:
        from iclft.tasks.sentiment import paired_sentiment_config

        neg, dash, pos = rest.partition("-")
        if not dash or not neg or not pos or neg == pos:
            raise UserError(f"sentiment/NEG-POS needs two different label words, e.g. sentiment/apple-tiger; got "
                            f"{rest!r}")
        return paired_sentiment_config(neg, pos), Path(".")
    members = [n.partition("/")[2] for n in builtin if n.startswith(group + "/")]
    if sep and members:
        raise UserError(f"unknown {GROUPS.get(group, group + ' task')} {rest!r}; choose one of {', '.join(members)}")
    raise UserError(f"unknown task {name!r}; known: {', '.join(e.shown for e in TASKS.values())}")


def task_files(name: str) -> list[Path]:
    """The user's files a task name reads (a task file and the data file it names; none for a built-in task). A
    run records their SHA-256 in its identity, so a resume after an edit is refused instead of mixing results."""
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".csv"):
        return [Path(name)]
    if suffix not in (".yaml", ".yml"):
        return []
    config, base = task_config(name)
    data = [] if config.data is None or isinstance(config.data, HubData) else [base / config.data]
    return [Path(name), *data]


def get_task(name: str) -> Task:
    """The named task. Its splits are fixed (a file's is drawn with seed 0, an implicit family's items with seed
    0): every study and every seed of a run sees the same task, and draws its own demonstrations from it."""
    config, base = task_config(name)
    task = config.load(base)
    if not task.train or not task.test:
        raise UserError(f"task {name!r} has no {'training' if not task.train else 'test'} examples")
    return task


def describe(name: str, k: int = 2):
    """What `iclft tasks NAME` shows, in two parts: the task's config as a task file (the fields that differ from
    the defaults), then (loading, so checking, the task: a hub task needs the network) its split sizes and one
    prompt with k demonstrations as text."""
    import yaml

    class Dumper(yaml.SafeDumper):  # templates and separators read as written in a task file: "Q: {input}\nA:"
        pass

    Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"' if (
        "\n" in s or not s.strip()) else None))
    config, _ = task_config(name)
    shown = config.model_dump(mode="json", exclude_defaults=True)
    yield yaml.dump(shown, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n")
    task = get_task(name)
    demos = task.train[:k]
    parts = ([task.instruction] if task.instruction else []) + [task.demo_text(d) for d in demos]
    prompt = task.separator.join(parts + [task.query_text(task.test[0])])
    words = ", ".join(task.label_words) if task.label_words else "free text"
    yield (f"# {len(task.train)} training and {len(task.test)} test examples; answers: {words}\n"
           f"# a prompt with {len(demos)} demonstrations (the model answers after its last line):\n{prompt}")


__all__ = ["TASKS", "Example", "Task", "TaskConfig", "builtin_config", "get_task"]
