"""Figures and the HTML page of a convergence run, with its findings stated in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iclft.report import html as H
from iclft.report.figures import band, errbar, plt, save
from iclft.sweep import atomic_write_text

PAIRS = {
    "s_anchor_icl": "cos(ZSL, ICL)", "s_anchor_it": "cos(ZSL, IT)", "s_icl_it": "cos(ICL, IT)",
    "s_icl_sl": "cos(ICL, SL)", "d_icl_it": "cos(ICL−ZSL, IT−ZSL)", "d_icl_sl": "cos(ICL−ZSL, SL−ZSL)",
}


def figures(out: Path, records: pd.DataFrame, summary: dict) -> dict[str, Path]:
    figs = {}
    n_layers = summary["n_layers"]
    x = np.arange(n_layers)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("s_anchor_icl", "s_anchor_it", "s_icl_it", "s_icl_sl"):
        band(axes[0], x, summary[key]["per_layer"], PAIRS[key])
    for key in ("d_icl_it", "d_icl_sl"):
        band(axes[1], x, summary[key]["per_layer"], PAIRS[key])
    ctrl = summary["by_condition"].get("control")
    if ctrl:
        axes[1].plot(x, ctrl["d_icl_it"]["per_layer_mean"], "k--", label="control: " + PAIRS["d_icl_it"])
    axes[0].set_title("Raw cosine of last-token states")
    axes[1].set_title("Direction of change from ZSL")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(x)
        ax.legend(fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.5)
    figs["similarity by layer (base condition, 95% CI over seeds)"] = save(fig, out / "figures/similarity_by_layer.png")

    last = records[(records["layer"] == n_layers - 1) & ~records["control"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("s_icl_it", "d_icl_it"), strict=True):
        for sel, sub in last.groupby("selection"):
            ax.scatter(sub["demo_query_sim"], sub[metric], s=10, alpha=0.6, label=sel)
        ok = last[["demo_query_sim", metric]].dropna()
        if len(ok) > 2 and ok["demo_query_sim"].std() > 0:
            slope, icpt = np.polyfit(ok["demo_query_sim"], ok[metric], 1)
            xs = np.linspace(ok["demo_query_sim"].min(), ok["demo_query_sim"].max(), 50)
            ax.plot(xs, slope * xs + icpt, "k-", lw=1, label=f"fit: slope {slope:.3f}")
        ax.set_xlabel("demonstration–query similarity (MiniLM cosine)")
        ax.set_ylabel(PAIRS[metric] + " at the last layer")
        ax.legend(fontsize=8)
    figs["convergence vs demonstration–query similarity (one point per trial)"] = save(
        fig, out / "figures/convergence_vs_similarity.png")

    bc = summary["by_condition"]
    ks = [c for c in bc if c.startswith("k") and c[1:].isdigit()]
    ks.sort(key=lambda c: bc[c]["k"])
    kx = [bc[c]["k"] for c in ks]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for metric in ("s_icl_it", "d_icl_it", "d_icl_sl"):
        errbar(axes[0], kx, [bc[c][metric]["last_layer"] for c in ks], PAIRS[metric])
    for s, name in (("zsl", "ZSL"), ("icl", "ICL"), ("it", "IT"), ("sl", "SL")):
        errbar(axes[1], kx, [bc[c][f"acc_{s}"] for c in ks], name)
    axes[0].set_title("Last-layer convergence vs number of demonstrations")
    axes[1].set_title("Accuracy (label scoring) vs k")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.legend(fontsize=8)
    figs["trend over k (95% CI over seeds)"] = save(fig, out / "figures/trend_over_k.png")

    names = [c for c in bc if c.startswith("labels_") or bc[c].get("control") or
             (bc[c]["k"] == bc[summary["base_condition"]]["k"] and c == summary["base_condition"])]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for j, metric in enumerate(("s_icl_it", "d_icl_it")):
        m = [bc[c][metric]["last_layer"]["mean"] for c in names]
        lo = [bc[c][metric]["last_layer"]["ci_low"] for c in names]
        hi = [bc[c][metric]["last_layer"]["ci_high"] for c in names]
        err = np.nan_to_num(np.vstack([np.subtract(m, lo), np.subtract(hi, m)]))
        ax.bar(np.arange(len(names)) + j * width, m, width, yerr=err, capsize=3, label=PAIRS[metric])
    labels = ["gold" if c == summary["base_condition"] else c.replace("labels_", "") for c in names]
    ax.set_xticks(np.arange(len(names)) + width / 2, labels)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("Label correctness and the unrelated-task control (last layer)")
    ax.legend(fontsize=8)
    figs["label correctness (95% CI over seeds)"] = save(fig, out / "figures/label_correctness.png")
    return figs


def _sig(p) -> str:
    return "n/a" if p is None or p != p else (f"p = {p:.3g}")


def findings(summary: dict) -> list[str]:
    """Plain-language findings, each saying whether the paper's pattern is reproduced here."""
    out = []
    d = summary["d_icl_it"]["last_layer"]
    s_icl_it, s_anchor = summary["s_icl_it"]["last_layer"], summary["s_anchor_icl"]["last_layer"]
    agree = d["ci_low"] == d["ci_low"] and d["ci_low"] > 0
    out.append(
        f"<b>Convergence.</b> At the last layer ICL and IT move the query's state in "
        f"{'the same' if agree else 'no reliably shared'} direction: d_icl_it = {H.fmt_ci(d)}; raw cos(ICL, IT) = "
        f"{H.fmt_ci(s_icl_it)} vs cos(ZSL, ICL) = {H.fmt_ci(s_anchor)}. Duan et al. report that ICL changes hidden "
        f"states as if the model were instruction-tuned on the demonstrations: "
        f"{'reproduced' if agree else 'NOT reproduced'} on this model.")
    pt = summary["paired"].get("d_icl_it_task_vs_control")
    if pt:
        ctrl = summary["by_condition"]["control"]["d_icl_it"]["last_layer"]
        better = pt["mean_diff"] == pt["mean_diff"] and pt["mean_diff"] > 0 and pt["t_p"] < 0.05
        verdict = ("The convergence is task-specific." if better else
                   "The convergence is NOT distinguishable from the control here, so it need not be task-specific.")
        out.append(
            f"<b>Control.</b> With demonstrations from an unrelated task, d_icl_it = {H.fmt_ci(ctrl)}; the task's own "
            f"demonstrations differ by {pt['mean_diff']:+.3f} (paired t {_sig(pt['t_p'])}, Wilcoxon "
            f"{_sig(pt['wilcoxon_p'])}). {verdict}")
    pt = summary["paired"]["d_icl_it_vs_d_icl_sl"]
    out.append(
        f"<b>Instruction.</b> d_icl_it − d_icl_sl = {pt['mean_diff']:+.3f} (paired t {_sig(pt['t_p'])}, Wilcoxon "
        f"{_sig(pt['wilcoxon_p'])}): tuning with the instruction "
        f"{'aligns better' if pt['mean_diff'] > 0 and pt['t_p'] < 0.05 else 'does not align measurably better'}"
        f" with ICL than tuning without it.")
    for c in summary["correlations"]:
        if c["metric"] != "d_icl_it":
            continue
        ps = c["per_seed_pearson"]
        r = ps["mean"]
        # significant when the across-seed 95% interval of the per-seed correlation excludes 0
        sig = ps["ci_low"] == ps["ci_low"] and (ps["ci_low"] > 0 or ps["ci_high"] < 0)
        direction = "rises" if r > 0 else "falls"
        verdict = {"demo_query_sim": "Duan et al. find more convergence with more similar demonstrations",
                   "label_correctness": "Duan et al. find convergence depends on label correctness",
                   "k": "Duan et al. find convergence depends on the number of demonstrations"}[c["factor"]]
        if r != r:
            line = f"no per-seed correlation could be computed (pooled n = {c['n']})"
        else:
            line = (f"d_icl_it {direction if sig else 'does not change significantly'} with {c['factor']} "
                    f"(per-seed Pearson r = {H.fmt_ci(ps)}, Spearman ρ = {H.fmt_ci(c['per_seed_spearman'])}; "
                    f"pooled r = {c['pearson_r']:.3f}, {_sig(c['pearson_p'])}, n = {c['n']} trials)")
        repro = "consistent" if sig and r > 0 else "NOT reproduced"
        out.append(f"<b>{c['factor']}.</b> {line}. {verdict}: {repro} here.")
    return out


