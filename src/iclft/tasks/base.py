"""Examples and tasks: what a study needs to know about a dataset, nothing more."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Example:
    input: str
    label: str  # gold answer: a label word for classification, the answer text otherwise
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Task:
    """A dataset plus how to show it to a causal LM.

    A demonstration is `template.format(input=...) + answer_prefix + label`; the query is the same
    without the label, so the model predicts the label right after the query's last token.
    """

    name: str
    train: list[Example]
    test: list[Example]
    instruction: str
    template: str = "Input: {input}\nOutput:"
    answer_prefix: str = " "
    separator: str = "\n\n"  # between demonstrations and before the query
    label_words: list[str] | None = None  # closed label set -> prediction by label scoring
    answer_type: Literal["label", "text"] = "label"
    description: str = ""

    def query_text(self, ex: Example) -> str:
        return self.template.format(input=ex.input)

    def demo_text(self, ex: Example, label: str | None = None) -> str:
        return self.query_text(ex) + self.answer_prefix + (ex.label if label is None else label)
