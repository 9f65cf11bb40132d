"""Figures and the HTML page of a convergence run, with its findings stated in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iclft.metrics.stats import MULTIPLICITY, TINY_CHANGED, TINY_UPDATE
from iclft.report import html as H
from iclft.report.figures import COLORS, band, clamp_ylim, draw_all, errbar, plt, save
from iclft.rundir import atomic_write_text

PAIRS = {
    "s_anchor_icl": "cos(ZSL, ICL)", "s_anchor_it": "cos(ZSL, IT)", "s_icl_it": "cos(ICL, IT)",
    "s_icl_sl": "cos(ICL, SL)", "d_icl_it": "cos(ICL−ZSL, IT−ZSL)", "d_icl_sl": "cos(ICL−ZSL, SL−ZSL)",
}
UPDATES = {"u_icl": "ICL", "u_it": "IT", "u_sl": "SL"}
# A pair's colour is the setting compared (Okabe–Ito, the same in every report); dashed: compared with ZSL.
STYLE = {"s_anchor_icl": dict(color=COLORS["icl"], ls="--"), "s_anchor_it": dict(color=COLORS["it"], ls="--"),
         "s_icl_it": dict(color=COLORS["it"]), "s_icl_sl": dict(color=COLORS["sl"]),
         "d_icl_it": dict(color=COLORS["it"]), "d_icl_sl": dict(color=COLORS["sl"]),
         "u_icl": dict(color=COLORS["icl"]), "u_it": dict(color=COLORS["it"]), "u_sl": dict(color=COLORS["sl"])}


def figures(out: Path, records: pd.DataFrame, summary: dict) -> dict[str, Path]:
    """The page's figures by caption, drawn side by side (draw_all)."""
    tasks = {"similarity and update size by layer (base condition, 95% CI over seeds)": (_by_layer, out, summary),
             "convergence vs demonstration–query similarity (one point per trial)":
                 (_vs_similarity, out, records, summary),
             "trend over k (95% CI over seeds)": (_trend_over_k, out, summary),
             "label correctness (95% CI over seeds)": (_label_correctness, out, summary)}
    return dict(zip(tasks, draw_all(list(tasks.values())), strict=True))


def _by_layer(out: Path, summary: dict) -> Path:
    n_layers = summary["n_layers"]
    x = np.arange(n_layers)
    updates = [key for key in UPDATES if key in summary]  # runs of older versions have none
    fig, axes = plt.subplots(1, 3 if updates else 2, figsize=(15 if updates else 11, 4))
    for key in ("s_anchor_icl", "s_anchor_it", "s_icl_it", "s_icl_sl"):
        band(axes[0], x, summary[key]["per_layer"], PAIRS[key], metric=key, **STYLE[key])
    for key in ("d_icl_it", "d_icl_sl"):
        band(axes[1], x, summary[key]["per_layer"], PAIRS[key], metric=key, **STYLE[key])
    ctrl = summary["by_condition"].get("control")
    if ctrl:
        axes[1].plot(x, ctrl["d_icl_it"]["per_layer_mean"], ls=":", color=COLORS["control"],
                     label="unrelated-task control: " + PAIRS["d_icl_it"])
    for key in updates:
        band(axes[2], x, summary[key]["per_layer"], UPDATES[key], metric=key, **STYLE[key])
    if updates:
        axes[2].set_title("How far each setting moved the state")
        axes[2].set_ylabel("update size ‖h − h_ZSL‖ / ‖h_ZSL‖")
        axes[2].set_ylim(bottom=0)
    axes[0].set_title("Raw cosine of last-token states")
    axes[1].set_title("Direction of change from ZSL")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.set_xticks(x)
        ax.legend()
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("cosine similarity")
    axes[1].set_ylabel("cosine of the changes")
    for ax in axes[:2]:
        clamp_ylim(ax, "d_icl_it")
    return save(fig, out / "figures/similarity_by_layer.svg")


