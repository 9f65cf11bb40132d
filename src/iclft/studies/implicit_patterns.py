"""Implicit-pattern study (Yin et al. 2024): where ICL beats fine-tuning, and how circuits shift.

Per family and seed, three kinds of unit (each writes its own shard, so a rerun resumes):
  icl        ZSL and ICL with k demonstrations -> accuracy on clean and misleading test items
  ft_<m>     fine-tune a copy of the model (m = full | lora) on N clean training items, for every N;
             loss and accuracy every few steps; final accuracy on the clean and misleading test items
  circuits   clean <-> misleading minimal pairs; exhaustive and attribution patching of every attention
             head and MLP for the base model (ZSL), the base model with k demonstrations (ICL) and the
             fine-tuned model (FT); circuit shift of ICL and FT from the base model
Accuracy is exact match of the normalised answer: label scoring (first-token argmax over the label words)
for closed answer sets, greedy decoding up to the separator for numbers. Every family uses its held-out
rule (`DEFAULT_RULE`), so zero-shot is a real baseline.

Summary, beyond accuracies and circuits (all from the records above, which it never adds to): `robustness`, per FT
method, the accuracy drop clean − misleading of FT (largest N) minus ICL's (largest k), paired by seed on the mean over
families; `changed_vs_zsl`, the share of eval items whose correctness differs from zero-shot's; `tuning` (per FT
method) and `icl_check`, whether the setting changed under 2% of the items (a caveat on the claims resting on it)
and also kept zero-shot's accuracy (those claims are not testable); `floor`, whether the model is at floor or
ceiling on the task (every claim not testable); `warnings`, each of these that fired; `chance`, the uniform-guess
accuracy per family; `sesoi`, the spec's smallest effects of interest.

Cost choices. The default preset (laptop-sized; the class defaults): 8 test items per variant, k in {0, 2, 8},
N in {16, 64}; fine-tuning on minibatches of 8 for 2 epochs over the N samples, at least 12 steps (N = 16: 12
steps; 64: 16); loss and accuracy every 4 steps on the first 4 test items per variant; 4 patching pairs per family
and seed. The paper preset (Yin et al.'s scale): 20 test items per variant, k up to 16, N up to 1024, at least 20
steps (N = 16, 64: 20 steps; 256: 64; 1024: 256), so every sample is seen and larger N also means more compute, as
in the paper; loss and accuracy 8 times per run on the first 10 test items per variant; 6 patching pairs. Both: 6
families x 5 seeds, ICL circuits with 4 demonstrations, FT circuits on full fine-tuning with the largest N.
"""

from __future__ import annotations

import logging
import random
import weakref
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, NonNegativeInt, PositiveInt, field_validator

from iclft import UserError
from iclft.capture.decode import Scorer
from iclft.circuits.pairs import build_pairs, pair_ids
from iclft.circuits.patching import activation_patching, attribution_patching, circuit_shift, make_pairs, top_k
from iclft.metrics.stats import (
    DIFF_PROPORTION,
    DISTANCE,
    MEAN_TAU,
    MIN_SEEDS,
    POSITIVE,
    REPRODUCED,
    TINY_CHANGED,
    UNIT,
    compare,
    correlation,
    declare_quantities,
    headline,
    interval,
    judge,
    preconditions,
    verdict,
)
from iclft.models.load import Loaded, load
from iclft.prompts import PromptBuilder
from iclft.prompts.build import too_many
from iclft.studies.common import RunSpec, summary_sesoi
from iclft.studies.protocol import Study, Unit
from iclft.tasks.implicit import (
    DEFAULT_RULE,
    FAMILIES,
    RULES,
    SIZES,
    generate,
    implicit_task,
    label_words,
    normalise_answer,
)
from iclft.tuning.finetune import FinetuneSpec, finetune

log = logging.getLogger(__name__)
VARIANTS = ("clean", "misleading")
CIRCUIT_SETTINGS = ("base", "icl", "ft")
QUANTITIES = declare_quantities({  # each metric's interval rule (changed_*, accuracy: shared, iclft.metrics.stats)
    "shift_cosine": DISTANCE, "shift_jaccard": UNIT, "patching_spearman": MEAN_TAU, "speedup": POSITIVE,
    "acc_diff": DIFF_PROPORTION, "loss": POSITIVE,
})


# The method of each fine-tuning spec is fixed by the field that holds it: `ft_full_*` results must be full
# fine-tuning whatever a spec file or --set says (`full.method=lora` is an input error, not a second LoRA).
class FullFinetuneSpec(FinetuneSpec):
    method: Literal["full"] = Field("full", description="always full: the `full` spec of the study")


class LoraFinetuneSpec(FinetuneSpec):
    method: Literal["lora"] = Field("lora", description="always lora: the `lora` spec of the study")


