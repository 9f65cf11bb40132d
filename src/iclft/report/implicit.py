"""Figures and the HTML page of an implicit-pattern run, with its findings stated in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from iclft.metrics.stats import MULTIPLICITY
from iclft.report import html as H
from iclft.report.figures import errbar, plt, save
from iclft.rundir import atomic_write_text

VARIANT_STYLE = {"clean": "-", "misleading": "--"}
KIND_COLOR = {"zsl": "black", "icl": "tab:blue", "full": "tab:red", "lora": "tab:orange"}


def _kind(setting: str) -> str:
    return "zsl" if setting == "zsl" else "icl" if setting.startswith("icl") else setting.split("_")[1]


def _grid(n: int, size=(4.2, 3.3)):
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def figures(out: Path, records: pd.DataFrame, summary: dict) -> dict[str, Path]:
    figs = {}
    fams = summary["families"] + ["all"]

    fig, axes = _grid(len(fams))
    for ax, fam in zip(axes, fams, strict=True):
        ic = summary["icl_curve"][fam]
        for v in ("clean", "misleading"):
            errbar(ax, ic["k"], ic[v], f"ICL k shots, {v}", color=KIND_COLOR["icl"], ls=VARIANT_STYLE[v])
            for m, fc in summary["ft_curve"][fam].items():
                errbar(ax, fc["n"], fc[v], f"FT {m} N samples, {v}", color=KIND_COLOR[m], ls=VARIANT_STYLE[v])
        ax.set_xscale("symlog", linthresh=1, base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(fam)
        ax.set_xlabel("k demonstrations (ICL) / N training samples (FT)")
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=6)
    figs["ICL shots vs FT samples: accuracy on clean (solid) and misleading (dashed) items, 95% CI over seeds"] = \
        save(fig, out / "figures/icl_vs_ft_curves.png")

    steps = summary["ft_steps"]
    if steps:
        fig, axes = plt.subplots(2, len(steps), figsize=(5.5 * len(steps), 7), squeeze=False)
        for j, (m, by_n) in enumerate(steps.items()):
            for n, e in by_n.items():
                if not e["step"]:
                    continue
                axes[0, j].plot(e["step"], [d["mean"] for d in e["loss"]], marker="o", ms=3, label=f"N={n}")
                line = axes[1, j].plot(e["step"], [d["mean"] for d in e["clean"]], marker="o", ms=3,
                                       label=f"N={n} clean")[0]
                axes[1, j].plot(e["step"], [d["mean"] for d in e["misleading"]], marker="x", ms=3, ls="--",
                                color=line.get_color(), label=f"N={n} misleading")
            axes[0, j].set_title(f"FT {m}: training loss")
            axes[1, j].set_title(f"FT {m}: accuracy during training (subset)")
            axes[1, j].set_xlabel("step")
            axes[1, j].set_ylim(-0.05, 1.05)
            for ax in axes[:, j]:
                ax.legend(fontsize=7)
        figs["fine-tuning loss and accuracy over steps (mean over families and seeds)"] = \
            save(fig, out / "figures/ft_steps.png")

    fig, ax = plt.subplots(figsize=(6.5, 6))
    markers = "osD^v<>p"
    for i, fam in enumerate(fams):
        for s, cell in summary["accuracy"][fam].items():
            x, y = cell["clean"]["mean"], cell["misleading"]["mean"]
            ax.scatter(x, y, marker=markers[i % len(markers)], color=KIND_COLOR[_kind(s)],
                       s=70 if fam == "all" else 25, alpha=1.0 if fam == "all" else 0.5,
                       edgecolors="k" if fam == "all" else "none")
    for kind, color in KIND_COLOR.items():
        ax.scatter([], [], color=color, label={"zsl": "ZSL", "icl": "ICL", "full": "FT full", "lora": "FT LoRA"}[kind])
    for i, fam in enumerate(fams):
        ax.scatter([], [], marker=markers[i % len(markers)], color="grey", label=fam)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("accuracy on clean items")
    ax.set_ylabel("accuracy on misleading items")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Robustness: every setting (large markers: mean over families)")
    figs["robustness: clean vs misleading accuracy for every setting and family"] = \
        save(fig, out / "figures/robustness_scatter.png")

    heat = summary["circuits"]["mean_effects"]
    if heat:
        hf = [f for f in summary["families"] if f in heat]
        settings = ["base", "icl", "ft"]
        fig, axes = plt.subplots(len(hf), 3, figsize=(11, 2.6 * len(hf) + 0.6), squeeze=False)
        vmax = max((abs(c["effect"]) for f in hf for s in heat[f].values() for c in s
                    if c["effect"] == c["effect"]), default=1.0) or 1.0
        im = None
        for i, fam in enumerate(hf):
            for j, s in enumerate(settings):
                ax = axes[i, j]
                cells = heat[fam].get(s, [])
                if not cells:
                    ax.axis("off")
                    continue
                n_layers = max(c["layer"] for c in cells) + 1
                n_heads = max(c["head"] for c in cells) + 1
                mat = np.full((n_layers, n_heads + 1), np.nan)
                for c in cells:
                    mat[c["layer"], c["head"] if c["head"] >= 0 else n_heads] = c["effect"]
                im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
                ax.set_xticks(range(n_heads + 1), [str(h) for h in range(n_heads)] + ["MLP"], fontsize=7)
                ax.set_yticks(range(n_layers))
                ax.set_title(f"{fam}: {s}", fontsize=9)
                if j == 0:
                    ax.set_ylabel("layer")
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="patching effect")
        figs[f"circuit heatmaps: mean {summary['circuits']['method']} patching effect per head and MLP "
             "(base model, ICL, fine-tuned)"] = save(fig, out / "figures/circuit_heatmaps.png")

        eff = records[(records["kind"] == "effect") & records["setting"].isin(settings)].dropna(
            subset=["effect", "effect_attr"])
        if len(eff):
            fig, ax = plt.subplots(figsize=(5.5, 5))
            for fam, g in eff.groupby("family"):
                ax.scatter(g["effect"], g["effect_attr"], s=8, alpha=0.5, label=fam)
            lim = float(np.nanmax(np.abs(eff[["effect", "effect_attr"]].to_numpy()))) or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.6)
            ax.set_xlabel("exhaustive activation patching effect")
            ax.set_ylabel("attribution patching estimate")
            ax.legend(fontsize=7)
            figs["attribution vs exhaustive patching (every component, setting and seed)"] = \
                save(fig, out / "figures/patching_agreement.png")
    return figs


def _p(p) -> str:
    return "n/a" if p is None or p != p else f"p = {p:.3g}"


def findings(summary: dict) -> list[str]:
    """Descriptive lines beside the headline table (the verdicts live there)."""
    out = []
    acc = summary["accuracy"]["all"]
    gaps = [(s, cell["clean"]["mean"] - cell["misleading"]["mean"]) for s, cell in acc.items()]
    gaps = [(s, g) for s, g in gaps if g == g]
    if gaps:
        txt = ", ".join(f"{s}: {g:+.2f}" for s, g in gaps)
        out.append(f"<b>Robustness.</b> Clean minus misleading accuracy (mean over families): {txt}. A setting that "
                   "follows the shortcut scores well on clean items and badly on misleading ones.")
    sh = summary["circuit_shift"].get("all", {})
    if sh and sh.get("icl"):
        out.append(
            f"<b>Circuit shift</b> from the base model ({summary['circuits']['method']} patching, top-"
            f"{summary['circuits']['top_k']}): ICL 1 − cos = {H.fmt_ci(sh['icl']['cosine'])}, 1 − Jaccard = "
            f"{H.fmt_ci(sh['icl']['jaccard'])}; FT 1 − cos = {H.fmt_ci(sh['ft']['cosine'])}, 1 − Jaccard = "
            f"{H.fmt_ci(sh['ft']['jaccard'])}.")
    ag = summary["patching_agreement"]
    out.append(f"<b>Attribution vs exhaustive patching</b> (base model): Spearman ρ over all components = "
               f"{H.fmt_ci(ag['spearman'])}, over the top components = {H.fmt_ci(ag['spearman_top'])}; attribution "
               f"is {H.fmt_ci(ag['speedup'], 1)}× faster.")
    return out


def write_report(out: Path, records: pd.DataFrame, summary: dict, spec, model_info: dict) -> Path:
    figs = figures(out, records, summary)
    parts = [H.stand_in_note("implicit patterns")] if model_info.get("builtin_stand_in") else []
    rules = ", ".join(f"{f}: {r}" for f, r in summary["rules"].items())
    parts.append(
        f"<p>Model <code>{H.esc(model_info.get('model'))}</code> ({H.esc(model_info.get('family'))}, "
        f"{model_info.get('n_layers')} layers, {model_info.get('n_params', 0):,} parameters); {summary['n_seeds']} "
        f"seeds × {spec.n_eval} test items per variant; rules (held out of pretraining by default): {H.esc(rules)}. "
        f"Fine-tuning: {spec.full.steps} (full) / {spec.lora.steps} (LoRA) AdamW steps of {spec.full.batch_size} / "
        f"{spec.lora.batch_size} examples, constant LR after warmup, loss on {spec.full.loss_on} tokens. Accuracy is "
        "exact match of the normalised answer (label scoring for closed answer sets, greedy decoding otherwise).</p>")
    parts.append(H.headlines_section(summary.get("headlines", []), MULTIPLICITY))
    parts.append("<h2>Findings</h2>" + "".join(f'<div class="finding">{f}</div>' for f in findings(summary)))
    rows = []
    for s, cell in summary["accuracy"]["all"].items():
        rows.append([s, H.fmt_ci(cell["clean"], 2), H.fmt_ci(cell["misleading"], 2)]
                    + [H.fmt_ci(summary["accuracy"][f][s]["misleading"], 2) for f in summary["families"]])
    parts.append("<h2>Accuracy (mean over families; per family: misleading)</h2>" + H.csv_table(
        out, "accuracy", ["setting", "clean", "misleading"] + [f"{f} (mis.)" for f in summary["families"]], rows))
    cs = summary["circuit_shift"]
    parts.append("<h2>Circuit shift from the base model</h2>" + H.csv_table(
        out, "circuit_shift", ["family", "ICL 1−cos", "ICL 1−Jaccard", "FT 1−cos", "FT 1−Jaccard"],
        [[f, H.fmt_ci(cs[f]["icl"]["cosine"]), H.fmt_ci(cs[f]["icl"]["jaccard"]), H.fmt_ci(cs[f]["ft"]["cosine"]),
          H.fmt_ci(cs[f]["ft"]["jaccard"])] for f in cs]))
    parts.append("<h2>Figures</h2>" + "".join(H.img(p, caption) for caption, p in figs.items()))
    parts.append(H.methods_section(out, spec, model_info, H.INTERVALS + ". " + DEFINITIONS))
    path = out / "report.html"
    atomic_write_text(path, H.page("iclft — implicit patterns: ICL vs fine-tuning, and circuit shift", parts))
    return path


DEFINITIONS = ("Accuracy is exact match of the normalised answer; patching effect e_c = (LD_patched − LD_corrupt) / "
               "(LD_clean − LD_corrupt) with LD the logit difference between the right and the misleading answer; "
               "circuit shift = 1 − cos of the effect vectors and 1 − Jaccard of the top-K components (iclft's "
               "METRICS.md, Implicit patterns). records.parquet: kind = acc (one row per test item and setting), "
               "curve (one row per recorded FT step), effect (one row per component and circuit setting)")
