"""Inputs longer than the model's context (issue 14): examples that fit in no prompt of the run are skipped and
counted, every prompt built is checked, and the messages name the real cause."""

import json
import random
import re

import pandas as pd
import pytest
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from iclft import UserError
from iclft.models.load import BUILTIN_DIR
from iclft.prompts import PromptBuilder
from iclft.registry import STUDIES
from iclft.studies.convergence import conditions
from iclft.sweep import run_study
from iclft.tasks import get_task
from iclft.tasks.base import Example, Task

WORDS = "good bad great awful fine terrible happy sad".split()


def _task_file(path, n=120, long_at=5, long_words=5000, field=None, value=None):
    rng = random.Random(0)
    rows = [{"input": " ".join(rng.choice(WORDS) for _ in range(8)), "label": rng.choice(["positive", "negative"])}
            for _ in range(n)]
    rows[long_at]["input"] = " ".join(rng.choice(WORDS) for _ in range(long_words))
    if field is not None:
        rows[3][field] = value
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    """GPT-2 with 256 positions: a prompt past them is an IndexError inside the model, not a message."""
    d = tmp_path_factory.mktemp("gpt2_128")
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    tok.save_pretrained(d)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(d)
    return d


def test_dual_skips_a_training_example_that_fits_in_no_prompt(tmp_path, short_gpt2):
    task = _task_file(tmp_path / "long.jsonl", long_at=100)  # a training example (the test split is the first 20%)
    spec = STUDIES["dual"].spec(model=str(short_gpt2), task=str(task), seeds=1, k=4, queries=8, val_size=8,
                                lr_grid=[1e-2])
    out = run_study(STUDIES["dual"], spec, tmp_path / "run")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_too_long"]["train"] + manifest["skipped_too_long"]["test"] == 1
    assert manifest["skipped_too_long"]["token_cap"] < 256
    assert len(pd.read_parquet(out / "records.parquet")) > 0


def test_convergence_runs_without_the_long_example_it_need_not_use(tmp_path, short_gpt2):
    task = _task_file(tmp_path / "long.jsonl")
    study = STUDIES["convergence"]
    spec = study.spec(**{**study.presets["quick"], "model": str(short_gpt2), "task": str(task)})
    ctx = study.setup(spec)  # used to abort: "a prompt with 8 demonstrations has ... tokens"
    assert ctx.skipped["train"] + ctx.skipped["test"] == 1
    k_max = max(c["k"] for c in conditions(spec))
    longest_q = max(ctx.task.test, key=lambda e: len(e.input))
    longest_d = sorted(ctx.task.train, key=lambda e: len(e.input))[-k_max:]
    assert len(ctx.builder.build(longest_q, longest_d, instruction=True)) <= 256


def test_fit_skips_the_fewest_longest_examples_and_keeps_everything_that_fits():
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    train = [Example(" ".join(["good"] * n), "positive") for n in (3, 4, 5, 40, 6)]
    test = [Example("bad bad", "negative"), Example(" ".join(["bad"] * 30), "negative")]
    task = Task("t", train, test, instruction="Classify.", label_words=["positive", "negative"])
    roomy = PromptBuilder(tok, task, max_len=2048)
    cap, q, (d,) = roomy.fit(test, [(train, task)], 3)
    assert (q, d) == (test, train)  # nothing is skipped when the worst case fits
    worst = len(roomy.build(test[1], sorted(train, key=lambda e: len(e.input))[-3:]))
    tight = PromptBuilder(tok, task, max_len=worst - 1)
    cap, q, (d,) = tight.fit(test, [(train, task)], 3)
    assert d == [e for e in train if len(e.input.split()) != 40] and q == test  # only the longest demo goes
    kept_worst = tight.build(test[1], sorted(d, key=lambda e: len(e.input))[-3:])
    assert len(kept_worst) <= tight.max_len
    with pytest.raises(UserError, match="shortest query alone"):
        PromptBuilder(tok, task, max_len=4).fit(test, [(train, task)], 1)


def test_an_overlong_prompt_names_the_query_when_the_query_is_the_cause():
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    task = Task("t", [Example("good", "positive")], [Example(" ".join(["bad"] * 50), "negative")],
                instruction="", label_words=["positive", "negative"])
    with pytest.raises(UserError, match="the query alone has"):
        PromptBuilder(tok, task, max_len=20).build(task.test[0], task.train)
    short = Example("bad", "negative")
    with pytest.raises(UserError, match="1 demonstrations take"):
        PromptBuilder(tok, task, max_len=10).build(short, [Example(" ".join(["good"] * 10), "positive")])


@pytest.mark.parametrize("field,value,shown", [("input", None, "input null"), ("label", None, "label null"),
                                                ("input", "  ", "input '  '"), ("input", ["a"], "input ['a']")])
def test_null_or_empty_fields_of_a_task_file_are_an_error(tmp_path, field, value, shown):
    path = _task_file(tmp_path / "t.jsonl", long_words=3, field=field, value=value)
    with pytest.raises(UserError, match=re.escape(f"row 4 has {shown}")):
        get_task(str(path))


def _save(d, kind, tok, **config):
    from iclft.models.toy import tiny_model

    tok.save_pretrained(d)
    model = tiny_model(kind, len(tok))
    for key, value in {"pad_token_id": tok.pad_token_id, **config}.items():
        setattr(model.config, key, value)
    model.save_pretrained(d)
    return d


def test_a_sliding_window_bounds_the_prompts_of_the_dual_study(tmp_path):
    """Mistral with a window shorter than the prompts used to crash inside the cached-prefix forward pass."""
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    d = _save(tmp_path / "mistral", "mistral", tok, sliding_window=96)
    from iclft.models.load import load

    assert load(str(d)).max_len == 96
    spec = dict(model=str(d), seeds=1, queries=6, val_size=6, lr_grid=[1e-2])
    with pytest.raises(UserError, match=r"context window \(96 tokens\)") as err:  # the window, not the positions
        STUDIES["dual"].setup(STUDIES["dual"].spec(**spec, k=8))
    k = int(re.search(r"at most (\d+) demonstrations fit", str(err.value)).group(1))
    assert 1 <= k < 8
    out = run_study(STUDIES["dual"], STUDIES["dual"].spec(**spec, k=k), tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k_per_seed"]["0"] == k


def test_gemma2_runs_eager_and_unsupported_families_are_refused_before_weights_load(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, Phi3Config

    from iclft.models.load import load

    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    g = _save(tmp_path / "gemma2", "gemma2", tok)
    loaded = load(str(g), attn_implementation="sdpa")
    assert loaded.info["attn_implementation"] == "eager" and loaded.family.name == "gemma2"
    phi = tmp_path / "phi3"
    tok.save_pretrained(phi)
    Phi3Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(phi)

    def no_weights(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(UserError, match="unsupported model family 'phi3'"):
        load(str(phi))