class ImplicitSpec(RunSpec):
    seeds: int = Field(5, ge=1, description="number of seeds (task draws, demonstrations, FT data order)")
    families: list[Literal[FAMILIES]] = Field(list(FAMILIES), min_length=1, description="implicit-pattern families")
    rules: dict[str, str] = Field({}, description="family -> rule; default: the held-out rule (DEFAULT_RULE)")
    size: Literal["auto", "paper", "small"] = Field(
        "auto", description="item sizes: paper (SIZE_DEFAULTS), small (SIZE_SMALL: operands in [-3, 3], one "
                            "operation, three edges, nine bits), auto: small on the built-in model, paper otherwise")
    n_eval: int = Field(8, ge=1, description="test items per variant (clean / misleading) per seed")
    k_values: list[NonNegativeInt] = Field([0, 2, 8], min_length=1,
                                           description="ICL numbers of demonstrations")
    ft_sizes: list[PositiveInt] = Field([16, 64], min_length=1,
                                        description="FT numbers of training samples N (paper: to 1024)")
    ft_methods: list[Literal["full", "lora"]] = Field(["full", "lora"], description="fine-tuning methods")
    full: FullFinetuneSpec = Field(default_factory=lambda: FullFinetuneSpec(lr=3e-4, steps=12, epochs=2, eval_every=4),
                                   description="full fine-tuning")
    lora: LoraFinetuneSpec = Field(default_factory=lambda: LoraFinetuneSpec(lr=3e-3, steps=12, epochs=2, eval_every=4),
                                   description="LoRA fine-tuning")
    curve_eval: int = Field(4, ge=1, description="test items per variant scored during fine-tuning")
    instruction: bool = Field(True, description="prepend the task instruction to every prompt")
    max_new_tokens: int = Field(6, ge=1, description="greedy decoding budget for numeric answers")
    circuit_pairs: int = Field(4, ge=0, description="clean/misleading pairs per family and seed (0: no circuits)")
    circuit_k: int = Field(4, ge=1, description="demonstrations in the ICL circuit setting")
    circuit_ft: Literal["full", "lora"] = Field("full", description="fine-tuning method of the FT circuit setting")
    circuit_n: int | None = Field(None, description="N of the FT circuit setting (default: the largest N)")
    circuit_method: Literal["exhaustive", "attribution"] = Field("exhaustive", description="effects used for circuits")
    top_k: int = Field(8, ge=1, description="circuit size K (top-K components by |effect|)")

    @field_validator("full", "lora", mode="before")
    @classmethod
    def _by_fields(cls, value):
        """A plain FinetuneSpec (from Python) is checked field by field, its method included."""
        return value.model_dump() if isinstance(value, FinetuneSpec) else value


# Yin et al.'s scale: k up to 16, N up to 1024, every family; 20 FT steps at least, 8 curve points per run.
# the papers' scale includes the paper's item size (the small size cannot supply N = 1024 distinct boolean items)
PAPER = dict(preset="paper", seeds=5, size="paper", families=list(FAMILIES), n_eval=20, k_values=[0, 1, 2, 4, 8, 16],
             ft_sizes=[16, 64, 256, 1024], circuit_pairs=6, curve_eval=10,
             full=FullFinetuneSpec(lr=3e-4, steps=20, epochs=2), lora=LoraFinetuneSpec(lr=3e-3, steps=20, epochs=2))
QUICK = dict(
    preset="quick",
    seeds=2, families=["parity", "expression"], n_eval=8, k_values=[0, 2], ft_sizes=[16],
    full=FullFinetuneSpec(lr=3e-4, steps=4, batch_size=8, warmup_steps=1, eval_every=2),
    lora=LoraFinetuneSpec(lr=3e-3, steps=4, batch_size=8, warmup_steps=1, eval_every=2),
    curve_eval=4, circuit_pairs=3, circuit_k=2, top_k=4,
)


def _rule(spec: ImplicitSpec, family: str) -> str:
    return spec.rules.get(family, DEFAULT_RULE[family])


def size_name(spec: ImplicitSpec) -> str:
    """The item size the run uses. `auto`: small on the built-in model, the paper's on any other. The built-in model
    saw implicit items at the paper's size in pretraining (its recipe's default size) but cannot compute their
    answers there (expression and algebra ~1% in its card), so the paper's size would leave nothing to compare."""
    if spec.size != "auto":
        return spec.size
    return "small" if spec.model == "builtin" else "paper"


def _size(spec: ImplicitSpec, family: str) -> dict[str, int]:
    return SIZES[size_name(spec)][family]


def _ft_spec(spec: ImplicitSpec, method: str) -> FinetuneSpec:
    return spec.full if method == "full" else spec.lora


def check_spec(spec: ImplicitSpec) -> None:
    """What the field types cannot say."""
    for fam, rule in spec.rules.items():
        if fam not in FAMILIES or rule not in RULES[fam]:
            raise UserError(f"unknown rule {rule!r} for family {fam!r}")
    if spec.curve_eval > spec.n_eval:
        raise UserError("curve_eval must not exceed n_eval")


@dataclass(frozen=True)
class Context:
    loaded: Loaded
    n_train: int  # training items per task: enough for every k, N and the circuit setting


def setup(spec: ImplicitSpec) -> Context:
    check_spec(spec)  # every input check happens here, before OUT is touched
    loaded = load(spec.model, dtype=spec.dtype, device=spec.device,
                  attn_implementation=spec.attn_implementation, pad_token=spec.pad_token)
    n_train = max(max(spec.ft_sizes), max(spec.k_values) + 1, spec.circuit_k + 1)
    check_context(spec, loaded, n_train)
    return Context(loaded, n_train)


def check_context(spec: ImplicitSpec, loaded: Loaded, n_train: int) -> None:
    """Every prompt of the run fits the model's context, for every family and seed: ICL prompts with their decoded
    answer, circuit pairs with circuit_k demonstrations. Else one error naming the largest k that fits them all;
    items are never skipped (every seed scores n_eval of them)."""
    tightest: dict[str, tuple[int, int, str]] = {}  # check -> (largest k that fits, k asked for, where)
    for fam in spec.families:
        for seed in spec.seed_list():
            try:
                task, tests = _tasks(spec, fam, seed, n_train)
            except RuntimeError as exc:  # the generator ran out of distinct items
                raise UserError(f"{exc} (size {size_name(spec)}): ask for fewer items (ft_sizes, k_values, n_eval) "
                                "or --set size=paper") from None
            builder = PromptBuilder(loaded.tokenizer, task)
            items = tests["clean"] + tests["misleading"]
            # greedy decoding of an open answer adds up to this many tokens after the prompt (capture.decode.Scorer)
            longest = max(len(builder._enc(task.answer_prefix + e.label)) + 1 for e in task.train + items)
            answer = 0 if builder.label_token_ids is not None else max(spec.max_new_tokens, longest)
            kept = f", keeping {answer} tokens for the decoded answer" if answer else ""
            checks = [("icl", max(spec.k_values), items, answer, f"{fam} items of seed {seed}{kept}")]
            if spec.circuit_pairs:
                checks.append(("circuits", spec.circuit_k, _circuit_candidates(spec, fam, seed, task), 0,
                               f"{fam} circuit pairs of seed {seed} (circuit_k)"))
            for name, k, queries, room, where in checks:
                if not queries:  # no circuit candidate left: the circuits unit records none
                    continue
                builder.max_len = loaded.max_len - room
                most = builder.most_demos(queries, [(task.train, task)])
                if name not in tightest or most < tightest[name][0]:
                    tightest[name] = (most, k, where)
    for most, k, where in tightest.values():
        if most < k:
            raise UserError(too_many(k, most, loaded.max_len, f"with the longest {where}", "the longest query alone"))


