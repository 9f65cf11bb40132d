"""The shipped built-in model: loadable by plain transformers, small, long enough, and able."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BUILTIN = Path(__file__).resolve().parents[1] / "src" / "iclft" / "models" / "builtin"

needs_model = pytest.mark.skipif(
    not (BUILTIN / "model.safetensors").exists(), reason="built-in model not shipped"
)


@needs_model
def test_loads_with_plain_transformers_and_no_iclft():
    code = f"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(BUILTIN)!r})
model = AutoModelForCausalLM.from_pretrained({str(BUILTIN)!r})
assert type(model).__name__ == "LlamaForCausalLM", type(model)
ids = tok("Tweet: i love this\\nSentiment:", return_tensors="pt").input_ids
out = model(input_ids=ids).logits
assert out.shape[-1] == model.config.vocab_size
assert not any(m == "iclft" or m.startswith("iclft.") for m in sys.modules), "iclft was imported"
print("ok", str(next(model.parameters()).dtype))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok torch.float32" in res.stdout


@needs_model
def test_size_context_and_card():
    size = sum(f.stat().st_size for f in BUILTIN.rglob("*") if f.is_file())
    assert size <= 25 * 1024 * 1024, size
    cfg = json.loads((BUILTIN / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["max_position_embeddings"] >= 1024
    assert (BUILTIN / "model.safetensors").exists() and (BUILTIN / "tokenizer.json").exists()
    card = (BUILTIN / "card.md").read_text()
    for word in ("Recipe", "Data", "Size", "Abilities", "iclft pretrain"):
        assert word in card


@needs_model
def test_shipped_card_is_rendered_from_its_committed_artefacts():
    """card.md is exactly what `render_card` makes of the committed files: the table and every number said about
    it from abilities.json, the recipe from pretrain_meta.json, the hand-written history from card_history.md.
    After a change to the card's code or history, regenerate it: `python -m iclft.builtin.abilities --render`."""
    from iclft.builtin.abilities import format_table, render_card

    card = (BUILTIN / "card.md").read_text()
    assert card == render_card(BUILTIN)
    measured = json.loads((BUILTIN / "abilities.json").read_text())
    assert measured["command"] and format_table(measured["rows"]) in card
    assert "~90%" not in card and "~72%" not in card  # the old literal notes


@needs_model
def test_label_words_are_single_distinct_tokens_and_32_shots_fit():
    from transformers import AutoConfig, AutoTokenizer

    from iclft.builtin.abilities import _sentiment_queries, _SentimentScorers
    from iclft.builtin.corpus import DEFAULT_LABELS, HELDOUT_PAIRS, LABEL_POOL
    from iclft.models.load import load
    from iclft.tasks.implicit import FAMILIES, RULES, label_words

    tok = AutoTokenizer.from_pretrained(str(BUILTIN))
    words = list(LABEL_POOL) + list(DEFAULT_LABELS) + [w for p in HELDOUT_PAIRS for w in p]
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, w
    for fam in FAMILIES:
        for rule in RULES[fam]:
            lw = label_words(fam, rule)
            if lw:
                firsts = {tok(w, add_special_tokens=False).input_ids[0] for w in lw}
                assert len(firsts) == len(lw) and tok.unk_token_id not in firsts, (fam, rule)
    n_ctx = AutoConfig.from_pretrained(str(BUILTIN)).max_position_embeddings
    scorers = _SentimentScorers(load(str(BUILTIN)))
    lengths = [len(q.prompt) for q in _sentiment_queries(scorers, "default", 32, 20, seed=0)]
    assert max(lengths) <= n_ctx, max(lengths)


@needs_model
def test_quick_ability_table():
    from iclft.builtin.abilities import ability_table, format_table

    rows = ability_table(BUILTIN, quick=True, families=("boolean",), lora=False)
    text = format_table(rows)
    get = {(r["setting"], r["k"]): r["accuracy_mean"] for r in rows}
    assert all(r["n"] == 40 for r in rows if r["ability"] == "sentiment")
    # chance is 0.5; the shipped model measures 0.76 zero-shot and 0.84 16-shot on 300 queries
    assert get["default", 0] >= 0.62, text
    assert get["default", 16] >= 0.65, text
    # a new pairing of known label words carries no prior: zero-shot is near chance
    assert 0.25 <= get["new pairing", 0] <= 0.75, text
    names = {r["setting"] for r in rows}
    assert {"default", "new pairing", "flipped (vs true sentiment)"} <= names


