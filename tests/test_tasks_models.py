import json
import subprocess
import sys
import types

import pytest

from iclft import UserError
from iclft.models.families import FAMILIES, family_for, get_module
from iclft.tasks import get_task
from iclft.tasks.sentiment import load_tweets


def test_sentiment_split_is_fixed_balanced_and_disjoint():
    train, test = load_tweets()
    assert len(test) == 1000 and sum(e.label == "positive" for e in test) == 500
    assert {e.label for e in train} == {"positive", "negative"}  # neutral dropped by default
    assert not {e.input for e in train} & {e.input for e in test}
    load_tweets.cache_clear()
    train2, test2 = load_tweets()
    assert [e.input for e in test2[:50]] == [e.input for e in test[:50]]  # seeded, not random per process
    task = get_task("sentiment")
    assert task.label_words == ["negative", "positive"] and "{input}" in task.template


def test_custom_jsonl_and_csv(tmp_path):
    rows = [{"input": f"text {i}", "label": "yes" if i % 3 else "no"} for i in range(30)]
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    t = get_task(str(p))
    assert len(t.train) + len(t.test) == 30 and t.label_words == ["no", "yes"]
    c = tmp_path / "t.csv"
    c.write_text("input,label,split\na b,x,train\nc d,y,train\ne f,x,test\n")
    t = get_task(str(c))
    assert [e.input for e in t.test] == ["e f"] and len(t.train) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no input field"}\n')
    with pytest.raises(UserError, match="lacks"):
        get_task(str(bad))


def test_hub_tasks_fail_with_one_clear_error_offline(monkeypatch):
    # a stand-in `datasets` that fails as it does offline (without the minute of retries a real one takes)
    def offline(*args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{args[0]}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    for name, shown in (("glue/sst2", "glue/sst2"), ("dai/mr", "rotten_tomatoes")):
        with pytest.raises(UserError, match=f"^cannot load dataset '{shown}' \\(offline\\? no cached copy\\?\\): "
                           "Couldn't reach .* on the Hub \\(LocalEntryNotFoundError\\)$"):
            get_task(name)


def test_every_listed_task_is_one_a_study_can_run():
    # WMT16 translation (scored with BLEU) was listed, yet every study needs a classification task
    with pytest.raises(UserError, match="unknown task"):
        get_task("wmt16")
    res = subprocess.run([sys.executable, "-m", "iclft", "tasks"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "wmt16" not in res.stdout and "BLEU" not in res.stdout


def test_get_task_has_no_seed_it_would_ignore():
    # the seed used to be accepted and silently ignored by the sentiment and hub tasks: splits are fixed
    with pytest.raises(TypeError):
        get_task("sentiment", seed=1)


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task"):
        get_task("nope")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "gpt2", "gpt_neox", "opt"])
def test_family_paths_resolve(kind, tiny_models):
    model = tiny_models[kind]
    fam = family_for(model.config)
    blocks = get_module(model, fam.blocks)
    assert len(blocks) == model.config.num_hidden_layers
    get_module(model, fam.final_norm)
    for path in (fam.attn, fam.o_proj, fam.mlp, fam.q, fam.k, fam.v, fam.qkv):
        if path:
            get_module(blocks[0], path)
    names = [n for n, _ in model.named_modules()]
    for target in fam.lora_targets:
        assert any(n.endswith(target) for n in names)


def test_unknown_family_is_an_error():
    class Cfg:
        model_type = "mamba"

    with pytest.raises(UserError, match="unsupported model family 'mamba'"):
        family_for(Cfg())
    assert {"llama", "gemma", "gpt2", "gpt_neox", "opt"} <= set(FAMILIES)


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "iclft", "tasks"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "sentiment" in res.stdout
    res = subprocess.run([sys.executable, "-m", "iclft", "run", "nope", "--out", "x"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().startswith("error: unknown study")