def _vs_similarity(out: Path, records: pd.DataFrame, summary: dict) -> Path:
    n_layers = summary["n_layers"]
    last = records[(records["layer"] == n_layers - 1) & ~records["control"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("s_icl_it", "d_icl_it"), strict=True):
        for (sel, sub), marker, color in zip(last.groupby("selection"), "os^D", ("#0072B2", "#E69F00", "#009E73",
                                                                               "#CC79A7"), strict=False):
            ax.scatter(sub["demo_query_sim"], sub[metric], s=12, alpha=0.7, marker=marker, color=color,
                       label=f"selection: {sel}")
        ok = last[["demo_query_sim", metric]].dropna()
        if len(ok) > 2 and ok["demo_query_sim"].std() > 0:
            slope, icpt = np.polyfit(ok["demo_query_sim"], ok[metric], 1)
            xs = np.linspace(ok["demo_query_sim"].min(), ok["demo_query_sim"].max(), 50)
            ax.plot(xs, slope * xs + icpt, color=COLORS["zsl"], lw=1, label=f"least-squares fit: slope {slope:.3f}")
        ax.set_xlabel("demonstration–query similarity (MiniLM cosine)")
        ax.set_ylabel(PAIRS[metric] + " at the last layer")
        clamp_ylim(ax, metric)
        ax.legend()
    return save(fig, out / "figures/convergence_vs_similarity.svg")


def _trend_over_k(out: Path, summary: dict) -> Path:
    bc = summary["by_condition"]
    # conditions are told apart by their descriptors (k, selection, labels, control), never by their names
    ks = sorted((c for c, d in bc.items() if d["selection"] == "random" and d["labels"] == "gold"
                 and not d["control"]), key=lambda c: bc[c]["k"])
    kx = [bc[c]["k"] for c in ks]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    dodge = lambda j: [k * 2 ** (0.05 * j) for k in kx]  # noqa: E731 - side by side, so equal values stay visible
    for j, metric in enumerate(("s_icl_it", "d_icl_it", "d_icl_sl")):
        style = dict(STYLE[metric], ls=":" if metric == "s_icl_it" else "-")
        errbar(axes[0], dodge(j - 1), [bc[c][metric]["last_layer"] for c in ks], PAIRS[metric], metric=metric,
               **style)
    # ZSL does not depend on k (same queries, no demonstrations): a reference line, not a curve
    axes[1].axhline(bc[ks[0]]["acc_zsl"]["mean"], color=COLORS["zsl"], ls="-.", lw=1.2,
                    label="ZSL (no demonstrations, no tuning)")
    for j, (s, name) in enumerate((("icl", "ICL"), ("it", "IT"), ("sl", "SL"))):
        errbar(axes[1], dodge(j - 1), [bc[c][f"acc_{s}"] for c in ks], name, metric="acc", color=COLORS[s])
    n_labels = summary.get("n_labels")
    if n_labels:
        axes[1].axhline(1 / n_labels, color=COLORS["chance"], ls="--", lw=1, label="chance")
    axes[0].set_title("Last-layer convergence vs number of demonstrations")
    axes[1].set_title("Accuracy (label scoring) vs k")
    axes[0].set_ylabel("cosine (last layer)")
    axes[1].set_ylabel("accuracy")
    clamp_ylim(axes[0], "d_icl_it")
    clamp_ylim(axes[1], "acc")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(kx, [str(k) for k in kx])
        ax.minorticks_off()
        ax.set_xlabel("k (demonstrations)")
        ax.legend()
    return save(fig, out / "figures/trend_over_k.svg")


def _label_correctness(out: Path, summary: dict) -> Path:
    bc = summary["by_condition"]
    names = [c for c, d in bc.items() if d["labels"] != "gold" or d["control"] or c == summary["base_condition"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for j, metric in enumerate(("s_icl_it", "d_icl_it")):
        m = [bc[c][metric]["last_layer"]["mean"] for c in names]
        lo = [bc[c][metric]["last_layer"]["ci_low"] for c in names]
        hi = [bc[c][metric]["last_layer"]["ci_high"] for c in names]
        err = np.nan_to_num(np.vstack([np.subtract(m, lo), np.subtract(hi, m)]))
        ax.bar(np.arange(len(names)) + j * width, m, width, yerr=err, capsize=3, label=PAIRS[metric],
               color=COLORS["it"], alpha=0.45 if metric == "s_icl_it" else 1.0)
    labels = ["control" if bc[c]["control"] else bc[c]["labels"] for c in names]
    ax.set_xticks(np.arange(len(names)) + width / 2, labels)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("Label correctness and the unrelated-task control (last layer)")
    ax.set_ylabel("cosine (last layer)")
    ax.set_xlabel("demonstration labels")
    clamp_ylim(ax, "d_icl_it")
    ax.legend()
    return save(fig, out / "figures/label_correctness.svg")


TUNING_RULE = (f"iclft puts a caveat on the verdicts that rest on a tuning when one of these is small (its update "
               f"under {TINY_UPDATE:g}× ICL's, or under {100 * TINY_CHANGED:g}% of the predictions changed) and "
               "calls them not testable when both are")


def _tuning_effect(t: dict) -> str:
    if t.get("barely_moved"):
        return "not testable (both measures small)"
    return "caveat (one measure small)" if t.get("weak") else "tested as they are"


def factor_scales(headlines: list[dict]) -> str:
    """How the factor headlines' numbers relate: the value, the effect and the SESOI, each on its scale."""
    z = next((h.get("sesoi") for h in headlines if (h.get("test") or {}).get("scale") == "fisher_z"), None)
    if z is None:
        return ""
    return (". The factor claims are per-seed Pearson correlations tested on the Fisher-z scale: the value shown "
            "('this run') is tanh of the seeds' mean z = atanh(r), the effect is that mean z itself (its interval "
            f"is the value's, before tanh), and the smallest effect of interest r = {np.tanh(z):.2g} is "
            f"atanh({np.tanh(z):.2g}) = {z:.4g} on z")


def findings(summary: dict) -> list[str]:
    """Descriptive lines that sit beside the headline table (the verdicts live there)."""
    s_icl_it, s_anchor = summary["s_icl_it"]["last_layer"], summary["s_anchor_icl"]["last_layer"]
    base = summary["by_condition"][summary["base_condition"]]
    out = [f"Raw last-layer cosines (inflated by anisotropy, hence the direction form d_icl_it): cos(ICL, IT) = "
           f"{H.fmt_ci(s_icl_it)}, cos(ZSL, ICL) = {H.fmt_ci(s_anchor)}.",
           f"Accuracy in the base condition (label scoring): ZSL {H.fmt_ci(base['acc_zsl'], 2)}, ICL "
           f"{H.fmt_ci(base['acc_icl'], 2)}, IT {H.fmt_ci(base['acc_it'], 2)}, SL {H.fmt_ci(base['acc_sl'], 2)}."]
    # One statistic per factor claim, the headline's: the per-seed Pearson r (tanh of the seeds' mean Fisher z)
    # and, labelled, its Fisher-z effect; the pooled and rank correlations stay in the correlations table.
    for c in summary["correlations"]:
        if c["metric"] == "d_icl_it" and c.get("per_seed_test"):
            t = c["per_seed_test"]["diff"]
            out.append(f"{H.esc(c['factor'])} and d_icl_it (the headline's statistic): per-seed Pearson r = "
                       f"{H.fmt_ci(c['per_seed_pearson'])} (tanh of the seeds' mean Fisher z; the test's effect is "
                       f"that mean z = {H.fmt_ci(t)} over {t['n']} seeds).")
    return out


def write_report(out: Path, records: pd.DataFrame, summary: dict, spec, model_info: dict) -> Path:
    out = Path(out)
    figs = figures(out, records, summary)
    size = f"{summary['n_seeds']} seeds × {spec.queries_per_seed} queries per condition"
    parts = [H.index_link(out), H.small_run_banner(spec.preset, summary["n_seeds"], size)]
    parts += [H.stand_in_note("in-context learning")] if model_info.get("builtin_stand_in") else []
    parts.append(H.warnings_section([t["warning"] for t in summary.get("tuning", []) if t["warning"]]))
    parts.append(f"<p>Task <code>{H.esc(spec.task)}</code>; {summary['n_seeds']} seeds × {spec.queries_per_seed} "
                 f"queries; base condition {H.esc(summary['base_condition'])}.</p>")
    parts.append(H.headlines_section(summary.get("headlines", []), MULTIPLICITY
                                     + factor_scales(summary.get("headlines", []))))
    parts.append("<h2>Findings</h2>" + "".join(f'<div class="finding">{f}</div>' for f in findings(summary)))
    if summary.get("tuning"):
        parts.append("<h2>Did the tuning change the model?</h2><p>Update size ‖h − h_ZSL‖ / ‖h_ZSL‖ of the last "
                     "token's last-layer state, and the share of queries whose predicted label differs from "
                     "zero-shot's (base condition; per layer in the first figure). " + H.esc(TUNING_RULE)
                     + ".</p>" + H.csv_table(
                         out, "tuning", ["setting", "update size", "ICL's update size", "vs ICL",
                                         "predictions changed", "small measures", "verdicts resting on it"],
                         [[t["setting"], H.fmt_ci(t["update"]), H.fmt_ci(t["update_icl"]),
                           f"{t['update_vs_icl']:.2f}×", H.fmt_ci(t["changed"], 2),
                           "; ".join(t.get("small") or []) or "none", _tuning_effect(t)]
                          for t in summary["tuning"]]))
    rows = []
    for name, c in summary["by_condition"].items():
        rows.append([name, c["k"], c["selection"], c["labels"], H.fmt_ci(c["s_icl_it"]["last_layer"]),
                     H.fmt_ci(c["d_icl_it"]["last_layer"]), H.fmt_ci(c["d_icl_sl"]["last_layer"]),
                     *[H.fmt_ci(c[u]["last_layer"]) if u in c else "n/a" for u in UPDATES],
                     H.fmt_ci(c["acc_zsl"], 2), H.fmt_ci(c["acc_icl"], 2), H.fmt_ci(c["acc_it"], 2),
                     H.fmt_ci(c["acc_sl"], 2)])
    parts.append("<h2>Conditions (last layer)</h2>" + H.csv_table(
        out, "conditions", ["condition", "k", "selection", "labels", "cos(ICL,IT)", "d_icl_it", "d_icl_sl",
                            "update ICL", "update IT", "update SL", "acc ZSL", "acc ICL", "acc IT", "acc SL"], rows))
    parts.append("<h2>Correlations (last layer)</h2><p>Per seed, then a Fisher-z interval across seeds (the value "
                 "is tanh of the seeds' mean z): the per-seed Pearson r of d_icl_it is the headline's statistic. "
                 "Pooled over all trials for reference only (its p-values treat trials as independent).</p>"
                 + H.csv_table(
        out, "correlations",
        ["factor", "metric", "per-seed Pearson r (headline)", "per-seed Spearman ρ", "pooled Pearson r (all trials)",
         "p", "pooled Spearman ρ (all trials)", "p", "n trials"],
        [[c["factor"], c["metric"], H.fmt_ci(c["per_seed_pearson"]), H.fmt_ci(c["per_seed_spearman"]),
          f"{c['pearson_r']:.3f}", f"{c['pearson_p']:.3g}", f"{c['spearman_rho']:.3f}", f"{c['spearman_p']:.3g}",
          c["n"]] for c in summary["correlations"]]))
    n_layers = summary["n_layers"]
    shown = {**PAIRS, **{u: f"update {n}" for u, n in UPDATES.items() if u in summary}}
    parts.append("<h2>Per layer (base condition)</h2>" + H.csv_table(
        out, "per_layer", ["layer", *shown.values()],
        [[layer] + [H.fmt_ci({k: summary[m]["per_layer"][k][layer] for k in ("mean", "ci_low", "ci_high")})
                    for m in shown] for layer in range(n_layers)]))
    parts.append("<h2>Figures</h2>" + "".join(H.img(p, caption) for caption, p in figs.items()))
    parts.append(H.methods_section(out, spec, model_info, H.INTERVALS + ". Definitions: " + DEFINITIONS))
    path = out / "report.html"
    atomic_write_text(path, H.page("iclft — convergence of ICL and instruction tuning", parts))
    return path


DEFINITIONS = ("s_x_y = cos(h_x, h_y), d_icl_y = cos(h_ICL − h_ZSL, h_y − h_ZSL) and the update size u_x = "
               "‖h_x − h_ZSL‖ / ‖h_ZSL‖ of the last token's resid_post "
               "(the output of each block; the last layer's is after the final norm, as HF hidden_states); "
               "demonstration–query similarity is the mean cosine of all-MiniLM-L6-v2 embeddings (metrics.html, "
               "Convergence)")
