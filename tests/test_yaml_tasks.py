"""Tasks as YAML (lm-evaluation-harness style): a user's task file names its data (a JSONL/CSV file or a hub id),
fields, label words, template, instruction, separator and splits; the built-in tasks are entries of the same form
(iclft/tasks/builtin.yaml) and their prompts are what they were when they were written in code. Every way a task
file can be wrong is one `error:` line and exit code 2."""

import json
import random
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from iclft import UserError
from iclft.cli import app
from iclft.prompts import PromptBuilder
from iclft.tasks import TASKS, builtin_config, get_task
from iclft.tasks.config import BUILTIN_FILE, TaskConfig, builtin_configs, read_config
from iclft.tasks.implicit import FAMILIES, label_words
from iclft.yamlfile import read_yaml

runner = CliRunner()


def _error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:] and "Traceback" not in result.output, lines
    return lines[-1]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _reviews(tmp_path, n=40):
    rows = [{"text": f"review number {i}", "stars": 5 if i % 2 else 1, "split": "test" if i % 5 == 0 else "train"}
            for i in range(n)]
    return _jsonl(tmp_path / "reviews.jsonl", rows)


def _task_yaml(path, text):
    path.write_text(text)
    return str(path)


REVIEWS = """description: Film reviews, one or five stars.
data: reviews.jsonl
input_field: text
label_field: stars
label_words: {1: bad, 5: good}
template: "Review: {input}\\nVerdict: {label}"
instruction: Is each review good or bad?
separator: "\\n---\\n"
"""


# ------------------------------------------------------------------ the built-in tasks are YAML, prompts unchanged

# What the built-in tasks' prompts were when they were written in code (sentiment.py, hub.py, dai.py, implicit.py).
OLD_PROMPTS = {
    "sentiment": ("Classify the sentiment of each tweet as positive or negative.", "Tweet: {input}\nSentiment:",
                  ["negative", "positive"]),
    "glue/sst2": ("Classify the sentiment of each review as positive or negative.", "Review: {input}\nSentiment:",
                  ["negative", "positive"]),
    "dai/sst2": ("", "Sentence: {input}\nLabel:", ["negative", "positive"]),
    "dai/sst5": ("", "Sentence: {input}\nLabel:", ["terrible", "bad", "neutral", "good", "great"]),
    "dai/mr": ("", "Review: {input}\nSentiment:", ["negative", "positive"]),
    "dai/subj": ("", "Input: {input}\nType:", ["objective", "subjective"]),
    "dai/agnews": ("Classify the news articles into the categories of World, Sports, Business, and Technology.",
                   "Article: {input}\nAnswer:", ["World", "Sports", "Business", "Technology"]),
    "dai/cb": ("", "{input}\nAnswer:", ["true", "false", "neither"]),
    "implicit/expression": ("Answer each arithmetic expression with a number.", "Q: {input}\nA:", None),
    "implicit/code": ("Answer each short program with a number computed from what it prints.", "Q: {input}\nA:",
                      None),
    "implicit/boolean": ("Answer each boolean expression with a truth value.", "Q: {input}\nA:", None),
    "implicit/relation": ("Answer whether the two named nodes are connected.", "Q: {input}\nA:", None),
    "implicit/algebra": ("Answer each question about the linear equations with a number.", "Q: {input}\nA:", None),
    "implicit/parity": ("Answer with the parity of the bit string.", "Q: {input}\nA:", None),
}
HUB = {"glue/sst2": (("glue", "sst2"), "validation"), "dai/sst2": (("glue", "sst2"), "validation"),
       "dai/sst5": (("SetFit/sst5",), "test"), "dai/mr": (("rotten_tomatoes",), "test"),
       "dai/subj": (("SetFit/subj",), "test"), "dai/agnews": (("ag_news",), "test"),
       "dai/cb": (("super_glue", "cb"), "validation")}


@pytest.fixture
def fake_hub(monkeypatch):
    """`datasets.load_dataset` stand-in: every split has every column the built-in hub tasks read."""
    calls = []

    def load(*args):
        calls.append(args)

        def split(name, n):
            return [{"sentence": f" {name} sentence {i} ", "text": f"{name} text {i}", "premise": f"P{i} ",
                     "hypothesis": f" H{i}", "label": i % 3 if args == ("super_glue", "cb") else i % 2}
                    for i in range(n)]
        return {"train": split("train", 12), "validation": split("validation", 4), "test": split("test", 6)}

    monkeypatch.setattr("iclft.tasks.hub.load_hub_dataset", load)
    return calls


