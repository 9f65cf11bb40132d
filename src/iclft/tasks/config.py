"""A task as data, lm-evaluation-harness style: `TaskConfig` says where the examples come from (a JSONL/CSV file, a
`datasets` hub id, or a named generator in code), which fields hold the input and the label, the label words and
how a prompt shows an example (template, instruction, separator). User task files (`--set task=my_task.yaml`) and
the built-in tasks (builtin.yaml, one entry per task) are the same form; the built-in tasks' prompts come from it.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import string
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iclft import UserError
from iclft.tasks.base import Example, Task
from iclft.yamlfile import read_yaml

BUILTIN_FILE = Path(__file__).with_name("builtin.yaml")


def _word(value, what: str) -> str:
    # YAML reads `yes`/`no`/`true` as booleans and 0/1 as numbers; a label is text, so numbers become their text
    # (0 -> "0", as a JSONL or hub label 0 does) and a boolean, whose text would not be what the file says, is refused.
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is a YAML boolean; quote it (e.g. 'yes')")
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be non-empty text, not {value!r}")
    return value


class HubData(BaseModel):
    """A dataset on the Hugging Face hub, read through `datasets` (online, or from its cache)."""

    model_config = ConfigDict(extra="forbid")

    hub: str = Field(..., min_length=1, description="dataset id, e.g. rotten_tomatoes or glue")
    config: str | None = Field(None, description="dataset configuration (subset), e.g. sst2 for glue")


class Splits(BaseModel):
    """Which examples are for training (demonstrations, tuning) and which are test queries."""

    model_config = ConfigDict(extra="forbid")

    train: str | None = Field(None, description="the training split: a hub split name (default train), or a value "
                              "of a data file's `split` column (default: every row not in the test split)")
    test: str | None = Field(None, description="the test split: a hub split name, or a value of a data file's "
                             "`split` column (default: test, when the file has that column); when there is none, "
                             "test_fraction of the training rows, drawn with seed, are held out")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of the rows held out for testing when no test "
                                 "split is named")
    seed: int = Field(0, description="seed of that draw: the split is the same in every run")


class TaskConfig(BaseModel):
    """One task. `data` or `generator` gives the examples; the other fields say how to read and show them."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the task's name in records and reports (default: the file's name "
                             "without its suffix)")
    description: str = Field("", description="one line for `iclft tasks` and the report")
    data: str | HubData | None = Field(None, description="a JSONL or CSV file (a path relative to the task file), "
                                       "or {hub: ID, config: NAME} for a `datasets` hub dataset (needs network)")
    generator: str | None = Field(None, description="instead of data: a generator in iclft's code that makes the "
                                  "examples (tweets, implicit/<family>)")
    format: Literal["jsonl", "csv"] | None = Field(None, description="format of the data file (default: its suffix)")
    input_field: str = Field("input", description="the field holding the input text")
    input_format: str | None = Field(None, description="instead of input_field: the input text made from several "
                                     "fields, e.g. '{premise}\\nQuestion: {hypothesis}'")
    label_field: str = Field("label", description="the field holding the label")
    label_words: list[str] | dict[str, str] | None = Field(
        None, description="the label words, in order: a list when the labels are the words, or a mapping from label "
        "value to word (e.g. {0: negative, 1: positive}); every label must be one of them. Default: the labels found, "
        "sorted (a closed set when there are at most 20 one-word labels, else free-text answers)")
    template: str = Field("Input: {input}\nOutput: {label}", description="how one demonstration reads; it holds "
                          "{input} and ends with {label}. A query is the text before {label} without its trailing "
                          "whitespace (the model predicts the label after it)")
    instruction: str | None = Field(None, description="text before the demonstrations ('' for none; default: "
                                    "'Label each input with one of: ...' for a closed label set)")
    separator: str = Field("\n\n", description="between the instruction, the demonstrations and the query")
    splits: Splits = Field(default_factory=Splits, description="which examples are training and which test")

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_words_are_text(cls, value):
        if isinstance(value, dict):
            return {_word(k, "label value"): _word(v, "label word") for k, v in value.items()}
        if isinstance(value, list):
            return [_word(v, "label word") for v in value]
        return value

    @field_validator("template")
    @classmethod
    def _template_shape(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"template {value!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
        if "input" not in fields:
            raise ValueError(f"template {value!r} has no {{input}}")
        if fields.count("label") != 1 or not value.endswith("{label}"):
            raise ValueError(f"template {value!r} must end with {{label}} (once): the label is the demonstration's "
                             "last text")
        other = sorted(set(fields) - {"input", "label"})
        if other:
            raise ValueError(f"template {value!r} has {{{other[0]}}}; it may hold only {{input}} and {{label}} "
                             "(several data fields go into input_format)")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if (self.data is None) == (self.generator is None):
            raise ValueError("a task needs `data` (a file or {hub: ID}) or a `generator`, exactly one of them")
        if self.generator is not None:
            needless = sorted(self.model_fields_set & {"format", "input_field", "input_format", "label_field",
                                                       "splits"})
            if needless:
                raise ValueError(f"a generator makes its own examples and splits; {needless[0]!r} does not apply")
        if self.input_format is not None:
            if "input_field" in self.model_fields_set:
                raise ValueError("give input_field or input_format, not both")
            try:
                names = [f for _, f, _, _ in string.Formatter().parse(self.input_format) if f is not None]
            except ValueError as exc:
                raise ValueError(f"input_format {self.input_format!r}: {exc}") from None
            if not names or any(not n.isidentifier() for n in names):
                raise ValueError(f"input_format {self.input_format!r} must name data fields, e.g. {{premise}}")
        return self

    # ------------------------------------------------------------------ how a prompt shows an example

    @property
    def query_template(self) -> str:
        """Task.template: the demonstration template up to the label, without the whitespace before it."""
        return self.template[: -len("{label}")].rstrip()

    @property
    def answer_prefix(self) -> str:
        """What comes between a query and its label (Task.answer_prefix): the template's whitespace before {label}."""
        head = self.template[: -len("{label}")]
        return head[len(head.rstrip()):]

    def source(self) -> str:
        """Where the examples come from, in a few words (`iclft tasks`)."""
        if self.generator is not None:
            return f"generator {self.generator}, offline"
        if isinstance(self.data, HubData):
            return f"hub {self.data.hub}{'/' + self.data.config if self.data.config else ''}, needs network"
        return f"file {self.data}"

    # ------------------------------------------------------------------ examples -> Task

    def to_task(self, train: list[Example], test: list[Example], words: list[str] | None | Literal["infer"] = "infer",
                description: str | None = None) -> Task:
        """The Task of these examples. `label_words` of the config relabel them (every label must be one of its
        values); without them, `words` are the label words (a generator's), or "infer" reads them off the labels."""
        name = self.name or "task"
        if self.label_words is not None:
            mapping = self.label_words if isinstance(self.label_words, dict) else {w: w for w in self.label_words}
            for ex in (*train, *test):
                if ex.label not in mapping:
                    raise UserError(f"task {name!r}: label {ex.label!r} is not among label_words "
                                    f"({', '.join(map(repr, mapping))})")
            train = [Example(e.input, mapping[e.label], e.meta) for e in train]
            test = [Example(e.input, mapping[e.label], e.meta) for e in test]
            words = list(dict.fromkeys(mapping.values()))
        elif words == "infer":
            labels = sorted({e.label for e in (*train, *test)})
            words = labels if len(labels) <= 20 and all(len(w.split()) == 1 for w in labels) else None
        instruction = self.instruction
        if instruction is None:
            instruction = f"Label each input with one of: {', '.join(words)}." if words else "Answer each input."
        return Task(name=name, train=train, test=test, instruction=instruction, template=self.query_template,
                    answer_prefix=self.answer_prefix, separator=self.separator, label_words=words,
                    answer_type="label" if words else "text",
                    description=self.description if description is None else description)

    def load(self, base: Path = Path(".")) -> Task:
        """The task: examples from the generator, the hub or the data file (`base`: the task file's directory)."""
        if self.generator is not None:
            if self.generator not in generators():
                raise UserError(f"task {self.name!r}: unknown generator {self.generator!r}; choose one of "
                                f"{', '.join(generators())}")
            return generators()[self.generator](self)
        if isinstance(self.data, HubData):
            train, test = self._hub_examples()
        else:
            train, test = self._file_examples(base / self.data)
        return self.to_task(train, test)

    def _examples(self, rows, where: str) -> list[Example]:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.input_format) if f] if self.input_format else [
            self.input_field]
        keys = [(f, "input") for f in fields] + [(self.label_field, "label")]
        return [self._example(row, keys, where, i) for i, row in enumerate(rows)]

    def _example(self, row, keys: list[tuple[str, str]], where: str, i: int) -> Example:
        values = {}
        for key, role in keys:
            if not isinstance(row, dict) or key not in row:
                known = f"; its fields: {', '.join(map(str, row))}" if isinstance(row, dict) else ""
                raise UserError(f"{where}: row {i + 1} lacks the {role} field {key!r}{known}")
            value = row[key]
            if not isinstance(value, str | int | float) or isinstance(value, bool) or str(value).strip() == "":
                shown = "null" if value is None else repr(value)
                raise UserError(f"{where}: row {i + 1} has {role} {shown}; it must be non-empty text")
            values[key] = str(value).strip()
        text = self.input_format.format(**values) if self.input_format else values[self.input_field]
        return Example(text, values[self.label_field])

    def _file_examples(self, path: Path) -> tuple[list[Example], list[Example]]:
        where = f"data file {str(path)!r} of task {self.name!r}"
        fmt = self.format or {".jsonl": "jsonl", ".csv": "csv"}.get(path.suffix.lower())
        if fmt is None:
            raise UserError(f"{where}: cannot tell its format from the suffix {path.suffix!r}; set format: jsonl or "
                            "csv")
        if not path.is_file():
            raise UserError(f"{where} does not exist")
        try:
            with path.open(encoding="utf-8", newline="") as fh:
                rows = [json.loads(line) for line in fh if line.strip()] if fmt == "jsonl" else list(
                    csv.DictReader(fh))
        except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
            raise UserError(f"cannot read {where}: {exc}") from None
        if not rows:
            raise UserError(f"{where} has no rows")
        examples = self._examples(rows, where)
        split = [r.get("split") for r in rows]
        s = self.splits
        test_name = s.test if s.test is not None else ("test" if any(split) else None)
        if test_name is not None:
            test = [e for e, x in zip(examples, split, strict=True) if x == test_name]
            train = [e for e, x in zip(examples, split, strict=True)
                     if (x == s.train if s.train is not None else x != test_name)]
            return train, test
        pool = [e for e, x in zip(examples, split, strict=True) if s.train is None or x == s.train]
        return self._held_out(pool)

    def _held_out(self, pool: list[Example]) -> tuple[list[Example], list[Example]]:
        """(train, test): a seeded test_fraction of `pool` is the test split."""
        items = list(pool)
        random.Random(self.splits.seed).shuffle(items)
        n_test = max(1, int(len(items) * self.splits.test_fraction))
        return items[n_test:], items[:n_test]

    def _hub_examples(self) -> tuple[list[Example], list[Example]]:
        from iclft.tasks.hub import load_hub_dataset

        hub = self.data
        ds = load_hub_dataset(*(hub.hub, hub.config) if hub.config else (hub.hub,))
        shown = f"hub dataset {hub.hub + ('/' + hub.config if hub.config else '')!r}"

        def rows(split: str) -> list[Example]:
            if split not in ds:
                raise UserError(f"{shown} has no split {split!r}; it has {', '.join(ds)}")
            return self._examples(ds[split], f"{shown} split {split!r}")

        train = rows(self.splits.train or "train")
        return (train, rows(self.splits.test)) if self.splits.test is not None else self._held_out(train)


