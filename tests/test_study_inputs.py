"""Inputs every study refuses in one error line, before OUT is touched, and the same way in the three studies: k
beyond the context window (the error names the largest k that fits), a task with one label, a label word the
tokenizer does not know."""

import json
import random
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from iclft import UserError
from iclft.cli import app
from iclft.models.load import BUILTIN_DIR
from iclft.registry import STUDIES

WORDS = "good bad great awful fine terrible happy sad".split()
POSITIONS = 160


@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    """A random GPT-2 with the built-in tokenizer and 160 positions: a few demonstrations fill it."""
    d = tmp_path_factory.mktemp("gpt2_short")
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    tok.save_pretrained(d)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=POSITIONS,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    return str(d)


def _task_file(path, labels=("positive", "negative"), n=120):
    rng = random.Random(0)
    rows = [{"input": " ".join(rng.choice(WORDS) for _ in range(5)), "label": labels[i % len(labels)]}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def _dual(model, task, k):
    return STUDIES["dual"].spec(model=model, task=task, seeds=1, k=k, queries=8, val_size=8, lr_grid=[1e-2])


def _convergence(model, task, k):
    quick = STUDIES["convergence"].presets["quick"]
    return STUDIES["convergence"].spec(**{**quick, "model": model, "task": task, "control_task": None,
                                          "k_values": [1, k], "base_k": 1})


def _implicit(model, task, k):
    quick = STUDIES["implicit"].presets["quick"]
    return STUDIES["implicit"].spec(**{**quick, "model": model, "seeds": 2, "families": ["parity", "expression"],
                                       "k_values": [0, k]})


@pytest.mark.parametrize("study,make", [("dual", _dual), ("convergence", _convergence), ("implicit", _implicit)])
def test_k_beyond_the_context_is_refused_naming_the_largest_k_that_fits(tmp_path, short_model, study, make):
    # dual used to shrink k silently to what fit (k = 999 ran with 66 demonstrations)
    setup = STUDIES[study].setup
    task = _task_file(tmp_path / "t.jsonl")
    with pytest.raises(UserError, match=rf"^no prompt with 60 demonstrations fits the model's context window "
                                        rf"\({POSITIONS} tokens\), .*: at most \d+ demonstrations fit$") as err:
        setup(make(short_model, task, 60))
    most = int(re.search(r"at most (\d+)", str(err.value)).group(1))
    assert 2 <= most < 60
    ctx = setup(make(short_model, task, most))  # the k the error names runs
    if study != "implicit":  # implicit items are never skipped; the other studies skip the longest examples
        assert ctx.skipped["token_cap"] > 0
    with pytest.raises(UserError, match=f"at most {most} demonstrations fit"):
        setup(make(short_model, task, most + 1))


def test_dual_with_k_999_on_the_builtin_model_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "dual", "--quick", "--set", "k=999", "--out", str(out)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no prompt with 999 demonstrations" in errors[0] and "at most" in errors[0], res.output
    assert not out.exists()


@pytest.mark.parametrize("study", ["dual", "convergence"])
def test_a_task_file_with_one_label_is_refused(tmp_path, study):
    # it used to run, with an accuracy of 1.0 whatever the model did
    task = _task_file(tmp_path / "one.jsonl", labels=("positive",))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", study, "--quick", "--set", f"task={task}", "--out", str(out)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert errors == ["error: task 'one' has one label only ('positive'); a classification task needs at least two"]
    assert not out.exists()


def test_a_label_word_the_tokenizer_does_not_know_is_refused(tmp_path):
    task = _task_file(tmp_path / "unk.jsonl", labels=("positive", "zzqxa"))
    with pytest.raises(UserError, match=r"label word 'zzqxa' is not in the tokenizer's vocabulary \(it tokenizes to "
                                        r"<unk>\)"):
        STUDIES["dual"].setup(STUDIES["dual"].spec(**{**STUDIES["dual"].presets["quick"], "task": task}))


def test_a_task_file_edited_between_two_runs_is_not_resumed(tmp_path, short_model):
    """A resume must not mix shards computed on other examples: the task file and the data file it names are part
    of the run's identity, like the model weights."""
    from iclft.sweep import run

    data = Path(_task_file(tmp_path / "rows.jsonl"))
    task = tmp_path / "task.yaml"
    task.write_text("data: rows.jsonl\ntemplate: 'Text: {input}\\nLabel: {label}'\n")
    spec, out = _dual(short_model, str(task), 2), tmp_path / "run"
    run("dual", spec, out)
    ident = json.loads((out / "identity.json").read_text())
    assert set(ident["task_sha256"]) == {str(task), str(data)}
    for edited, text in ((data, data.read_text().replace("positive", "negative", 1)),
                         (task, task.read_text().replace("Label:", "Class:"))):
        original = edited.read_text()
        edited.write_text(text)
        with pytest.raises(UserError, match="task file contents"):
            run("dual", spec, out)
        edited.write_text(original)
    run("dual", spec, out)  # the same files again: the finished run resumes