def test_pretrain_resume_gives_identical_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    from iclft.builtin.pretrain import pretrain

    # two LR cycles and a mix switch inside the first, like the shipped recipe, a stage with its own batch shape
    # and generated formats only, and head supervision in the last stage; the kill points fall in each stage
    stages = [{"steps": 2, "mix": {"sentiment": 1, "repeat": 1}, "lr": 1e-3, "warmup_steps": 1},
              {"steps": 2, "mix": {"mapping": 1, "lexicon": 1}, "seq_len": 32, "batch_size": 3, "max_shots": 3,
               "p_standard": 0.0},
              {"steps": 2, "mix": {"lexicon": 1, "sentiment": 1}, "lr": 5e-4, "warmup_steps": 1, "p_flipped": 0.5,
               "aux": 0.5, "copy": 0.5, "label": 1.0}]
    tiny = dict(stages=stages, seq_len=48, batch_size=2, hidden_size=32, intermediate_size=64, num_layers=4,
                num_heads=2, max_vocab=600, max_shots=6, progress=False)
    a = pretrain(tmp_path / "a", seed=3, minutes=5, **tiny)
    b_dir = tmp_path / "b"
    pretrain(b_dir, seed=3, minutes=5, stop_after_steps=2, **tiny)  # "killed" after 2 steps
    assert (b_dir / "checkpoint.safetensors").exists() and not (b_dir / "final").exists()
    assert not list(b_dir.glob("*.pt"))  # no pickle written anywhere
    pretrain(b_dir, seed=3, minutes=5, stop_after_steps=3, **tiny)  # and again after 5
    b = pretrain(b_dir, seed=3, minutes=5, **tiny)  # resumed to the end
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    meta = json.loads((b / "pretrain_meta.json").read_text())
    assert meta["step"] == 6 and meta["complete"]
    assert meta["tokens"] == 2 * 2 * 48 + 2 * 3 * 32 + 2 * 2 * 48  # the stage's own batch shape
    # the card states each stage's batch shape and draws
    from iclft.builtin.abilities import write_card

    row = {"ability": "sentiment", "setting": "default", "k": 0, "accuracy_mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
           "n": 300, "bar": ">= 0.75", "passed": False}
    card = write_card(b, [row], eval_seconds=90.0).read_text()
    assert "2 x 48 tokens" in card and "3 x 32 tokens, up to 3 demonstrations" in card
    assert "100% of the classification episodes in generated formats" in card and "Bars met: 0 of 1." in card
    # every number said about the table is this table's: none of another measurement's (the shipped model's)
    assert "Missed: sentiment default, k=0: 0.500, bar >= 0.75." in card and "Evaluation took 1.5 minutes" in card
    assert "~" not in card.split("## Abilities")[1] and "0.897" not in card
    assert json.loads((b / "abilities.json").read_text())["rows"] == [row]


def test_lr_cycles_restart_at_stages_that_set_lr():
    from iclft.builtin.pretrain import PretrainConfig, lr_at

    cfg = PretrainConfig(min_lr_ratio=0.1, stages=[
        {"steps": 10, "mix": {"text": 1}, "lr": 1e-3, "warmup_steps": 2},
        {"steps": 10, "mix": {"repeat": 1}},
        {"steps": 5, "mix": {"text": 1}, "lr": 4e-4, "warmup_steps": 1}])
    assert cfg.steps == 25
    assert lr_at(cfg, 0) == pytest.approx(5e-4) and lr_at(cfg, 1) == pytest.approx(1e-3)
    # one cosine over the first two stages (18 steps after warm-up): halfway at step 2 + 9
    assert lr_at(cfg, 11) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 19) < lr_at(cfg, 10) < lr_at(cfg, 9)
    assert lr_at(cfg, 20) == pytest.approx(4e-4)  # the third stage starts a new cycle
    assert lr_at(cfg, 24) == pytest.approx(4e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 4))))


def test_lexicon_episodes_use_polar_words_of_the_train_split():
    from iclft.builtin.corpus import Corpus, build_tokenizer, polar_words

    polar = polar_words()
    assert len(polar["positive"]) >= 30 and len(polar["negative"]) >= 30
    assert not set(polar["positive"]) & set(polar["negative"])
    corpus = Corpus(build_tokenizer(), [{"steps": 1, "mix": {"lexicon": 1}, "p_default": 1.0, "p_flipped": 0.0}])
    import random

    for seed in range(5):
        piece = corpus.lexicon(random.Random(seed))
        toks = [corpus.tok.id_to_token(i) for i in piece.ids]
        n = 0
        for j, is_label in enumerate(piece.is_label):
            if not is_label:
                continue
            # the input words sit between "<word|tweet> :" and the "\n" before "<label|sentiment> :"
            end = j - 3
            start = max(i for i in range(end) if toks[i] == ":") + 1
            words = toks[start:end]
            assert 1 <= len(words) <= 3 and toks[end] == "\n"
            assert all(w in polar[toks[j]] for w in words), (words, toks[j])  # default words: label = polarity
            n += 1
        assert n >= 2


