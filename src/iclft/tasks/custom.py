"""Custom tasks from a JSONL or CSV file with `input` and `label` fields (optional `split`: train/test)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from iclft import UserError
from iclft.tasks.base import Example, Task


def file_task(path: Path, seed: int = 0, test_fraction: float = 0.2) -> Task:
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} does not exist")
    rows = []
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        else:
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read task file {str(path)!r}: {exc}") from None
    if not rows:
        raise UserError(f"task file {str(path)!r} has no rows")
    missing = [i for i, r in enumerate(rows) if not isinstance(r, dict) or "input" not in r or "label" not in r]
    if missing:
        raise UserError(f"task file {str(path)!r}: row {missing[0] + 1} lacks an `input` or `label` field")
    for i, r in enumerate(rows):
        for key in ("input", "label"):
            if not isinstance(r[key], str | int | float) or isinstance(r[key], bool) or str(r[key]).strip() == "":
                shown = "null" if r[key] is None else repr(r[key])
                raise UserError(f"task file {str(path)!r}: row {i + 1} has {key} {shown}; it must be non-empty text")
    examples = [(Example(str(r["input"]), str(r["label"])), r.get("split")) for r in rows]
    if any(s for _, s in examples):
        train = [e for e, s in examples if s != "test"]
        test = [e for e, s in examples if s == "test"]
    else:
        items = [e for e, _ in examples]
        random.Random(seed).shuffle(items)
        n_test = max(1, int(len(items) * test_fraction))
        test, train = items[:n_test], items[n_test:]
    labels = sorted({e.label for e, _ in examples})
    closed = len(labels) <= 20 and all(len(w.split()) == 1 for w in labels)
    return Task(
        name=path.stem,
        train=train,
        test=test,
        instruction=f"Label each input with one of: {', '.join(labels)}." if closed else "Answer each input.",
        label_words=labels if closed else None,
        answer_type="label" if closed else "text",
        description=f"custom task from {path.name}",
    )