def test_the_built_in_tasks_are_the_entries_of_builtin_yaml_in_order():
    data = read_yaml(BUILTIN_FILE)
    assert list(builtin_configs()) == list(data) == list(OLD_PROMPTS)
    assert all("name" not in entry for entry in data.values())  # the key is the name
    assert [e.shown for e in TASKS.values()][: len(data)] == list(data)
    assert {n.removeprefix("implicit/") for n in data if n.startswith("implicit/")} == set(FAMILIES)


@pytest.mark.parametrize("name", [n for n in OLD_PROMPTS if n not in HUB])
def test_offline_built_in_tasks_keep_their_prompts(name):
    instruction, template, words = OLD_PROMPTS[name]
    task = get_task(name)
    assert (task.name, task.instruction, task.template, task.answer_prefix, task.separator) == (
        name, instruction, template, " ", "\n\n")
    family = name.removeprefix("implicit/")
    assert task.label_words == (words if words is not None else label_words(family))
    assert task.answer_type == ("label" if task.label_words else "text")
    ex = task.train[0]
    assert task.demo_text(ex) == template.format(input=ex.input) + " " + ex.label


@pytest.mark.parametrize("name", list(HUB))
def test_hub_built_in_tasks_keep_their_prompts_and_data(name, fake_hub):
    instruction, template, words = OLD_PROMPTS[name]
    task = get_task(name)
    hub_args, test_split = HUB[name]
    assert fake_hub == [hub_args]
    assert (task.instruction, task.template, task.answer_prefix, task.separator, task.label_words) == (
        instruction, template, " ", "\n\n", words)
    assert len(task.train) == 12 and len(task.test) == {"validation": 4, "test": 6}[test_split]
    first = task.test[0]
    if name == "dai/cb":  # fields stripped, then rendered into the input as the paper's template does
        assert first.input == "P0\nQuestion: H0 True, False, or Neither?" and first.label == "true"
        assert [e.label for e in task.train[:3]] == ["true", "false", "neither"]
    else:
        column = "sentence" if hub_args == ("glue", "sst2") else "text"
        assert first.input == f"{test_split} {column} 0" and [e.label for e in task.test[:2]] == words[:2]


def test_relabelled_sentiment_keeps_the_prompt_and_maps_every_label():
    base, paired = get_task("sentiment"), get_task("sentiment/apple-tiger")
    assert (paired.instruction, paired.template, paired.label_words) == (base.instruction, base.template,
                                                                         ["apple", "tiger"])
    mapping = {"negative": "apple", "positive": "tiger"}
    assert [(e.input, mapping[e.label]) for e in base.test] == [(e.input, e.label) for e in paired.test]
    with pytest.raises(UserError, match="two different label words"):
        get_task("sentiment/apple-apple")


def test_unknown_names_under_a_group_list_the_group():
    with pytest.raises(UserError, match="unknown Dai et al. dataset 'nope'; choose one of sst2, sst5, mr, subj"):
        get_task("dai/nope")
    with pytest.raises(UserError, match="unknown implicit family 'nope'; choose one of expression, code"):
        get_task("implicit/nope")


# ------------------------------------------------------------------ a user's task file


def test_a_task_file_sets_data_fields_label_words_template_instruction_separator(tmp_path):
    _reviews(tmp_path)
    task = get_task(_task_yaml(tmp_path / "reviews.yaml", REVIEWS))
    assert task.name == "reviews" and task.description == "Film reviews, one or five stars."
    assert (task.instruction, task.template, task.answer_prefix, task.separator) == (
        "Is each review good or bad?", "Review: {input}\nVerdict:", " ", "\n---\n")
    assert task.label_words == ["bad", "good"]  # the mapping's order, not sorted
    # the file's `split` column: test rows are every fifth
    assert [e.input for e in task.test] == [f"review number {i}" for i in range(0, 40, 5)]
    assert len(task.train) == 32 and task.train[1] == task.train[1].__class__("review number 2", "bad")
    prompt = PromptBuilder(_Chars(), task).build(task.test[0], task.train[:1])
    assert _Chars().decode(prompt.ids) == ("Is each review good or bad?\n---\nReview: review number 1\nVerdict: good"
                                         "\n---\nReview: review number 0\nVerdict:")