def units(spec: ImplicitSpec, ctx: Context) -> list[Unit]:
    out = []
    for fam in spec.families:
        for s in spec.seed_list():
            group = f"{fam}__s{s}"  # circuits reuses the ft unit's model when run after it, in one process
            out.append(Unit(f"{fam}__s{s}__icl", {"family": fam, "seed": s, "part": "icl"}, group))
            out += [Unit(f"{fam}__s{s}__ft_{m}", {"family": fam, "seed": s, "part": f"ft_{m}"}, group)
                    for m in spec.ft_methods]
            if spec.circuit_pairs:
                out.append(Unit(f"{fam}__s{s}__circuits", {"family": fam, "seed": s, "part": "circuits"}, group))
    return out


def _study_unit(spec: ImplicitSpec, ctx: Context, unit: Unit) -> pd.DataFrame:
    p = unit.params
    return run_unit(spec, ctx.loaded, p["family"], p["seed"], p["part"], ctx.n_train)


def examples(spec: ImplicitSpec, ctx: Context) -> dict:
    """The first family's first seed, as each setting sees it (for the report)."""
    loaded, n_train, fam, seed = ctx.loaded, ctx.n_train, spec.families[0], spec.seed_offset
    task, tests = _tasks(spec, fam, seed, n_train)
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    k = max(spec.k_values)
    rng = random.Random(f"iclft/implicit/icl/{fam}/{seed}/clean")  # as in the icl unit: one draw per item
    demos = [rng.sample(task.train, k) for _ in range(2)]
    return {
        f"{fam}: ZSL / FT models, clean then misleading item": [
            builder.build(tests[v][0], [], instruction=spec.instruction).ids for v in VARIANTS],
        f"{fam}: ICL, k = {k}": [builder.build(q, d, instruction=spec.instruction).ids
                                 for q, d in zip(tests["clean"][:2], demos, strict=False)],
        f"{fam}: FT training examples": [ids for ids, _ in _training_examples(builder, _train_order(task, seed)[:2],
                                                                            spec.instruction)],
    }


# ------------------------------------------------------------------------------------ units


def _tasks(spec: ImplicitSpec, family: str, seed: int, n_train: int):
    rule = _rule(spec, family)
    size = _size(spec, family)
    clean = implicit_task(family, seed=seed, n_train=n_train, n_test=spec.n_eval, test_variant="clean", rule=rule,
                          **size)
    mis = implicit_task(family, seed=seed, n_train=0, n_test=spec.n_eval, test_variant="misleading", rule=rule,
                        **size)
    return clean, {"clean": clean.test, "misleading": mis.test}


def run_unit(spec: ImplicitSpec, loaded, family: str, seed: int, part: str, n_train: int) -> pd.DataFrame:
    task, tests = _tasks(spec, family, seed, n_train)
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    pad = loaded.tokenizer.pad_token_id
    scorer = Scorer(builder, pad, spec.batch_size, spec.max_new_tokens, normalise_answer)
    base = {"family": family, "seed": seed}
    if part == "icl":
        return _icl_unit(spec, loaded, task, tests, builder, scorer, base)
    if part.startswith("ft_"):
        return _ft_unit(spec, loaded, part[3:], task, tests, builder, scorer, base)
    return _circuit_unit(spec, loaded, task, builder, base)


def _acc_rows(base, setting, method, k, n, variant, correct):
    return [{**base, "kind": "acc", "setting": setting, "method": method, "k": k, "n_train": n,
             "variant": variant, "item": i, "correct": bool(c)} for i, c in enumerate(correct)]


def _icl_unit(spec, loaded, task, tests, builder, scorer, base) -> pd.DataFrame:
    kmax = max(spec.k_values)
    rows = []
    for variant, items in tests.items():
        rng = random.Random(f"iclft/implicit/icl/{base['family']}/{base['seed']}/{variant}")
        demos = [rng.sample(task.train, kmax) for _ in items]  # nested: k demos are the first k of kmax
        ks = sorted(set(spec.k_values) | {0})
        prompts = [builder.build(q, d[:k], instruction=spec.instruction).ids for k in ks for q, d in
                   zip(items, demos, strict=True)]
        correct = scorer(loaded.model, prompts, [q.label for _ in ks for q in items])
        n = len(items)
        for j, k in enumerate(ks):
            c = correct[j * n:(j + 1) * n]
            if k == 0:
                rows += _acc_rows(base, "zsl", "zsl", 0, np.nan, variant, c)
            if k in spec.k_values:
                rows += _acc_rows(base, f"icl_k{k}", "icl", k, np.nan, variant, c)
    return pd.DataFrame(rows)


def _training_examples(builder, items, instruction: bool):
    stop = list(builder._enc(builder.task.separator))[:1]  # learn to end the answer, as demonstrations do
    out = []
    for ex in items:
        ids, mask = builder.training_ids(ex, instruction=instruction)
        out.append((ids + stop, mask + [1] * len(stop)))
    return out


def _train_order(task, seed: int) -> list:
    return random.Random(f"iclft/implicit/ft/{task.name}/{seed}").sample(task.train, len(task.train))