def test_head_attention_matches_the_model_and_induction_targets():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from iclft.builtin.supervision import attention_aux_loss, head_attention, induction_targets

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()
    got = {}
    attn = model.model.layers[1].self_attn
    attn.register_forward_pre_hook(
        lambda m, a, kw: got.update(h=kw["hidden_states"], pe=kw["position_embeddings"]), with_kwargs=True)
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=ids, output_attentions=True).attentions[1][:, 2]
        mine = head_attention(attn, got["h"], got["pe"], head=2)
    torch.testing.assert_close(mine, ref.float(), atol=1e-5, rtol=1e-4)

    # "a b c a b": the second a (t=3) -> the b after the first a (1); the second b (t=4) -> c (2)
    tgt = induction_targets(torch.tensor([[1, 2, 3, 1, 2]]))[0]
    assert tgt.nonzero().tolist() == [[3, 1], [4, 2]]
    # perfect heads have zero loss, uniform ones do not
    t = 5
    prev = torch.zeros(1, t, t)
    prev[0, 0, 0] = 1
    for i in range(1, t):
        prev[0, i, i - 1] = 1
    ind = torch.zeros(1, t, t)
    ind[0, 3, 1] = ind[0, 4, 2] = 1
    lp, li = attention_aux_loss(prev, ind, torch.tensor([[1, 2, 3, 1, 2]]))
    assert float(lp) < 1e-4 and float(li) < 1e-4
    uni = torch.ones(1, t, t).tril() / torch.arange(1, t + 1)[None, :, None]
    lp, li = attention_aux_loss(uni, uni, torch.tensor([[1, 2, 3, 1, 2]]))
    assert float(lp) > 0.5 and float(li) > 0.5


def test_copy_aux_loss_rewards_copying_the_attended_token():
    import torch

    from iclft.builtin.supervision import copy_aux_loss

    ids = torch.tensor([[5, 6, 7, 5, 6, 7]])  # positions 3, 4 predict 6, 7 by copying
    unembed = torch.eye(10)
    copying = torch.zeros(1, 6, 10)
    copying[0, 3, 6] = copying[0, 4, 7] = 20.0
    wrong = torch.zeros(1, 6, 10)
    wrong[0, 3, 1] = wrong[0, 4, 1] = 20.0
    assert float(copy_aux_loss(copying, unembed, ids)) < 1e-6
    assert float(copy_aux_loss(wrong, unembed, ids)) > 10
    # nothing repeats: no position qualifies, the loss is 0 (and still differentiable)
    assert float(copy_aux_loss(wrong, unembed, torch.tensor([[1, 2, 3, 4, 5, 6]]))) == 0.0