class _Chars:
    """A tokenizer whose tokens are words with their leading space, and single whitespace characters: a prompt's
    ids spell its text exactly."""

    bos_token_id = None
    vocab: dict = {}

    def _ids(self, text):
        return [self.vocab.setdefault(t, len(self.vocab)) for t in re.findall(r" ?[^\s]+|\s", text)]

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [self._ids(t) for t in text] if isinstance(text, list) else self._ids(text)}

    @classmethod
    def decode(cls, ids):
        words = {i: t for t, i in cls.vocab.items()}
        return "".join(words[i] for i in ids)


def test_the_data_path_is_relative_to_the_task_file(tmp_path, monkeypatch):
    (tmp_path / "tasks").mkdir()
    _reviews(tmp_path / "tasks")
    path = _task_yaml(tmp_path / "tasks" / "reviews.yaml", REVIEWS)
    monkeypatch.chdir(tmp_path)
    assert len(get_task("tasks/reviews.yaml").test) == 8
    monkeypatch.chdir(tmp_path / "tasks")
    assert get_task(path).test == get_task("reviews.yaml").test


def test_a_data_file_alone_and_its_minimal_task_file_are_one_task(tmp_path):
    rows = [{"input": f"text {i}", "label": "yes" if i % 3 else "no"} for i in range(30)]
    _jsonl(tmp_path / "t.jsonl", rows)
    alone = get_task(str(tmp_path / "t.jsonl"))
    yaml_task = get_task(_task_yaml(tmp_path / "t.yaml", "data: t.jsonl\n"))
    assert (alone.train, alone.test, alone.label_words, alone.instruction, alone.template) == (
        yaml_task.train, yaml_task.test, yaml_task.label_words, yaml_task.instruction, yaml_task.template)
    # the seeded 20% test split: the same rows every time, and as the shuffle with seed 0 gives them
    items = [r["input"] for r in rows]
    random.Random(0).shuffle(items)
    assert [e.input for e in alone.test] == items[:6] and [e.input for e in alone.train] == items[6:]
    other = get_task(_task_yaml(tmp_path / "t2.yaml", "data: t.jsonl\nsplits: {seed: 1, test_fraction: 0.5}\n"))
    assert len(other.test) == 15 and other.test != alone.test
    assert alone.instruction == "Label each input with one of: no, yes." and alone.template == "Input: {input}\nOutput:"


def test_input_format_csv_named_splits_and_answer_prefix(tmp_path):
    (tmp_path / "nli.txt").write_text("premise,hypothesis,gold,split\nA cat sat.,An animal sat.,0,dev\n"
                                      "A dog ran.,Nothing moved.,1,dev\nIt rained.,It was wet.,0,fit\n"
                                      "He left.,He stayed.,1,fit\nShe sang.,Music.,0,other\n")
    text = ('data: nli.txt\nformat: csv\ninput_format: "{premise}\\nQuestion: {hypothesis}"\nlabel_field: gold\n'
            'label_words: {0: "yes", 1: "no"}\ntemplate: "{input}\\nAnswer:{label}"\ninstruction: ""\n'
            "splits: {train: fit, test: dev}\n")
    task = get_task(_task_yaml(tmp_path / "nli.yaml", text))
    assert task.template == "{input}\nAnswer:" and task.answer_prefix == "" and task.instruction == ""
    assert [(e.input, e.label) for e in task.test] == [("A cat sat.\nQuestion: An animal sat.", "yes"),
                                                       ("A dog ran.\nQuestion: Nothing moved.", "no")]
    assert [e.input.split("\n")[0] for e in task.train] == ["It rained.", "He left."]  # "other" is in neither


def test_a_hub_task_file_holds_out_a_seeded_share_of_train_when_no_test_split_is_named(tmp_path, fake_hub):
    path = _task_yaml(tmp_path / "hub.yaml", "data: {hub: rotten_tomatoes}\ninput_field: text\n"
                      "label_words: {0: negative, 1: positive}\nsplits: {test_fraction: 0.25}\n")
    task = get_task(path)
    assert fake_hub == [("rotten_tomatoes",)] and (len(task.train), len(task.test)) == (9, 3)
    assert {e.input for e in task.train + task.test} == {f"train text {i}" for i in range(12)}
    bad = _task_yaml(tmp_path / "bad.yaml", "data: {hub: rotten_tomatoes}\ninput_field: text\n"
                     "splits: {train: train, test: dev}\n")
    with pytest.raises(UserError, match="has no split 'dev'; it has train, validation, test"):
        get_task(bad)