# The circuits unit fine-tunes exactly what the ft_<circuit_ft> unit of its family and seed fine-tunes at
# N = circuit_n (same examples, spec, seed and base model; that unit's `evaluate` only reads the model), so
# when both run in one process the ft unit hands its tuned model over instead of it being trained twice.
# One entry at most, keyed by every input of `finetune`; the circuits unit pops it.
_FT_HANDOVER: dict = {}


def _ft_key(loaded, examples, ft: FinetuneSpec, seed: int) -> tuple:
    return (id(loaded.model), loaded.family.name, loaded.tokenizer.pad_token_id, ft.model_dump_json(), seed,
            tuple((tuple(ids), tuple(mask)) for ids, mask in examples))


def _circuit_n(spec: ImplicitSpec) -> int:
    return spec.circuit_n or max(spec.ft_sizes)


def _ft_unit(spec, loaded, method, task, tests, builder, scorer, base) -> pd.DataFrame:
    ft = _ft_spec(spec, method)
    pool = _train_order(task, base["seed"])
    zsl = {v: [builder.build(q, [], instruction=spec.instruction).ids for q in items] for v, items in tests.items()}
    golds = {v: [q.label for q in items] for v, items in tests.items()}
    m = spec.curve_eval

    def evaluate(model) -> dict:
        return {f"acc_{v}": float(np.mean(scorer(model, zsl[v][:m], golds[v][:m]))) for v in VARIANTS}

    rows = []
    for n in spec.ft_sizes:
        examples = _training_examples(builder, pool[:n], spec.instruction)
        res = finetune(loaded.model, loaded.family, examples, ft, seed=base["seed"],
                       pad_id=loaded.tokenizer.pad_token_id, evaluate=evaluate)
        for h in res.history:
            rows.append({**base, "kind": "curve", "method": method, "n_train": n, "step": h["step"],
                         "loss": h["loss"], "lr": h["lr"], "acc_clean": h["acc_clean"],
                         "acc_misleading": h["acc_misleading"]})
        for v in VARIANTS:
            rows += _acc_rows(base, f"ft_{method}_N{n}", method, np.nan, n, v, scorer(res.model, zsl[v], golds[v]))
        if spec.circuit_pairs and method == spec.circuit_ft and n == _circuit_n(spec):
            _FT_HANDOVER.clear()
            _FT_HANDOVER[_ft_key(loaded, examples, ft, base["seed"])] = (weakref.ref(loaded.model), res.model)
        del res
    return pd.DataFrame(rows)


def _circuit_candidates(spec: ImplicitSpec, family: str, seed: int, task) -> list:
    """Misleading items the circuit pairs are built from (never a training input)."""
    train_inputs = {e.input for e in task.train}
    return [e for e in generate(family, 8 * spec.circuit_pairs, 100_003 + seed, "misleading", _rule(spec, family),
                                **_size(spec, family)) if e.input not in train_inputs]


def _circuit_unit(spec, loaded, task, builder, base) -> pd.DataFrame:
    family, seed = base["family"], base["seed"]
    rule = _rule(spec, family)
    train_inputs = {e.input for e in task.train}
    cands = _circuit_candidates(spec, family, seed, task)
    pairs = build_pairs(builder, family, rule, cands, spec.circuit_pairs, instruction=spec.instruction)
    pairs = [p for p in pairs if p["clean"].input not in train_inputs]
    if len(pairs) < 2:
        log.warning("%s seed %d: only %d clean/misleading pairs; no circuits", family, seed, len(pairs))
        return pd.DataFrame([{**base, "kind": "effect", "setting": "none", "n_pairs": len(pairs)}])
    rng = random.Random(f"iclft/implicit/circuits/{family}/{seed}")
    demos = [rng.sample(task.train, spec.circuit_k) for _ in pairs]
    pad = loaded.tokenizer.pad_token_id
    ft_method = spec.circuit_ft
    n_ft = _circuit_n(spec)
    examples = _training_examples(builder, _train_order(task, seed)[:n_ft], spec.instruction)
    ft_spec = _ft_spec(spec, ft_method)
    base_ref, ft_model = _FT_HANDOVER.pop(_ft_key(loaded, examples, ft_spec, seed), (None, None))
    if ft_model is None or base_ref() is not loaded.model:  # not handed over (e.g. a resumed run): train it here
        ft_model = finetune(loaded.model, loaded.family, examples, ft_spec, seed=seed, pad_id=pad).model
    settings = {
        "base": (loaded.model, [pair_ids(builder, p, [], spec.instruction) for p in pairs]),
        "icl": (loaded.model, [pair_ids(builder, p, d, spec.instruction) for p, d in zip(pairs, demos, strict=True)]),
        "ft": (ft_model, [pair_ids(builder, p, [], spec.instruction) for p in pairs]),
    }
    rows = []
    for name, (model, ids) in settings.items():
        batch = make_pairs(ids, pad)
        exh = activation_patching(model, loaded.family, batch, batch_size=spec.batch_size)
        att = attribution_patching(model, loaded.family, batch, batch_size=spec.batch_size)
        e_x, e_a = exh.effects(), att.effects()
        gap = float(np.mean(np.abs(exh.ld_clean - exh.ld_corrupt)))
        for i, c in enumerate(exh.components):
            rows.append({**base, "kind": "effect", "setting": name, "component": c.name, "layer": c.layer,
                         "head": c.head, "effect": float(e_x[i]), "effect_attr": float(e_a[i]),
                         "n_pairs": len(pairs), "ld_gap": gap, "seconds_exh": exh.seconds,
                         "seconds_attr": att.seconds})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ summary


