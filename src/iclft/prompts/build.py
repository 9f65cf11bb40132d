from __future__ import annotations

import functools
from dataclasses import dataclass, field

from iclft import UserError
from iclft.tasks.base import Example, Task

ROLES = {"bos": 0, "instruction": 1, "demo": 2, "label": 3, "separator": 4, "query": 5}


@dataclass
class Prompt:
    ids: list[int]
    roles: list[int]  # one ROLES value per token
    demo_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each demonstration
    query_span: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, role: str) -> list[int]:
        r = ROLES[role]
        return [i for i, x in enumerate(self.roles) if x == r]


class PromptBuilder:
    """Tokenizes each segment on its own (cached) and concatenates ids.

    For closed label sets the label words' first tokens (as they follow a query, i.e. tokenized with the
    answer prefix) must differ: they are what a prediction is read from.
    """

    def __init__(self, tokenizer, task: Task, max_len: int | None = None):
        self.tok = tokenizer
        self.task = task
        self.max_len = max_len
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix = [bos] if bos is not None else []
        self.label_token_ids: list[int] | None = None
        if task.label_words:
            firsts = [self._enc(task.answer_prefix + w)[:1] for w in task.label_words]
            if any(not f for f in firsts):
                raise UserError(f"task {task.name!r}: a label word tokenizes to nothing")
            ids = [f[0] for f in firsts]
            if len(set(ids)) != len(ids):
                clash = [w for w, i in zip(task.label_words, ids, strict=True) if ids.count(i) > 1]
                raise UserError(
                    f"task {task.name!r}: label words {clash} share their first token; "
                    "predictions are read from it, so choose label words that start differently"
                )
            self.label_token_ids = ids

    @functools.lru_cache(maxsize=100_000)  # noqa: B019 - builders live as long as a study
    def _enc(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok(text, add_special_tokens=False)["input_ids"])

    def build(
        self,
        query: Example,
        demos: list[Example] = (),
        labels: list[str] | None = None,
        instruction: bool = True,
        demo_task: Task | None = None,
    ) -> Prompt:
        """demo_task renders the demonstrations with another task's template (the unrelated-task control)."""
        t = self.task
        d = demo_task or t
        ids, roles = list(self.prefix), [ROLES["bos"]] * len(self.prefix)

        def add(text: str, role: str):
            seg = self._enc(text)
            ids.extend(seg)
            roles.extend([ROLES[role]] * len(seg))

        if instruction and t.instruction:
            add(t.instruction, "instruction")
            add(t.separator, "separator")
        spans = []
        labels = labels if labels is not None else [d.label for d in demos]
        for demo, label in zip(demos, labels, strict=True):
            start = len(ids)
            add(d.query_text(demo), "demo")
            add(d.answer_prefix + label, "label")
            spans.append((start, len(ids)))
            add(t.separator, "separator")
        qstart = len(ids)
        add(t.query_text(query), "query")
        prompt = Prompt(ids, roles, spans, (qstart, len(ids)))
        if self.max_len is not None and len(prompt) > self.max_len:
            raise UserError(
                f"a prompt with {len(demos)} demonstrations has {len(prompt)} tokens, more than the model's "
                f"context window ({self.max_len}); use fewer demonstrations"
            )
        return prompt

    def training_ids(self, ex: Example, label: str | None = None, instruction: bool = True, demo_task=None):
        """(ids, answer_mask) of one templated demonstration for tuning: [instruction] + input + answer."""
        d = demo_task or self.task
        ids = list(self.prefix)
        if instruction and self.task.instruction:
            ids += list(self._enc(self.task.instruction)) + list(self._enc(self.task.separator))
        ids += list(self._enc(d.query_text(ex)))
        n = len(ids)
        ans = list(self._enc(d.answer_prefix + (ex.label if label is None else label)))
        return ids + ans, [0] * n + [1] * len(ans)