def test_a_generator_task_file_shows_generated_items_with_its_own_prompt(tmp_path):
    path = _task_yaml(tmp_path / "parity.yaml", 'generator: implicit/parity\ntemplate: "Bits: {input}\\n=> {label}"\n'
                      "instruction: Parity?\nseparator: \"\\n\"\n")
    task, builtin = get_task(path), get_task("implicit/parity")
    assert task.train == builtin.train and task.label_words == builtin.label_words
    assert (task.template, task.instruction, task.separator) == ("Bits: {input}\n=>", "Parity?", "\n")
    relabel = _task_yaml(tmp_path / "tweets.yaml", "generator: tweets\nlabel_words: {negative: apple, positive: "
                         'tiger}\ntemplate: "Tweet: {input}\\nSentiment: {label}"\ninstruction: Classify the sentiment '
                         "of each tweet as positive or negative.\n")
    paired = get_task("sentiment/apple-tiger")
    assert (get_task(relabel).test, get_task(relabel).label_words) == (paired.test, paired.label_words)


def test_a_study_builds_its_prompts_from_the_task_file(tmp_path):
    from iclft.registry import STUDIES

    rows = [{"text": f"the film was {'good' if i % 2 else 'bad'} number {i}", "stars": 5 if i % 2 else 1}
            for i in range(120)]
    _jsonl(tmp_path / "reviews.jsonl", rows)
    path = _task_yaml(tmp_path / "reviews.yaml", REVIEWS)
    study = STUDIES["dual"]
    ctx = study.setup(study.spec(**{**study.presets["quick"], "task": path}))
    assert ctx.task.separator == "\n---\n" and ctx.task.label_words == ["bad", "good"]
    text = ctx.loaded.tokenizer.decode(ctx.builder.build(ctx.task.test[0], ctx.task.train[:1]).ids)
    squeezed = text.replace(" ", "")  # the built-in tokenizer lower-cases and decodes with spaces between tokens
    assert squeezed.startswith("<bos>iseachreviewgoodorbad?\n---\nreview:") and squeezed.endswith("\nverdict:")


def test_tasks_lists_the_built_in_entries_and_shows_one(tmp_path):
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    for name, config in builtin_configs().items():
        line = next(ln for ln in lines if ln.split()[0] == name)
        assert config.description in line and f"[{config.source()}]" in line
    assert "[hub ag_news, needs network]" in res.output and "[generator implicit/code, offline]" in res.output
    _reviews(tmp_path)
    res = runner.invoke(app, ["tasks", _task_yaml(tmp_path / "reviews.yaml", REVIEWS)])
    assert res.exit_code == 0, res.output
    shown = res.output.split("# ")[0]
    assert read_config_text(tmp_path, shown) == read_config(tmp_path / "reviews.yaml").model_copy(
        update={"name": "reviews"})
    assert "32 training and 8 test examples; answers: bad, good" in res.output
    assert res.output.rstrip().endswith("---\nReview: review number 0\nVerdict:")


def read_config_text(tmp_path, text):
    """What `iclft tasks FILE` shows, read back as a task file: it is one."""
    (tmp_path / "shown.yaml").write_text(text)
    return read_config(tmp_path / "shown.yaml")


def test_built_in_yaml_ships_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["iclft"]
    package = BUILTIN_FILE.parents[1]
    assert any(p for g in globs for p in package.glob(g) if p == BUILTIN_FILE)


# ------------------------------------------------------------------ every mistake is one error line, exit 2