def _acc_table(acc: pd.DataFrame) -> pd.DataFrame:
    """(family, setting, variant, seed) -> mean accuracy and its number of items, plus family 'all' (mean over
    families per seed, over all their items)."""
    per = acc.groupby(["family", "setting", "variant", "seed"])["correct"].agg(acc="mean", n="count").reset_index()
    allf = per.groupby(["setting", "variant", "seed"]).agg(acc=("acc", "mean"), n=("n", "sum")).reset_index()
    return pd.concat([per, allf.assign(family="all")], ignore_index=True)


def _acc_interval(sub: pd.DataFrame) -> dict:
    sub = sub.sort_values("seed")
    return interval(sub["acc"].to_numpy(float), "acc", trials=sub["n"].to_numpy(float))


def _settings_order(spec: ImplicitSpec) -> list[str]:
    return (["zsl"] + [f"icl_k{k}" for k in spec.k_values]
            + [f"ft_{m}_N{n}" for m in spec.ft_methods for n in spec.ft_sizes])


def summarise(records: pd.DataFrame, spec: ImplicitSpec, model_info: dict) -> dict:
    fams = list(spec.families) + ["all"]
    acc = _acc_table(records[records["kind"] == "acc"])
    settings = [s for s in _settings_order(spec) if s in set(acc["setting"])]
    summary: dict = {"study": "implicit", "model": model_info.get("model"),
                     "builtin_stand_in": bool(model_info.get("builtin_stand_in")),
                     "n_seeds": int(records["seed"].nunique()), "families": list(spec.families),
                     "rules": {f: _rule(spec, f) for f in spec.families}, "settings": settings,
                     "size": size_name(spec), "sizes": {f: _size(spec, f) for f in spec.families},
                     "n_eval": spec.n_eval}

    def cell(fam, setting, variant):
        return _acc_interval(acc[(acc["family"] == fam) & (acc["setting"] == setting) & (acc["variant"] == variant)])

    summary["accuracy"] = {f: {s: {v: cell(f, s, v) for v in VARIANTS} for s in settings} for f in fams}
    summary["icl_curve"] = {f: {"k": list(spec.k_values),
                                **{v: [cell(f, f"icl_k{k}", v) for k in spec.k_values] for v in VARIANTS}}
                            for f in fams}
    summary["ft_curve"] = {f: {m: {"n": list(spec.ft_sizes),
                                   **{v: [cell(f, f"ft_{m}_N{n}", v) for n in spec.ft_sizes] for v in VARIANTS}}
                               for m in spec.ft_methods} for f in fams}
    summary["chance"] = _chance(spec)
    summary["sesoi"] = spec.sesoi_record()
    summary["ft_steps"] = _ft_steps(records[records["kind"] == "curve"], spec)
    summary["icl_vs_ft"] = _icl_vs_ft(acc, spec)
    summary["robustness"] = _robustness(acc, spec)
    summary["changed_vs_zsl"] = _changed_vs_zsl(records[records["kind"] == "acc"], spec)
    summary["tuning"] = _tuning(summary, spec)
    summary["icl_check"] = _icl_check(summary, spec)
    summary["floor"] = _floor(summary, spec)
    summary["warnings"] = [w for w in [summary["floor"]["warning"], (summary["icl_check"] or {}).get("warning"),
                                       *(t["warning"] for t in summary["tuning"].values())] if w]
    effects = records[(records["kind"] == "effect") & records["setting"].isin(CIRCUIT_SETTINGS)] \
        if "setting" in records else records.iloc[:0]
    summary["circuit_shift"], summary["patching_agreement"], summary["circuits"] = _circuits(effects, spec)
    summary["headlines"] = headlines(summary)
    return summary


def _chance(spec: ImplicitSpec) -> dict:
    """Accuracy of a uniform guess over the closed answer set, per family (None for open-ended numbers); for
    'all', the mean of the families' chance levels when every family has one (None otherwise)."""
    out: dict = {}
    for fam in spec.families:
        words = label_words(fam, _rule(spec, fam))
        out[fam] = 1.0 / len(words) if words else None
    levels = [out[f] for f in spec.families]
    out["all"] = float(np.mean(levels)) if all(c is not None for c in levels) else None
    return out


def pooled_chance(chance: dict, families: list[str]) -> float:
    """The chance level of the mean over families (family "all": per seed, the unweighted mean of the families'
    accuracies): the mean of the families' chance levels, an open-ended number answer counting 0 (a guess almost
    never hits it). Equal to chance["all"] when every family has a closed answer set."""
    return float(np.mean([chance.get(f) or 0.0 for f in families]))


def _per_seed(allf: pd.DataFrame, setting: str, variant: str) -> pd.Series:
    return allf[(allf["setting"] == setting) & (allf["variant"] == variant)].set_index("seed")["acc"]


def _robustness(acc: pd.DataFrame, spec: ImplicitSpec) -> dict:
    """Pre-declared: does ICL (largest k) lose less accuracy than each FT method (largest N) from clean to
    misleading items? Per seed, on the mean over families: drop = acc_clean − acc_misleading; the effect is
    drop_FT − drop_ICL (> 0: ICL is the more robust), paired by seed."""
    allf = acc[acc["family"] == "all"]
    icl = f"icl_k{max(spec.k_values)}"
    out: dict = {}
    for m in spec.ft_methods:
        ft = f"ft_{m}_N{max(spec.ft_sizes)}"
        drops = {s: _per_seed(allf, s, "clean") - _per_seed(allf, s, "misleading") for s in (icl, ft)}
        seeds = sorted(set(drops[icl].dropna().index) & set(drops[ft].dropna().index))
        d_icl, d_ft = drops[icl][seeds].to_numpy(float), drops[ft][seeds].to_numpy(float)
        test = compare(d_ft, d_icl, "acc_diff")
        out[m] = {"icl": icl, "ft": ft, "seeds": [int(s) for s in seeds],
                  "drop_icl": interval(d_icl, "acc_diff"), "drop_ft": interval(d_ft, "acc_diff"),
                  "effect": test["diff"], "paired": test,
                  # unadjusted, as a single comparison; the headline's verdict is Holm-adjusted with the others
                  "icl_more_robust": verdict(test, None, +1, spec.sesoi("acc_diff")) == REPRODUCED}
    return out