def test_label_targets_point_at_earlier_demonstrations_with_the_same_answer():
    import torch

    from iclft.builtin.supervision import label_targets, target_mass_loss

    B = 9  # <bos>
    # episode 1: "x A y B x A" (A, B answers), then a new episode "<bos> y A" whose A must not see episode 1
    ids = torch.tensor([[B, 10, 1, 11, 2, 10, 1, B, 11, 1]])
    is_label = torch.tensor([[0, 0, 1, 0, 1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    tgt = label_targets(ids, is_label, B)[0]
    # before the answer at 6 (position 5) -> the earlier answer "1" at 2; nothing else anywhere
    assert tgt.nonzero().tolist() == [[5, 2]]
    probs = torch.zeros(1, 10, 10)
    probs[0, 5, 2] = 1.0
    assert float(target_mass_loss(probs, tgt[None])) < 1e-4


def test_layers_and_no_side_effects_on_import():
    """Loading models needs neither tasks nor the recipe, and importing the recipe changes no environment."""
    code = """
import os, sys
env = dict(os.environ)
import iclft.models.load
assert not [m for m in sys.modules if m.startswith(("iclft.tasks", "iclft.builtin"))], "models imports tasks/builtin"
import iclft.builtin.abilities, iclft.builtin.pretrain
assert dict(os.environ) == env
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_held_out_formats_never_occur_in_the_pretraining_streams():
    """Issue 11: the ability table's held-out label words, template and separator are absent from pretraining:
    no label position of any episode kind holds an unseen label word, and the template's and separator's token
    sequences occur nowhere -- sampled from every stage of the shipped recipe, and from stages that draw label
    words from the whole vocabulary and generated formats (`labels: vocab`, `p_standard` < 1), which really use
    many label words and formats, so the held-out ones are held out of a varied stream."""
    from iclft.builtin.corpus import (
        LABEL_POOL,
        SEPARATOR,
        UNSEEN_PAIRS,
        UNSEEN_SEPARATOR,
        UNSEEN_TEMPLATE,
        Corpus,
        build_tokenizer,
    )
    from iclft.builtin.pretrain import STAGES

    tok = build_tokenizer()
    words = {w for p in UNSEEN_PAIRS for w in p}
    assert not words & set(LABEL_POOL)
    word_ids = {tok.token_to_id(w) for w in words}
    assert None not in word_ids and tok.token_to_id("<unk>") not in word_ids  # single known tokens
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    patterns = [enc(UNSEEN_TEMPLATE[0].split("{input}")[1]), enc(UNSEEN_SEPARATOR), enc(UNSEEN_TEMPLATE[1])]
    general = [dict(st, labels="vocab", p_standard=0.3, implicit_size="small") for st in STAGES]
    seen_labels = 0
    distinct: dict[str, set[int]] = {}
    for name, stages in (("shipped", [dict(s) for s in STAGES]), ("general", general)):
        corpus = Corpus(tok, stages, seq_len=512)
        distinct[name] = set()
        for stage in corpus.stages:
            ids, lab = corpus.batch(seed=0, step=stage.start, batch_size=24)
            for row, mask in zip(ids.tolist(), lab.tolist(), strict=True):
                labels = {t for t, m in zip(row, mask, strict=True) if m}
                distinct[name] |= labels
                seen_labels += sum(mask)
                assert not labels & word_ids, [tok.id_to_token(t) for t in labels & word_ids]
                text = "," + ",".join(map(str, row)) + ","
                for pat in patterns:
                    assert "," + ",".join(map(str, pat)) + "," not in text, tok.decode(pat)
    assert seen_labels > 1000  # the streams were really sampled
    # the pool: 48 words (+ defaults, digits, implicit answers); the vocabulary: far more
    assert len(distinct["general"]) > 100 + len(distinct["shipped"]), {k: len(v) for k, v in distinct.items()}
    corpus_words = set(corpus.label_vocab)
    assert not words & corpus_words and len(corpus_words) > 4000
    # every generated format differs from the held-out one, and some differ from the studies' separator
    import random

    from iclft.builtin.corpus import random_format

    rng = random.Random(0)
    formats = [random_format(rng) for _ in range(2000)]
    assert all("review" not in t.lower() and "verdict" not in t.lower() and i != UNSEEN_TEMPLATE[1]
               and s != UNSEEN_SEPARATOR for t, i, s in formats)
    assert len({t for t, _, _ in formats}) > 200 and {s for _, _, s in formats} - {SEPARATOR}


def test_small_implicit_size_draws_what_the_study_needs_and_the_study_uses_it(tmp_path):
    from iclft.studies.implicit_patterns import ImplicitSpec, _tasks
    from iclft.tasks.implicit import FAMILIES, RULES, SIZE_DEFAULTS, SIZE_SMALL, generate, implicit_task

    for fam in FAMILIES:
        for rule in RULES[fam]:  # the default run: N = 64 training items + 8 test items of each variant
            task = implicit_task(fam, seed=0, n_train=64, n_test=8, rule=rule, **SIZE_SMALL[fam])
            assert len({e.input for e in task.train + task.test}) == 72
            assert len(generate(fam, 20, seed=1, variant="misleading", rule=rule, **SIZE_SMALL[fam])) == 20
        assert all(SIZE_SMALL[fam][k] <= v for k, v in SIZE_DEFAULTS[fam].items())
        assert SIZE_SMALL[fam] != SIZE_DEFAULTS[fam]
    # the study's items follow its `size`: parity's head is at most 5 bits small, 8 at the paper size
    heads = {}
    for size in ("paper", "small"):
        task, tests = _tasks(ImplicitSpec(size=size), "parity", seed=0, n_train=16)
        heads[size] = max(len(e.input.split(" | ")[0]) for e in task.train + tests["clean"] + tests["misleading"])
    assert heads["small"] <= 5 < heads["paper"]

