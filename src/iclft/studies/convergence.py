"""Convergence study (Duan et al. 2023): do ICL and instruction tuning move hidden states alike?

Pipeline, per unit of work (one condition x one seed):
  pick queries -> select demonstrations -> corrupt labels -> capture ZSL and ICL states
  -> train IT and SL LoRA adapters on the demonstrations -> capture their ZSL-prompt states
  -> convergence metrics per layer.
Conditions vary one factor at a time around a base (k = base_k, random selection, gold labels), plus the
unrelated-task control. Queries are the same for every condition of a seed, so conditions are paired.
"""

from __future__ import annotations

import dataclasses
import random
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, PositiveInt

from iclft import UserError
from iclft.capture import capture, site_names
from iclft.metrics.dual import predict_labels
from iclft.metrics.similarity import CONVERGENCE_KEYS, convergence_metrics, demo_query_similarity
from iclft.metrics.stats import (
    CORRELATION,
    COSINE,
    REAL,
    compare,
    correlation,
    declare_quantities,
    headline,
    interval,
    judge,
    layer_intervals,
    preconditions,
    tuning_check,
)
from iclft.models.load import Loaded, load
from iclft.prompts import Embedder, PromptBuilder, corrupt_labels, select_demos
from iclft.studies.common import RunSpec, summary_sesoi
from iclft.studies.protocol import Study, Unit
from iclft.tasks import Task, get_task
from iclft.tuning import LoraConfigSpec, StackedLora

METRICS = CONVERGENCE_KEYS
QUANTITIES = declare_quantities({  # each metric's interval rule (u_*: shared, iclft.metrics.stats)
    **{k: COSINE for k in ("s_anchor_icl", "s_anchor_it", "s_icl_it", "s_icl_sl", "d_icl_it", "d_icl_sl",
                           "demo_query_sim")},
    "pearson_r": CORRELATION, "spearman_rho": CORRELATION, "fisher_z": REAL,
})


class ConvergenceSpec(RunSpec):
    task: str = Field("sentiment", description="task whose queries and demonstrations are used")
    control_task: str | None = Field(
        "implicit/boolean", description="unrelated task whose demonstrations form the control (None: no control)"
    )
    seeds: int = Field(5, ge=1, description="number of seeds (trials are repeated per seed)")
    queries_per_seed: int = Field(2, ge=1, description="test queries per seed (paired across conditions)")
    k_values: list[PositiveInt] = Field([1, 2, 4, 8], description="numbers of demonstrations swept")
    base_k: int = Field(4, ge=1, description="k used while selection / labels / control vary")
    selections: list[Literal["random", "most_similar", "least_similar"]] = Field(
        ["random", "most_similar", "least_similar"], description="demo selection")
    label_modes: list[Literal["gold", "flipped", "random"]] = Field(
        ["gold", "flipped", "random"], description="label correctness")
    candidates: int = Field(256, ge=1, description="candidate pool size for similarity-based selection")
    embedder: str = Field("all-MiniLM-L6-v2", description="sentence-transformers name or path")
    lora: LoraConfigSpec = Field(default_factory=lambda: LoraConfigSpec(steps=10, lr=3e-3),
                                 description="IT / SL adapters (the paper preset: 30 steps at 1e-3)")


# Duan et al.'s scale: 30 seeds, k up to 8, 30 LoRA steps per adapter.
PAPER = dict(preset="paper", seeds=30, queries_per_seed=4, k_values=[1, 2, 4, 8], candidates=256,
             lora=LoraConfigSpec(steps=30, lr=1e-3))
QUICK = dict(preset="quick", seeds=2, queries_per_seed=2, k_values=[1, 4], base_k=4, candidates=32,
             lora=LoraConfigSpec(steps=8))


def conditions(spec: ConvergenceSpec) -> list[dict]:
    out = [dict(name=f"k{k}", k=k, selection="random", labels="gold", control=False) for k in spec.k_values]
    base = next((c for c in out if c["k"] == spec.base_k), None)
    if base is None:
        base = dict(name=f"k{spec.base_k}", k=spec.base_k, selection="random", labels="gold", control=False)
        out.append(base)
    base["base"] = True
    out += [dict(name=f"sel_{s}", k=spec.base_k, selection=s, labels="gold", control=False)
            for s in spec.selections if s != "random"]
    out += [dict(name=f"labels_{m}", k=spec.base_k, selection="random", labels=m, control=False)
            for m in spec.label_modes if m != "gold"]
    if spec.control_task:
        out.append(dict(name="control", k=spec.base_k, selection="random", labels="gold", control=True))
    return out