def _changed_vs_zsl(acc_rows: pd.DataFrame, spec: ImplicitSpec) -> dict:
    """Share of eval items (every family and variant) whose correctness under a setting differs from zero-shot's
    (the k = 0 prompt, recorded as `zsl`; `icl_k0` is the same prompt), per seed, with a Wilson interval across
    seeds: ICL at the largest k and every FT method at the largest N. Correctness is all the records keep per
    item, so a changed answer that is wrong both times does not count."""
    key = ["family", "seed", "variant", "item"]
    zsl = acc_rows[acc_rows["setting"] == "zsl"].set_index(key)["correct"]
    targets = [(f"icl_k{max(spec.k_values)}", "changed_icl")]
    targets += [(f"ft_{m}_N{max(spec.ft_sizes)}", "changed_ft") for m in spec.ft_methods]
    out: dict = {}
    for setting, metric in targets:
        x = acc_rows[acc_rows["setting"] == setting].set_index(key)["correct"]
        both = pd.concat({"x": x, "zsl": zsl}, axis=1, join="inner")
        if not len(both):
            continue
        flips = (both["x"].astype(bool) != both["zsl"].astype(bool)).groupby(level="seed")
        out[setting] = interval(flips.mean().to_numpy(float), metric, trials=flips.count().to_numpy(float))
    return out


def _moved_check(summary: dict, setting: str, name: str) -> dict | None:
    """Did `setting` (ICL at the largest k, an FT method at the largest N) change the model's answers enough for
    a comparison with it to mean something? Two measures, as tuning_check's: the share of eval items whose
    correctness differs from zero-shot's is under TINY_CHANGED, and its accuracy equals zero-shot's within its
    interval on both variants (mean over families). The first small puts a caveat on the claims resting on the
    setting (`weak`); both make them not testable (`barely_moved`). Accuracy equal to zero-shot's alone is no
    sign of a setting that did nothing (it may change answers without learning the rule), so alone it counts for
    nothing. None when the records cannot tell (no zero-shot or no such setting)."""
    acc = summary["accuracy"]["all"]
    changed = summary["changed_vs_zsl"].get(setting)
    if changed is None or setting not in acc or "zsl" not in acc:
        return None
    c = changed["mean"]
    same = all(_within(acc["zsl"][v]["mean"], acc[setting][v]) for v in VARIANTS)
    accs = "; ".join(f"{v} {_ci(acc[setting][v])} vs zero-shot {acc['zsl'][v]['mean']:.2f}" for v in VARIANTS)
    small = []
    if c == c and c < TINY_CHANGED:
        small.append(f"it changed the correctness of {100 * c:.1f}% of zero-shot's item outcomes (under "
                     f"{100 * TINY_CHANGED:g}%)")
        if same:
            small.append(f"its accuracy equals zero-shot's within its interval ({accs})")
    weak, barely = bool(small), len(small) == 2
    reason = f"{name} barely changed the model's answers: {' and '.join(small)}" if small else None
    warning = None
    if weak:
        warning = (f"{reason}. iclft puts a caveat on the claims that rest on a setting that changes under "
                   f"{100 * TINY_CHANGED:g}% of the items, and calls them not testable when its accuracy also "
                   "equals zero-shot's. "
                   + ("Train it harder (more steps or a larger learning rate) before reading them."
                      if name.startswith("FT") else "More demonstrations (k) may move it."))
    return {"setting": setting, "changed": changed, "acc_equals_zsl": same, "small": small, "weak": weak,
            "barely_moved": barely, "warning": warning, "reason": reason}


def _tuning(summary: dict, spec: ImplicitSpec) -> dict:
    """The moved check (`_moved_check`) of each FT method at the largest N."""
    n = max(spec.ft_sizes)
    checks = {m: _moved_check(summary, f"ft_{m}_N{n}", f"FT {m} (ft_{m}_N{n})") for m in spec.ft_methods}
    return {m: t for m, t in checks.items() if t is not None}


def _icl_check(summary: dict, spec: ImplicitSpec) -> dict | None:
    """The moved check of ICL at the largest k (None when that k is 0: ICL is then zero-shot)."""
    k = max(spec.k_values)
    return _moved_check(summary, f"icl_k{k}", f"ICL (icl_k{k})") if k > 0 else None


def _ci(cell: dict) -> str:
    def f(v):
        return "nan" if v != v else f"{v:.2f}"

    return f"{f(cell['mean'])} [{f(cell['ci_low'])}, {f(cell['ci_high'])}]"


