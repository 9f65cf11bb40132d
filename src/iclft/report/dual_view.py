"""Figures and the HTML page of a dual-view run, with its findings stated in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iclft.metrics.stats import MULTIPLICITY
from iclft.report import html as H
from iclft.report.figures import COLORS, band, clamp_ylim, draw_all, plt, save
from iclft.rundir import atomic_write_text

NAMES = {
    "simaou": "SimAOU (ICL vs FT-KV update)", "simaou_random": "SimAOU, random update (N(0, I))",
    "simam_before": "SimAM before (ICL vs ZSL)", "simam_after": "SimAM after (ICL vs FT-KV)",
    "kendall": "Kendall τ (ICL attention vs FT-KV query similarity)", "kendall_random": "Kendall τ, random FT side",
    "update_ratio": "‖Δa_FT‖ / ‖Δa_ICL‖ (update size)",
    "u_icl": "update size ICL, ‖a_ICL − a_ZSL‖ / ‖a_ZSL‖", "u_ft": "update size FT-KV, ‖a_FT − a_ZSL‖ / ‖a_ZSL‖",
}
# Okabe–Ito, one meaning per setting in every report: the ICL-vs-FT-KV measure in FT-KV's colour, its baseline
# (random update, or before FT-KV: ZSL) in the baseline's.
STYLE = {"simaou": dict(color=COLORS["ft_kv"]), "simaou_random": dict(color=COLORS["random"], ls="--"),
         "simam_before": dict(color=COLORS["zsl"], ls="--"), "simam_after": dict(color=COLORS["ft_kv"]),
         "kendall": dict(color=COLORS["ft_kv"]), "kendall_random": dict(color=COLORS["random"], ls="--"),
         "u_icl": dict(color=COLORS["icl"]), "u_ft": dict(color=COLORS["ft_kv"])}


def simam_overlap(summary: dict) -> float:
    """Largest per-layer gap between SimAM before and after FT-KV (0: the two lines lie on each other)."""
    pl = summary["per_layer"]
    return float(np.nanmax(np.abs(np.subtract(pl["simam_after"]["mean"], pl["simam_before"]["mean"]))))


def figures(out: Path, records: pd.DataFrame, summary: dict) -> dict[str, Path]:
    """The page's figures by caption, drawn side by side (draw_all)."""
    tasks = {"per-layer metrics with their baselines, and update sizes (95% CI over seeds)": (_per_layer, out, summary),
             "accuracy of ZSL, ICL and FT-KV": (_accuracy, out, summary)}
    return dict(zip(tasks, draw_all(list(tasks.values())), strict=True))


def _per_layer(out: Path, summary: dict) -> Path:
    pl = summary["per_layer"]
    x = np.arange(summary["n_layers"])
    panels = (("simaou", "simaou_random", "SimAOU per layer"),
              ("simam_before", "simam_after", "SimAM per layer"),
              ("kendall", "kendall_random", "Kendall τ per layer"))
    fig, axes = plt.subplots(1, 4 if "u_ft" in pl else 3, figsize=(20 if "u_ft" in pl else 15, 4))
    for ax, (a, b, title) in zip(axes, panels, strict=False):
        band(ax, x, pl[a], NAMES[a], metric=a, **STYLE[a])
        band(ax, x, pl[b], NAMES[b], metric=b, **STYLE[b])
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(x)
        ax.set_ylabel("Kendall τ" if a == "kendall" else "cosine similarity")
        clamp_ylim(ax, a)
        ax.legend()
    gap = simam_overlap(summary)
    if gap < 1e-3:  # say so, or the reader looks for a line that is not missing
        axes[1].text(0.02, 0.04, f"before and after overlap (max gap {gap:.1e})", transform=axes[1].transAxes,
                     fontsize=9)
    if "u_ft" in pl:
        for key in ("u_icl", "u_ft"):
            band(axes[3], x, pl[key], NAMES[key].split(",")[0], metric=key, **STYLE[key])
        axes[3].set_title("How far each setting moved the attention output")
        axes[3].set_xlabel("layer")
        axes[3].set_xticks(x)
        axes[3].set_ylabel("‖a − a_ZSL‖ / ‖a_ZSL‖")
        axes[3].set_ylim(bottom=0)
        axes[3].legend()
    return save(fig, out / "figures/per_layer.svg")