@functools.lru_cache(maxsize=1)
def generators() -> dict:
    """Generator name -> function(config) -> Task, for tasks whose examples are made in code."""
    from iclft.tasks import implicit, sentiment

    out = {"tweets": sentiment.sentiment_task}
    for family in implicit.FAMILIES:
        out[f"implicit/{family}"] = functools.partial(_implicit, family)
    return out


def _implicit(family: str, config: TaskConfig) -> Task:
    from iclft.tasks.implicit import implicit_task

    return implicit_task(family, config=config)


def parse_config(data, where: str, default_name: str | None = None) -> TaskConfig:
    """A TaskConfig from parsed YAML; every way it can be wrong is one UserError naming `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a mapping of task fields, not {type(data).__name__}")
    try:
        cfg = TaskConfig(**data)
    except ValidationError as exc:
        err = max(exc.errors(), key=lambda e: len(e["loc"]))  # a union's deepest error: the branch that fitted best
        loc = ".".join(str(x) for x in err["loc"] if str(x) not in ("str", "HubData", "list[str]", "dict[str,str]"))
        if err["type"] == "extra_forbidden":
            model = Splits if loc.startswith("splits.") else HubData if loc.startswith("data.") else TaskConfig
            raise UserError(f"{where}: unknown task field {loc!r}; known: {', '.join(model.model_fields)}") from None
        msg = err["msg"].removeprefix("Value error, ")
        got = f", not {err['input']!r}" if isinstance(err["input"], str | int | float) and loc else ""
        raise UserError(f"{where}: {f'invalid task field {loc!r}: ' if loc else ''}{msg}{got}") from None
    if cfg.name is None and default_name is not None:
        cfg = cfg.model_copy(update={"name": default_name})
    return cfg


def read_config(path: Path) -> TaskConfig:
    """A user's task file."""
    path = Path(path)
    return parse_config(read_yaml(path, "task file"), f"task file {str(path)!r}", default_name=path.stem)


@functools.lru_cache(maxsize=1)
def builtin_configs() -> dict[str, TaskConfig]:
    """The built-in tasks, name -> config, in the order of builtin.yaml."""
    data = read_yaml(BUILTIN_FILE, "built-in task file")
    return {name: parse_config(entry, f"built-in task {name!r}", default_name=name) for name, entry in data.items()}


def builtin_config(name: str) -> TaskConfig:
    return builtin_configs()[name]