def _floor(summary: dict, spec: ImplicitSpec) -> dict:
    """Is the model at floor (or ceiling) on the task, so that no claim comparing its settings can be tested? At
    floor: with at least MIN_SEEDS seeds, the accuracy interval (mean over families) of zero-shot, of ICL at the
    largest k and of every FT method at the largest N contains the chance level of that mean (`pooled_chance`),
    on clean and on misleading items alike. At ceiling: every one of those intervals reaches 1. With fewer seeds
    every interval is wide and the claims read "too few seeds to tell" anyway, so neither is called."""
    acc = summary["accuracy"]["all"]
    chance = pooled_chance(summary["chance"], summary["families"])
    named = [("zsl", "zero-shot"), (f"icl_k{max(spec.k_values)}", f"ICL (icl_k{max(spec.k_values)})")]
    named += [(f"ft_{m}_N{max(spec.ft_sizes)}", f"FT {m} (ft_{m}_N{max(spec.ft_sizes)})") for m in spec.ft_methods]
    named = [(s, name) for s, name in named if s in acc]
    cells = [acc[s][v] for s, _ in named for v in VARIANTS]
    enough = summary["n_seeds"] >= MIN_SEEDS and len(named) >= 2
    at_floor = enough and all(_within(chance, c) for c in cells)
    at_ceiling = enough and not at_floor and all(c["ci_high"] >= 1 - 1e-9 for c in cells)
    shown = ", ".join(f"{name} {_ci(acc[s]['clean'])} / {_ci(acc[s]['misleading'])}" for s, name in named)
    level = (f"chance {chance:.2f} (the mean of the families' chance levels"
             + (", open-ended number answers counting 0)" if summary["chance"].get("all") is None else ")"))
    reason = None
    if at_floor:
        reason = (f"the model is at floor on the task: {shown} (clean / misleading, mean over families) all "
                  f"contain {level}")
    elif at_ceiling:
        reason = f"the model is at ceiling on the task: {shown} (clean / misleading, mean over families) all reach 1"
    warning = None
    if reason:
        where = "chance" if at_floor else "perfect accuracy"
        warning = (f"{reason[0].upper()}{reason[1:]}. No setting the claims compare can be told from {where}, so "
                   "every claim is not testable: read them on a model that does these tasks "
                   + ("above chance." if at_floor else "imperfectly (harder items)."))
    return {"chance": chance, "settings": [s for s, _ in named], "at_floor": at_floor, "at_ceiling": at_ceiling,
            "reason": reason, "warning": warning}


def _within(x: float, cell: dict) -> bool:
    """x lies in the interval of `cell` (or equals its mean when the interval is undefined)."""
    m, lo, hi = cell["mean"], cell["ci_low"], cell["ci_high"]
    if x != x or m != m:
        return False
    if lo == lo and hi == hi:
        return lo - 1e-12 <= x <= hi + 1e-12
    return abs(x - m) < 1e-12


def _preconditions(summary: dict, ft: list[str]) -> tuple[str | None, str | None]:
    """(untestable reason, caveat) of a claim comparing ICL with the FT settings `ft` (their tuning keys): the model
    at floor or ceiling fails it; ICL and those FT settings are the settings it rests on (`stats.preconditions`)."""
    checks = [summary.get("icl_check")] + [summary.get("tuning", {}).get(m) for m in ft]
    floor = (summary.get("floor") or {}).get("reason")
    return preconditions([t for t in checks if t], [floor] if floor else [])


def headlines(summary: dict) -> list[dict]:
    """Yin et al.'s claims with this run's values (Holm over the study's testable tests). SESOI: the run's
    difference SESOI (accuracy differences, circuit shift). Preconditions (`_preconditions`): every claim compares
    ICL with FT, so the model at floor or ceiling, or an ICL or FT setting that barely changed the model's
    answers, makes a claim not testable; the circuit-shift claim rests on the FT setting of the circuits."""
    specs = []
    for m, e in summary["icl_vs_ft"].items():
        for v in ("misleading", "clean"):
            specs.append((f"ICL ({e['icl']}) beats FT {m} ({e['ft']}) on {v} items (mean over families)",
                          f"accuracy ICL − FT {m}, {v}", e[v]["diff"], "ICL ≫ FT (Qwen 0.5B–7B)", e[v]["paired"],
                          [m]))
    sh = summary["circuit_shift"].get("all", {})
    if sh.get("paired"):
        circuit_ft = summary.get("circuits", {}).get("ft_setting")
        ft = [m for m, t in summary.get("tuning", {}).items() if t["setting"] == circuit_ft]
        specs.append(("ICL shifts the circuit from the base model more than FT does (1 − cos of patching effects)",
                      "circuit shift ICL − FT", sh["paired"]["diff"], "ICL's larger circuit shift explains why it wins",
                      sh["paired"], ft))
    # appended last, so the earlier headlines keep their places
    for m, r in summary.get("robustness", {}).items():
        specs.append((f"ICL ({r['icl']}) loses less accuracy than FT {m} ({r['ft']}) from clean to misleading items "
                      "(mean over families)", f"accuracy drop clean − misleading, FT {m} − ICL", r["effect"],
                      "ICL robust where FT follows the shortcut (misleading items)", r["paired"], [m]))
    heads = []
    for claim, metric, value, paper, test, ft in specs:
        untestable, caveat = _preconditions(summary, ft)
        heads.append(headline(claim, metric, value, paper, test, sesoi=summary_sesoi(summary, test["scale"]),
                              untestable=untestable, caveat=caveat))
    return judge(heads)


def _ft_steps(curve: pd.DataFrame, spec: ImplicitSpec) -> dict:
    out: dict = {}
    for m in spec.ft_methods:
        out[m] = {}
        for n in spec.ft_sizes:
            sub = curve[(curve["method"] == m) & (curve["n_train"] == n)]
            per_seed = sub.groupby(["step", "seed"])[["loss", "acc_clean", "acc_misleading"]].mean().reset_index()
            steps = sorted(per_seed["step"].unique().tolist())
            entry = {"step": [int(s) for s in steps]}
            for col, key in (("loss", "loss"), ("acc_clean", "clean"), ("acc_misleading", "misleading")):
                entry[key] = [interval(per_seed[per_seed["step"] == s].sort_values("seed")[col].to_numpy(float),
                                       "loss" if key == "loss" else "acc", trials=spec.curve_eval) for s in steps]
            out[m][str(n)] = entry
    return out