def _accuracy(out: Path, summary: dict) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = ["acc_zsl", "acc_icl", "acc_ft"]
    m = [summary[n]["mean"] for n in names]
    err = np.nan_to_num(np.vstack([np.subtract(m, [summary[n]["ci_low"] for n in names]),
                                   np.subtract([summary[n]["ci_high"] for n in names], m)]))
    ax.bar(["ZSL", "ICL", "FT-KV"], m, yerr=err, capsize=4, color=[COLORS["zsl"], COLORS["icl"], COLORS["ft_kv"]],
           alpha=0.8)
    for s in summary["seeds"]:
        ax.plot(["ZSL", "ICL", "FT-KV"], [summary[n]["per_seed"][summary["seeds"].index(s)] for n in names],
                ".", color=COLORS["random"], alpha=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("setting")
    ax.set_ylabel("accuracy (label scoring)")
    ax.set_title("Accuracy per setting (bars: mean, 95% CI; dots: seeds)")
    return save(fig, out / "figures/accuracy.svg")


BUILTIN_TASK_NOTE = ("on the built-in model, tweet sentiment with label words it never saw paired with these "
                     "classes: zero-shot it is at chance, so what ICL and FT-KV fix is learnt from the "
                     "demonstrations; its own sentiment task would leave them ~15% of errors to fix")


def findings(summary: dict) -> list[str]:
    """Descriptive lines beside the headline table (the verdicts live there)."""
    n_fixed = summary.get("rec2ftp_fixed_by_ft", [])
    acc = (f"Accuracies: ZSL {H.fmt_ci(summary['acc_zsl'])}, ICL {H.fmt_ci(summary['acc_icl'])}, FT-KV "
           f"{H.fmt_ci(summary['acc_ft'])}.")
    pt = summary["paired"]["acc_icl_vs_acc_ft"]
    out = [acc + f" ICL − FT-KV = {H.fmt_ci(pt['diff'])} (paired t p = {H.fmt_p(pt['t_p'])}).",
           f"Rec2FTP rests on the queries FT-KV fixes over zero-shot (F→T): {', '.join(map(str, n_fixed))} per "
           f"seed, {summary.get('f_to_t_total', sum(n_fixed))} in all (its interval treats them as the trials; "
           f"below {summary.get('min_f_to_t', '?')} its claims are not testable)."]
    if "rec2ftp_baseline" in summary:
        out.append(f"Rec2FTP's baseline, ICL's recovery rate on the zero-shot errors FT-KV does not fix: "
                   f"{H.fmt_ci(summary['rec2ftp_baseline'])} over "
                   f"{', '.join(map(str, summary.get('rec2ftp_baseline_trials', [])))} queries per seed; Rec2FTP "
                   f"{H.fmt_ci(summary['rec2ftp'])}. Rec2FTP above it means ICL and FT-KV fix the same queries, "
                   "not merely that ICL is often right.")
    if "update_ratio" in summary:
        ur = summary["per_layer"]["update_ratio"]
        per_layer = ", ".join(f"layer {i}: {m:.3g}" for i, m in enumerate(ur["mean"]))
        out.append(f"Size of the FT-KV update relative to ICL's, ‖Δa_FT‖ / ‖Δa_ICL‖ of the last token's attention "
                   f"output (Δ: change from zero-shot): {H.fmt_ci(summary['update_ratio'])} over layers ({per_layer})."
                   + (" FT-KV barely moves the model: SimAOU and Kendall compare ICL with a much smaller update."
                      if summary["update_ratio"]["mean"] < 0.05 else ""))
    if "per_layer" in summary and simam_overlap(summary) < 1e-3:
        out.append(f"SimAM before and after FT-KV coincide at every layer (largest gap {simam_overlap(summary):.1e}): "
                   "FT-KV did not change where the last token attends, so the two lines overlap in the figure.")
    if "kendall_mode" in summary:
        out.append("Kendall's ICL side: " + (
            "the last token's raw pre-softmax attention scores summed over heads, its FT side the scaled query "
            "products summed over heads, each softmaxed over the demonstration tokens, as Dai et al.'s code does "
            "(kendall_mode: scores)." if summary["kendall_mode"] == "scores" else
            "the last token's post-softmax attention probabilities summed over heads (kendall_mode: probs; Dai et "
            "al.'s code uses the raw scores).")
            + (f" The other mode's τ: {H.fmt_ci(summary[other])}." if (other := "kendall_" + (
                "probs" if summary["kendall_mode"] == "scores" else "scores")) in summary else ""))
    if "kendall_rope" in summary:
        out.append("Kendall's FT side uses attention queries " + (
            "before RoPE (the token's query alone, no relative-position term)." if summary["kendall_rope"] == "pre"
            else "after RoPE (includes a relative-position term between a demonstration's place in its own "
                 "training sequence and the test token's)."))
    return out


def _pub_row(pub: dict, name: str, ours: str, key: str, fmt) -> list:
    return [name, ours] + [fmt(v) for v in pub[key]]


def write_report(out: Path, records: pd.DataFrame, summary: dict, spec, model_info: dict) -> Path:
    out = Path(out)
    figs = figures(out, records, summary)
    size = f"{summary['n_seeds']} seeds × {summary['n_queries']} queries"
    parts = [H.index_link(out), H.small_run_banner(spec.preset, summary["n_seeds"], size)]
    parts += [H.stand_in_note("in-context learning")] if model_info.get("builtin_stand_in") else []
    parts.append(H.warnings_section([t["warning"] for t in summary.get("tuning", []) if t["warning"]]))
    ks = sorted(set(summary["k_per_seed"].values()))
    lrs = ", ".join(f"seed {s}: {c['chosen']:g}" for s, c in summary["lr_choice"].items())
    grid = ", ".join(f"{x:g}" for x in spec.lr_grid)
    parts.append(
        f"<p>Model <code>{H.esc(model_info.get('model'))}</code> ({H.esc(model_info.get('family'))}, "
        f"{model_info.get('n_layers')} layers, {model_info.get('n_params', 0):,} parameters); task "
        f"<code>{H.esc(summary.get('task_resolved', summary['task']))}</code>"
        + (f" (task <code>auto</code>: {BUILTIN_TASK_NOTE})" if summary["task"] == "auto"
           and summary.get("task_resolved", "").startswith("sentiment/") else "")
        + f"; {summary['n_seeds']} seeds (demonstration sets) × "
        f"{summary['n_queries']} test queries drawn per seed; k = {', '.join(map(str, ks))} demonstrations "
        f"({H.esc(summary['demo_sampling'])} sampling, requested {summary['k']}). FT-KV: plain SGD on W_K, W_V, "
        f"batch 1, one step per demonstration in the ICL order, learning rate chosen per seed on a validation "
        f"split of the training data from {H.esc(grid)} ({H.esc(lrs)}).</p>")
    parts.append(H.headlines_section(summary.get("headlines", []), MULTIPLICITY))
    parts.append("<h2>Findings</h2>" + "".join(f'<div class="finding">{f}</div>' for f in findings(summary)))
    if summary.get("tuning"):
        parts.append("<h2>Did FT-KV change the model?</h2><p>Update size ‖a − a_ZSL‖ / ‖a_ZSL‖ of the last token's "
                     "attention output (mean over layers; per layer in the first figure), and the share of queries "
                     "whose predicted label differs from zero-shot's.</p>" + H.csv_table(
                         out, "tuning", ["setting", "update size", "ICL's update size", "vs ICL",
                                         "predictions changed", "ICL's predictions changed",
                                         "moved too little?"],
                         [[t["setting"], H.fmt_ci(t["update"]), H.fmt_ci(t["update_icl"]), f"{t['update_vs_icl']:.2f}×",
                           H.fmt_ci(t["changed"], 2), H.fmt_ci(summary["changed_icl"], 2),
                           "both measures: claims not testable" if t["barely_moved"] else
                           "one measure: claims caveated" if t.get("weak") else "no"] for t in summary["tuning"]]))

    pct = lambda v: f"{v:.1f}"  # noqa: E731
    f3 = lambda v: f"{v:.3f}"  # noqa: E731
    pub = summary["published"]
    r = summary["rec2ftp"]
    ours_r = {k: (r[k] * 100 if r[k] == r[k] else r[k]) for k in ("mean", "ci_low", "ci_high")}
    rows = [
        _pub_row(pub, "Rec2FTP (%)", H.fmt_ci(ours_r, 1), "rec2ftp", pct),
        _pub_row(pub, "SimAOU", H.fmt_ci(summary["simaou"]), "simaou", f3),
        _pub_row(pub, "SimAM before", H.fmt_ci(summary["simam_before"]), "simam_before", f3),
        _pub_row(pub, "SimAM after", H.fmt_ci(summary["simam_after"]), "simam_after", f3),
        _pub_row(pub, "Kendall τ", H.fmt_ci(summary["kendall"]), "kendall", f3),
        ["SimAOU, random", H.fmt_ci(summary["simaou_random"])] + ["–"] * len(pub["models"]),
        ["Kendall τ, random", H.fmt_ci(summary["kendall_random"])] + ["–"] * len(pub["models"]),
    ]
    parts.append("<h2>This run beside the published averages</h2>"
                 '<div class="note">The models differ: Dai et al. measured GPT models of 1.3B and 2.7B parameters '
                 "(fairseq) averaged over six datasets (SST2, SST5, MR, Subj, AGNews, CB); this run measures "
                 f"<code>{H.esc(model_info.get('model'))}</code> on "
                 f"<code>{H.esc(summary.get('task_resolved', summary['task']))}</code>. "
                 "The columns are side by side for orientation, not as a like-for-like comparison. iclft also "
                 "fixes known faults of the published code: it reads the token before the label (not the first "
                 "label token), draws the random SimAOU baseline from a zero-mean Gaussian, chooses the learning "
                 "rate on training-split queries disjoint from the measured ones, and scores multi-token labels by "
                 "their first token while training on every token.</div>"
                 + H.csv_table(out, "published", ["metric", "this run (95% CI)",
                                                  *[f"Dai et al., {m}" for m in pub["models"]]], rows))

    layer_rows = []
    pl = summary["per_layer"]
    names = [m for m in NAMES if m in pl]
    for layer in range(summary["n_layers"]):
        layer_rows.append([layer] + [H.fmt_ci({k: pl[m][k][layer] for k in ("mean", "ci_low", "ci_high")})
                                     for m in names])
    parts.append("<h2>Per layer (95% CI over seeds)</h2>"
                 + H.csv_table(out, "per_layer", ["layer", *names], layer_rows))

    d = summary["dual_form"]
    ok = "passes" if d["passed"] else "FAILS"
    parts.append(
        f"<h2>Dual-form check (float64)</h2><p>The check {ok} at tolerance {d['tolerance']:g}: "
        f"(a) linear attention over demonstrations equals applying ΔW = Σ_i (W_V x'_i)(W_K x'_i)ᵀ to the query, "
        f"max |error| = {d['max_abs_error_linear_attention']:.2e}; (b) one gradient-descent step on least squares "
        f"equals the constructed linear self-attention layer (von Oswald et al.), max |error| = "
        f"{d['max_abs_error_gd']:.2e}. A deliberately wrong construction (perturbation 1e-3) gives "
        f"{d['negative_control_max_abs_error']:.2e}, so the check can fail.</p>")

    seed_rows = []
    for i, s in enumerate(summary["seeds"]):
        c = summary["lr_choice"][str(s)]
        accs = ", ".join(f"{lr}: {acc:.2f}" for lr, acc in c["val_acc"].items())
        seed_rows.append([s, summary["k_per_seed"][str(s)], c["chosen"], accs]
                         + [f"{100 * summary['rec2ftp']['per_seed'][i]:.1f}"]
                         + [f"{summary[m]['per_seed'][i]:.3f}" for m in ("simaou", "kendall", "acc_icl", "acc_ft")])
    parts.append("<h2>Per seed</h2>" + H.csv_table(out, "per_seed",
        ["seed", "k", "lr", "validation accuracy by lr", "Rec2FTP (%)", "SimAOU", "Kendall", "acc ICL", "acc FT-KV"],
        seed_rows))
    parts.append("<h2>Figures</h2>" + "".join(H.img(p, caption) for caption, p in figs.items()))
    parts.append(H.methods_section(out, spec, model_info, H.INTERVALS + ". Definitions: " + DEFINITIONS))
    path = out / "report.html"
    atomic_write_text(path, H.page("iclft — dual view: ICL as implicit fine-tuning (Dai et al.)", parts))
    return path


DEFINITIONS = ("Rec2FTP = |(C_ICL ∩ C_FT) \\ C_ZSL| / |C_FT \\ C_ZSL|; SimAOU = cos(a_ICL − a_ZSL, a_FT − a_ZSL) "
               "of the L2-normalised attention output at the last token (the token before the label); SimAM = cosine "
               "of the last token's pre-softmax attention scores over the query's own tokens; Kendall τ between the "
               "ICL attention to demonstration tokens and the FT-KV query similarities (metrics.html, Dual view)")
