"""Tasks read through `datasets` from the hub: only when the user is online."""

from __future__ import annotations

from iclft import UserError
from iclft.tasks.base import Example


def load_hub_dataset(*args, **kwargs):
    try:
        import datasets
    except ImportError:
        raise UserError("this task needs the `datasets` package: pip install 'iclft[hub]'") from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - offline shows up as many exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load dataset {args[0]!r} (offline? no cached copy?): {first}") from None


def sst2_task():
    from iclft.tasks.base import Task

    ds = load_hub_dataset("glue", "sst2")
    words = ["negative", "positive"]
    conv = lambda split: [Example(r["sentence"].strip(), words[r["label"]]) for r in ds[split]]  # noqa: E731
    return Task(
        name="glue/sst2",
        train=conv("train"),
        test=conv("validation"),  # GLUE's test labels are hidden
        instruction="Classify the sentiment of each review as positive or negative.",
        template="Review: {input}\nSentiment:",
        label_words=words,
    )