def _icl_vs_ft(acc: pd.DataFrame, spec: ImplicitSpec) -> dict:
    """Pre-declared comparison: ICL at the largest k vs each FT method at the largest N, paired by seed,
    on the mean over families."""
    allf = acc[acc["family"] == "all"]
    icl = f"icl_k{max(spec.k_values)}"
    out: dict = {}
    for m in spec.ft_methods:
        ft = f"ft_{m}_N{max(spec.ft_sizes)}"
        entry = {"icl": icl, "ft": ft}
        for v in VARIANTS:
            a = allf[(allf["setting"] == icl) & (allf["variant"] == v)].set_index("seed")["acc"]
            b = allf[(allf["setting"] == ft) & (allf["variant"] == v)].set_index("seed")["acc"]
            seeds = sorted(set(a.index) & set(b.index))
            test = compare(a[seeds].to_numpy(float), b[seeds].to_numpy(float), "acc")
            # unadjusted, as a single comparison; the headline's verdict is Holm-adjusted with the others
            entry[v] = {"diff": test["diff"], "paired": test,
                        "icl_beats_ft": verdict(test, None, +1, spec.sesoi("acc")) == REPRODUCED,
                        "ft_beats_icl": verdict(test, None, -1, spec.sesoi("acc")) == REPRODUCED}
        out[m] = entry
    return out


def _spearman_top(a: np.ndarray, b: np.ndarray, k: int) -> float:
    idx = sorted(top_k(a, k))
    return correlation(a[idx], b[idx])["spearman_rho"]


# Effects are fractions of the clean − corrupt LD difference: where no component's exhaustive effect reaches this
# one, patching moved nothing worth ranking, and a rank agreement there measures noise.
RANK_MIN_EFFECT = 0.05


def _circuits(effects: pd.DataFrame, spec: ImplicitSpec):
    col = "effect" if spec.circuit_method == "exhaustive" else "effect_attr"
    shift: dict = {}
    agree_rows = []
    per_unit: dict = {}
    for (fam, seed), sub in effects.groupby(["family", "seed"]):
        vec = {s: g.sort_values(["layer", "head"]) for s, g in sub.groupby("setting")}
        if not all(s in vec for s in CIRCUIT_SETTINGS):
            continue
        for s in CIRCUIT_SETTINGS:
            ex, at = vec[s]["effect"].to_numpy(float), vec[s]["effect_attr"].to_numpy(float)
            secs = float(vec[s]["seconds_exh"].iloc[0]) / max(float(vec[s]["seconds_attr"].iloc[0]), 1e-9)
            agree_rows.append({"family": fam, "seed": seed, "setting": s,
                               "spearman": correlation(ex, at)["spearman_rho"],
                               "spearman_abs": correlation(np.abs(ex), np.abs(at))["spearman_rho"],
                               "spearman_top": _spearman_top(ex, at, max(spec.top_k, 3)), "speedup": secs,
                               "rankable": bool(np.nanmax(np.abs(ex), initial=0.0) >= RANK_MIN_EFFECT)})
        e0 = vec["base"][col].to_numpy(float)
        for s in ("icl", "ft"):
            sh = circuit_shift(e0, vec[s][col].to_numpy(float), spec.top_k)
            per_unit.setdefault((fam, s), []).append({"seed": seed, **sh})
    for fam in spec.families:
        shift[fam] = {s: {m: interval([r[m] for r in per_unit.get((fam, s), [])], f"shift_{m}")
                          for m in ("cosine", "jaccard")} for s in ("icl", "ft")}
    # "all": per seed, the mean shift over families
    shift["all"] = {}
    by_seed = {}
    for s in ("icl", "ft"):
        rows = pd.DataFrame([{"family": f, **r} for f in spec.families for r in per_unit.get((f, s), [])])
        by_seed[s] = rows.groupby("seed")["cosine"].mean() if len(rows) else pd.Series(dtype=float)
        shift["all"][s] = {m: interval(rows.groupby("seed")[m].mean().to_numpy(float) if len(rows) else [],
                                       f"shift_{m}") for m in ("cosine", "jaccard")}
    seeds = sorted(set(by_seed["icl"].index) & set(by_seed["ft"].index))
    if seeds:  # paired by seed: does ICL move the circuit further than FT?
        shift["all"]["paired"] = compare(by_seed["icl"][seeds].to_numpy(float), by_seed["ft"][seeds].to_numpy(float),
                                         "shift_cosine")
    ag = pd.DataFrame(agree_rows)

    def agg(df):
        return {k: interval(df[k].to_numpy(float) if len(df) else [], "speedup" if k == "speedup" else
                            "patching_spearman") for k in ("spearman", "spearman_top", "spearman_abs", "speedup")}

    base = ag[ag["setting"] == "base"] if len(ag) else ag
    real = base[base["rankable"]] if len(base) else base
    agreement = {"setting": "base", **agg(base),
                 # the agreement where the effects are real: units whose largest effect reaches RANK_MIN_EFFECT
                 "min_effect": RANK_MIN_EFFECT, "n_units": len(base), "n_rankable": len(real),
                 "rankable": {k: v for k, v in agg(real).items() if k != "speedup"},
                 "by_setting": {s: agg(ag[ag["setting"] == s] if len(ag) else ag) for s in CIRCUIT_SETTINGS},
                 "per_family": {f: agg(ag[(ag["family"] == f) & (ag["setting"] == "base")] if len(ag) else ag)
                                for f in spec.families}}
    # Mean effect per (family, setting, component) over seeds, for the heatmaps.
    heat: dict = {}
    if len(effects):
        mean = effects.groupby(["family", "setting", "layer", "head"])[col].mean().reset_index()
        for (fam, s), g in mean.groupby(["family", "setting"]):
            heat.setdefault(fam, {})[s] = [{"layer": int(r["layer"]), "head": int(r["head"]), "effect": float(r[col])}
                                           for _, r in g.iterrows()]
    circuits = {"method": spec.circuit_method, "top_k": spec.top_k, "mean_effects": heat,
                "ft_setting": f"ft_{spec.circuit_ft}_N{_circuit_n(spec)}",
                "n_pairs": float(effects["n_pairs"].mean()) if len(effects) else 0.0}
    return shift, agreement, circuits


STUDY = Study(name="implicit", spec=ImplicitSpec, presets={"quick": QUICK, "paper": PAPER}, setup=setup,
              units=units, run_unit=_study_unit, summarise=summarise, examples=examples)