@dataclass(frozen=True)
class Context:
    loaded: Loaded
    task: Task
    control: Task | None
    builder: PromptBuilder
    embedder: Embedder
    skipped: dict  # examples too long for any prompt of the run (manifest)


def setup(spec: ConvergenceSpec) -> Context:
    # Every input check happens here, before OUT is touched, so a bad input leaves nothing behind.
    loaded = load(spec.model, dtype=spec.dtype, device=spec.device,
                  attn_implementation=spec.attn_implementation, pad_token=spec.pad_token)
    task = get_task(spec.task)
    if not task.label_words:
        raise UserError(f"the convergence study needs a classification task; {spec.task!r} has no label words")
    control = get_task(spec.control_task) if spec.control_task else None
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    task, control, skipped = fit_to_context(builder, task, control, max(c["k"] for c in conditions(spec)))
    return Context(loaded, task, control, builder, Embedder(spec.embedder), skipped)


def units(spec: ConvergenceSpec, ctx: Context) -> list[Unit]:
    return [Unit(f"{c['name']}__s{s}", {"cond": c, "seed": s}) for c in conditions(spec) for s in spec.seed_list()]


def run_unit(spec: ConvergenceSpec, ctx: Context, unit: Unit) -> pd.DataFrame:
    return _run_unit(spec, unit.params["cond"], unit.params["seed"], ctx.loaded, ctx.task, ctx.control, ctx.builder,
                     ctx.embedder, ctx.loaded.info["n_layers"])


def examples(spec: ConvergenceSpec, ctx: Context) -> dict[str, list[list[int]]]:
    """The first seed's first two base-condition trials, as each setting sees them (for the report)."""
    task, builder, seed = ctx.task, ctx.builder, spec.seed_offset
    queries = random.Random(seed).sample(task.test, spec.queries_per_seed)[:2]
    rng = random.Random(f"{seed}/random/{spec.base_k}/False")
    demos = [select_demos(q, task.train, spec.base_k, "random", rng, None, spec.candidates) for q in queries]
    return {
        "ZSL (also what the IT and SL models see)": [builder.build(q, [], instruction=True).ids for q in queries],
        f"ICL, k = {spec.base_k}": [builder.build(q, d, instruction=True).ids
                                    for q, d in zip(queries, demos, strict=True)],
        "IT training example (first demonstration)": [builder.training_ids(d[0], None, True)[0] for d in demos],
        "SL training example (first demonstration)": [builder.training_ids(d[0], None, False)[0] for d in demos],
    }


def fit_to_context(builder, task, control, k_max):
    """Skip the longest examples that would let some prompt of the run (k_max demonstrations, from the task or the
    control task) overflow the context; nothing is skipped when every prompt already fits."""
    pools = [(task.train, task)] + ([(control.train, control)] if control is not None else [])
    cap, test, kept = builder.fit(task.test, pools, k_max)
    skipped = {"token_cap": cap, "test": len(task.test) - len(test), "train": len(task.train) - len(kept[0])}
    if control is not None:
        skipped["control_train"] = len(control.train) - len(kept[1])
        control = dataclasses.replace(control, train=kept[1])
    return dataclasses.replace(task, train=kept[0], test=test), control, skipped