def write_report(out: Path, records: pd.DataFrame, summary: dict, spec, model_info: dict) -> Path:
    figs = figures(out, records, summary)
    parts = [H.stand_in_note("in-context learning")] if model_info.get("builtin_stand_in") else []
    parts.append(f"<p>Model <code>{H.esc(model_info.get('model'))}</code> ({H.esc(model_info.get('family'))}, "
                 f"{model_info.get('n_layers')} layers, {model_info.get('n_params', 0):,} parameters); task "
                 f"<code>{H.esc(spec.task)}</code>; {summary['n_seeds']} seeds × {spec.queries_per_seed} queries; "
                 f"base condition {H.esc(summary['base_condition'])}. Intervals are 95% t-intervals across seeds.</p>")
    parts.append("<h2>Findings</h2>" + "".join(f'<div class="finding">{f}</div>' for f in findings(summary)))
    rows = []
    for name, c in summary["by_condition"].items():
        rows.append([name, c["k"], c["selection"], c["labels"], H.fmt_ci(c["s_icl_it"]["last_layer"]),
                     H.fmt_ci(c["d_icl_it"]["last_layer"]), H.fmt_ci(c["d_icl_sl"]["last_layer"]),
                     H.fmt_ci(c["acc_icl"], 2),
                     H.fmt_ci(c["acc_it"], 2)])
    parts.append("<h2>Conditions (last layer)</h2>" + H.table(
        ["condition", "k", "selection", "labels", "cos(ICL,IT)", "d_icl_it", "d_icl_sl", "acc ICL", "acc IT"], rows))
    parts.append("<h2>Correlations (last layer)</h2><p>Per seed, then a 95% t-interval across seeds; pooled over "
                 "all trials for reference (its p-values treat trials as independent).</p>" + H.table(
        ["factor", "metric", "per-seed Pearson r", "per-seed Spearman ρ", "pooled r", "p", "pooled ρ", "p", "n"],
        [[c["factor"], c["metric"], H.fmt_ci(c["per_seed_pearson"]), H.fmt_ci(c["per_seed_spearman"]),
          f"{c['pearson_r']:.3f}", f"{c['pearson_p']:.3g}", f"{c['spearman_rho']:.3f}", f"{c['spearman_p']:.3g}",
          c["n"]] for c in summary["correlations"]]))
    parts.append("<h2>Figures</h2>" + "".join(H.img(p, caption) for caption, p in figs.items()))
    parts.append("<p>Definitions: METRICS.md (Convergence). Files: <code>records.parquet</code> (one row per trial "
                 "and layer), <code>summary.json</code>, <code>manifest.json</code>.</p>")
    path = out / "report.html"
    atomic_write_text(path, H.page("iclft — convergence of ICL and instruction tuning", parts))
    return path
