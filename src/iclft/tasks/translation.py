"""WMT16 cs-en via `datasets` (online only); scored with BLEU (sacrebleu)."""

from __future__ import annotations

from iclft.tasks.base import Example, Task
from iclft.tasks.hub import load_hub_dataset


def wmt16_task(max_train: int = 20000) -> Task:
    ds = load_hub_dataset("wmt16", "cs-en")
    conv = lambda rows: [Example(r["translation"]["cs"], r["translation"]["en"]) for r in rows]  # noqa: E731
    return Task(
        name="wmt16",
        train=conv(ds["train"].select(range(min(max_train, len(ds["train"]))))),
        test=conv(ds["test"]),
        instruction="Translate each Czech sentence into English.",
        template="Czech: {input}\nEnglish:",
        answer_type="text",
    )