def _run_unit(spec, cond, seed, loaded, task, control, builder, embedder, n_layers) -> pd.DataFrame:
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id
    queries = random.Random(seed).sample(task.test, spec.queries_per_seed)  # same queries for every condition
    # Demonstrations depend only on what defines them, so the label conditions reuse the base condition's
    # demonstrations and differ from it in their labels alone (a paired comparison).
    demo_rng = random.Random(f"{seed}/{cond['selection']}/{cond['k']}/{cond['control']}")
    label_rng = random.Random(f"{seed}/{cond['name']}/labels")
    demo_task = control if cond["control"] else task
    trials = []
    for q in queries:
        demos = select_demos(q, demo_task.train, cond["k"], cond["selection"], demo_rng, embedder, spec.candidates)
        labels = corrupt_labels(demos, cond["labels"], demo_task.label_words, label_rng)
        trials.append((q, demos, labels))

    sites = site_names(n_layers)
    zsl = [builder.build(q, [], instruction=True).ids for q, _, _ in trials]
    icl = [builder.build(q, d, lab, instruction=True, demo_task=demo_task).ids for q, d, lab in trials]
    shown = capture(model, fam, icl, sites, pad_id=pad, batch_size=spec.batch_size, logits=True)
    h_icl, logits_icl = shown.stack("resid_post", n_layers), shown.logits

    # All IT and SL adapters of the unit train at once: adapter 2i is query i's IT (demonstrations with the
    # instruction), 2i+1 its SL (without); both start from query i's seed, as they always have. Equal to one
    # sequential PEFT training per trial up to float noise (tests/test_stacked_lora.py).
    tuning = [[builder.training_ids(d, lab, with_instruction, demo_task) for d, lab in zip(demos, labels, strict=True)]
              for _q, demos, labels in trials for with_instruction in (True, False)]
    seeds = [zlib.crc32(f"{seed}/{cond['name']}/{i}".encode()) for i in range(len(trials)) for _ in range(2)]
    with StackedLora(model, fam, spec.lora) as lora:
        lora.train(tuning, seeds, pad_id=pad)
        # One capture runs each query's ZSL prompt three times: without an adapter (the anchor), with its IT and
        # with its SL adapter. The three are adjacent in capture's (stable) length-sorted order and a batch holds
        # a multiple of three prompts, so they share a batch and its padding: h_IT - h_ZSL holds no
        # padding-layout noise (it matters in bf16).
        adapters = [a for i in range(len(zsl)) for a in (None, 2 * i, 2 * i + 1)]
        tuned = lora.capture([p for p in zsl for _ in range(3)], adapters, sites, pad_id=pad,
                             batch_size=3 * max(1, spec.batch_size // 3), logits=True)
    h = tuned.stack("resid_post", n_layers)
    h_zsl, h_it, h_sl = h[0::3], h[1::3], h[2::3]
    logits_zsl, logits_it, logits_sl = tuned.logits[0::3], tuned.logits[1::3], tuned.logits[2::3]

    gold_idx = np.array([task.label_words.index(q.label) for q, _, _ in trials])
    preds = {name: predict_labels(torch.stack(lg) if isinstance(lg, list) else lg, builder.label_token_ids)
             for name, lg in (("zsl", logits_zsl), ("icl", logits_icl), ("it", logits_it), ("sl", logits_sl))}
    correct = {name: p == gold_idx for name, p in preds.items()}
    rows = []
    for i, (q, demos, labels) in enumerate(trials):
        m = convergence_metrics(h_zsl[i], h_icl[i], h_it[i], h_sl[i])
        sim = demo_query_similarity(embedder([d.input for d in demos]), embedder([q.input])[0])
        label_acc = float(np.mean([lab == d.label for d, lab in zip(demos, labels, strict=True)]))
        for layer in range(n_layers):
            rows.append({
                "seed": seed, "condition": cond["name"], "base": bool(cond.get("base", False)),
                "k": cond["k"], "selection": cond["selection"], "labels": cond["labels"],
                "control": cond["control"], "query": i, "layer": layer, "demo_query_sim": sim,
                "label_correctness": label_acc,
                **{f"correct_{s}": bool(c[i]) for s, c in correct.items()},
                **{f"pred_{s}": int(p[i]) for s, p in preds.items()},
                **{key: float(m[key][layer]) for key in METRICS},
            })
    return pd.DataFrame(rows)


def _seed_layer_matrix(df: pd.DataFrame, metric: str) -> np.ndarray:
    """(n_seeds, n_layers): mean over queries within each seed."""
    return df.groupby(["seed", "layer"])[metric].mean().unstack("layer").to_numpy()


def _accuracy(trials: pd.DataFrame, setting: str) -> dict:
    g = trials.groupby("seed")[f"correct_{setting}"]
    return interval(g.mean().to_numpy(float), "acc", trials=g.count().to_numpy(float))


def _changed(trials: pd.DataFrame, setting: str) -> dict:
    """Share of queries whose predicted label under `setting` differs from zero-shot's."""
    flips = (trials[f"pred_{setting}"] != trials["pred_zsl"]).groupby(trials["seed"])
    return interval(flips.mean().to_numpy(float), f"changed_{setting}", trials=flips.count().to_numpy(float))


def summarise(records: pd.DataFrame, spec: ConvergenceSpec, model_info: dict) -> dict:
    conds = conditions(spec)
    last = int(records["layer"].max())
    base = records[records["base"]]
    summary: dict = {"study": "convergence", "model": model_info.get("model"),
                     "builtin_stand_in": bool(model_info.get("builtin_stand_in")),
                     "n_seeds": int(records["seed"].nunique()), "n_layers": last + 1,
                     "base_condition": next(c["name"] for c in conds if c.get("base")),
                     "n_labels": len(get_task(spec.task).label_words or [])}
    for metric in METRICS:
        mat = _seed_layer_matrix(base, metric)
        summary[metric] = {"per_layer": layer_intervals(mat, metric), "last_layer": interval(mat[:, -1], metric)}
    by_cond = {}
    for c in conds:
        sub = records[records["condition"] == c["name"]]
        entry = {"k": c["k"], "selection": c["selection"], "labels": c["labels"], "control": c["control"]}
        for metric in METRICS:
            mat = _seed_layer_matrix(sub, metric)
            entry[metric] = {"last_layer": interval(mat[:, -1], metric), "per_layer_mean": np.nanmean(mat, 0).tolist()}
        trials = sub[sub["layer"] == last]
        for s in ("zsl", "icl", "it", "sl"):
            entry[f"acc_{s}"] = _accuracy(trials, s)
        if "pred_zsl" in trials:  # runs made before iclft recorded predictions have no prediction changes
            for s in ("icl", "it", "sl"):
                entry[f"changed_{s}"] = _changed(trials, s)
        entry["demo_query_sim"] = interval(trials.groupby("seed")["demo_query_sim"].mean().to_numpy(), "demo_query_sim")
        by_cond[c["name"]] = entry
    summary["by_condition"] = by_cond

    lastrows = records[records["layer"] == last]
    per_seed_last = lambda df, m: df.groupby("seed")[m].mean()  # noqa: E731
    b = lastrows[lastrows["base"]]
    summary["paired"] = {
        "s_icl_it_vs_s_icl_sl": compare(per_seed_last(b, "s_icl_it"), per_seed_last(b, "s_icl_sl"), "s_icl_it"),
        "d_icl_it_vs_d_icl_sl": compare(per_seed_last(b, "d_icl_it"), per_seed_last(b, "d_icl_sl"), "d_icl_it"),
    }
    if spec.control_task:
        ctrl = lastrows[lastrows["control"]]
        summary["paired"]["d_icl_it_task_vs_control"] = compare(
            per_seed_last(b, "d_icl_it"), per_seed_last(ctrl, "d_icl_it"), "d_icl_it")
        summary["paired"]["s_icl_it_task_vs_control"] = compare(
            per_seed_last(b, "s_icl_it"), per_seed_last(ctrl, "s_icl_it"), "s_icl_it")

    # Each factor is correlated over the conditions that vary it alone (last layer). Trials within a seed share
    # queries, so the headline is the per-seed correlation with a Fisher-z interval across seeds; the pooled
    # correlation over all trials is kept beside it (its p-value treats trials as independent).
    task_rows = lastrows[~lastrows["control"]]
    sim_rows = task_rows[task_rows["base"] | task_rows["condition"].str.startswith("sel_")]
    k_rows = task_rows[task_rows["condition"].str.match(r"^k\d+$")]
    label_rows = task_rows[task_rows["base"] | task_rows["condition"].str.startswith("labels_")]
    factors = {"demo_query_sim": sim_rows, "k": k_rows, "label_correctness": label_rows}
    summary["correlations"] = [_correlate(rows, f, m) for f, rows in factors.items() for m in ("s_icl_it", "d_icl_it")]
    base_entry = by_cond[summary["base_condition"]]
    summary["tuning"] = [tuning_check(name, summary[f"u_{s}"]["last_layer"], summary["u_icl"]["last_layer"],
                                      base_entry[f"changed_{s}"], "last-layer state")
                         for name, s in (("IT", "it"), ("SL", "sl")) if f"changed_{s}" in base_entry]
    summary["sesoi"] = spec.sesoi_record()
    summary["headlines"] = headlines(summary, per_seed_last(b, "d_icl_it").to_numpy(float))
    return summary


def _correlate(rows: pd.DataFrame, factor: str, metric: str) -> dict:
    per_seed = [correlation(g[factor].to_numpy(float), g[metric].to_numpy(float)) for _, g in rows.groupby("seed")]
    pearson = np.array([c["pearson_r"] for c in per_seed], float)
    return {
        "factor": factor, "metric": metric,
        **correlation(rows[factor].to_numpy(float), rows[metric].to_numpy(float)),
        "per_seed_pearson": interval(pearson, "pearson_r"),
        "per_seed_spearman": interval([c["spearman_rho"] for c in per_seed], "spearman_rho"),
        # the test of "r > 0" runs on the Fisher-z scale, where per-seed correlations are roughly normal
        "per_seed_test": compare(np.arctanh(np.clip(pearson, -1 + 1e-9, 1 - 1e-9)), 0.0, "fisher_z"),
    }


FACTOR_CLAIMS = {
    "demo_query_sim": "convergence d_icl_it rises with demonstration–query similarity",
    "k": "convergence d_icl_it changes with the number of demonstrations (here: rises)",
    "label_correctness": "convergence d_icl_it rises with label correctness",
}


def headlines(summary: dict, d_icl_it_per_seed: np.ndarray) -> list[dict]:
    """Duan et al.'s claims, each with this run's value and a verdict (Holm over the study's testable tests).

    SESOI: the run's difference SESOI for the cosine claims; for the factor claims (per-seed r, tested on the
    Fisher-z scale) the correlation SESOI converted to z (atanh). Preconditions: every claim compares ICL with IT
    (the IT − SL one with SL too); a tuning that barely moved the model (tuning_check: both measures small) makes
    the claims resting on it "not testable: <reason>", one small measure puts a caveat on them."""
    p = summary["paired"]
    diff, factor = summary_sesoi(summary, "d_icl_it"), summary_sesoi(summary, "fisher_z")
    tuning = summary.get("tuning", [])
    it = preconditions([t for t in tuning if t["setting"] == "IT"])
    it_sl = preconditions([t for t in tuning if t["setting"] in ("IT", "SL")])
    out = [headline("ICL and IT move the query's last-layer state in the same direction (d_icl_it > 0)",
                    "d_icl_it, last layer", summary["d_icl_it"]["last_layer"],
                    "ICL behaves like IT on its demonstrations (LLaMA-2 7B/13B)",
                    compare(d_icl_it_per_seed, 0.0, "d_icl_it"), sesoi=diff, untestable=it[0], caveat=it[1]),
           headline("instruction tuning aligns with ICL more than supervised tuning (d_icl_it > d_icl_sl)",
                    "d_icl_it − d_icl_sl", p["d_icl_it_vs_d_icl_sl"]["diff"], "IT closer to ICL than SL",
                    p["d_icl_it_vs_d_icl_sl"], sesoi=diff, untestable=it_sl[0], caveat=it_sl[1])]
    if "d_icl_it_task_vs_control" in p:
        out.append(headline("the convergence is task-specific (d_icl_it above an unrelated-task control)",
                            "d_icl_it task − control", p["d_icl_it_task_vs_control"]["diff"],
                            "— (control added by iclft)", p["d_icl_it_task_vs_control"], sesoi=diff,
                            untestable=it[0], caveat=it[1]))
    for c in summary["correlations"]:
        if c["metric"] == "d_icl_it":
            out.append(headline(FACTOR_CLAIMS[c["factor"]],
                                f"per-seed Pearson r (d_icl_it, {c['factor']}), tanh of the mean Fisher z",
                                c["per_seed_pearson"], "positive", c["per_seed_test"], sesoi=factor,
                                untestable=it[0], caveat=it[1]))
    return judge(out)


STUDY = Study(name="convergence", spec=ConvergenceSpec, presets={"quick": QUICK, "paper": PAPER}, setup=setup,
              units=units, run_unit=run_unit, summarise=summarise, examples=examples)