BAD = [
    ("data: reviews.jsonl\ntemplate: [1, 2\n", "malformed YAML in"),
    ("data: reviews.jsonl\ndata: other.jsonl\n", "duplicate key 'data'"),
    ("- data: reviews.jsonl\n", "must hold a mapping of task fields, not list"),
    ("data: reviews.jsonl\ntemplat: x\n", "unknown task field 'templat'; known: name, description, data"),
    ("data: reviews.jsonl\nsplits: {tset: x}\n", "unknown task field 'splits.tset'; known: train, test"),
    ("data: {hub: x, revision: main}\n", "unknown task field 'data.revision'; known: hub, config"),
    ("data: missing.jsonl\n", "does not exist"),
    ("data: reviews.txt\n", "cannot tell its format from the suffix '.txt'"),
    ("data: reviews.jsonl\ninput_field: body\nlabel_field: stars\n", "row 1 lacks the input field 'body'; its "
     "fields: text, stars, split"),
    ("data: reviews.jsonl\ninput_field: text\n", "row 1 lacks the label field 'label'"),
    ("data: reviews.jsonl\ninput_field: text\nlabel_field: stars\nlabel_words: {1: bad}\n",
     "label '5' is not among label_words ('1')"),
    ("data: reviews.jsonl\ninput_field: text\nlabel_field: stars\nlabel_words: {yes: good}\n",
     "label value True is a YAML boolean; quote it"),
    ("data: reviews.jsonl\ntemplate: 'Review: {text}\\nVerdict: {label}'\n", "has no {input}"),
    ("data: reviews.jsonl\ntemplate: '{input} {label}.'\n", "must end with {label}"),
    ("data: reviews.jsonl\ntemplate: '{input} {x} {label}'\n", "it may hold only {input} and {label}"),
    ("data: reviews.jsonl\ntemplate: '{input {label}'\n", "template '{input {label}'"),
    ("description: no data\n", "needs `data` (a file or {hub: ID}) or a `generator`, exactly one"),
    ("data: reviews.jsonl\ngenerator: tweets\n", "exactly one of them"),
    ("generator: tweets\ninput_field: text\n", "a generator makes its own examples and splits; 'input_field'"),
    ("generator: poems\n", "unknown generator 'poems'; choose one of tweets, implicit/expression"),
    ("data: reviews.jsonl\nsplits: {test_fraction: 1.5}\n", "invalid task field 'splits.test_fraction'"),
    ("data: reviews.jsonl\ninput_field: text\ninput_format: '{text}'\n", "input_field or input_format, not both"),
]


@pytest.mark.parametrize("text,expect", BAD, ids=[b[1][:30] for b in BAD])
def test_a_bad_task_file_is_one_error_line(tmp_path, text, expect):
    _reviews(tmp_path)
    path = _task_yaml(tmp_path / "bad.yaml", text)
    line = _error_line(runner.invoke(app, ["tasks", path]))
    assert line.startswith("error: ") and expect in line, line
    assert "bad.yaml" in line or "task 'bad'" in line  # names the file


def test_a_bad_task_file_stops_a_run_before_it_starts(tmp_path):
    _reviews(tmp_path)
    path = _task_yaml(tmp_path / "bad.yaml", "data: reviews.jsonl\ntemplate: 'Review: {label}'\n")
    out = tmp_path / "run"
    line = _error_line(runner.invoke(app, ["run", "dual", "--quick", "--set", f"task={path}", "--out", str(out)]))
    assert "has no {input}" in line and not out.exists()


def test_a_hub_task_without_datasets_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    path = _task_yaml(tmp_path / "hub.yaml", "data: {hub: rotten_tomatoes}\ninput_field: text\n")
    assert "needs the `datasets` package: pip install 'iclft[hub]'" in _error_line(runner.invoke(app, ["tasks", path]))
    assert "needs the `datasets` package" in _error_line(runner.invoke(app, ["tasks", "dai/mr"]))


def test_a_hub_task_offline_is_one_error_line(tmp_path):
    pytest.importorskip("datasets")
    path = _task_yaml(tmp_path / "hub.yaml", "data: {hub: iclft-test/no-such-dataset}\ninput_field: text\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # no cached copy either
    res = subprocess.run([sys.executable, "-m", "iclft", "tasks", path], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 2 and res.stdout.startswith("name: hub\ndata:\n  hub: iclft-test/"), res.stdout  # config
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith(
        "error: cannot load dataset 'iclft-test/no-such-dataset' (offline? no cached copy?)"), res.stderr


def test_task_config_fields_have_help_text():
    assert all(f.description for f in TaskConfig.model_fields.values())
    assert builtin_config("sentiment").query_template == "Tweet: {input}\nSentiment:"
