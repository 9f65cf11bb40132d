"""Figures and the HTML page of an implicit-pattern run, with its findings stated in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from iclft.metrics.stats import MIN_SEEDS, MULTIPLICITY, TINY_CHANGED
from iclft.report import html as H
from iclft.report.figures import COLORS, band, draw_all, errbar, plt, save
from iclft.rundir import atomic_write_text

VARIANT_STYLE = {"clean": "-", "misleading": "--"}
VARIANT_MARKER = {"clean": {}, "misleading": {"mfc": "white"}}  # misleading: hollow points
KIND_NAME = {"zsl": "ZSL", "icl": "ICL", "ft_full": "FT full", "ft_lora": "FT LoRA"}
FAMILY_MARKERS = "sD^v<>pP*h"
ACC_YLIM = (-0.03, 1.03)
BASE_CMAP, DIFF_CMAP = "RdBu_r", "PuOr_r"  # diverging, colour-blind safe (ColorBrewer), centred at 0


def _sizes_text(summary: dict) -> str:
    """`family: knob=value, ...` of the run's item sizes (older summaries have none: the paper size)."""
    sizes = summary.get("sizes")
    if not sizes:
        return "SIZE_DEFAULTS"
    return "; ".join(f"{f}: " + ", ".join(f"{k}={v}" for k, v in kn.items()) for f, kn in sizes.items())


def _kind(setting: str) -> str:
    """zsl | icl | ft_full | ft_lora: the key of the setting's colour in COLORS."""
    if setting == "zsl" or setting == "icl_k0":
        return "zsl"
    return "icl" if setting.startswith("icl") else "_".join(setting.split("_")[:2])


def _shade(color: str, t: float) -> tuple:
    """`color` mixed with white: t = 1 the colour itself, smaller t lighter (fewer shots / samples)."""
    return tuple(1 - t * (1 - c) for c in to_rgb(color))


def _ramp(n: int) -> list[float]:
    return [1.0] if n <= 1 else list(np.linspace(0.45, 1.0, n))


def _lists(cells: list[dict]) -> dict:
    return {k: [c[k] for c in cells] for k in ("mean", "ci_low", "ci_high")}


def _curve(ax, x, cells: list[dict], label: str, metric: str = "acc", dodge: float = 0.0, **kw) -> None:
    """Mean with its interval clipped to the metric's range: a shaded band, or error bars for a single point
    (moved sideways by the factor 2**dodge on a log axis, so points at the same x stay apart)."""
    if len(x) >= 2:
        band(ax, x, _lists(cells), label, metric=metric, **kw)
    else:
        errbar(ax, [v * 2 ** dodge for v in x], cells, label, metric=metric, **kw)


def _log_x(ax, values: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlim(min(values) / 1.5, max(values) * 1.5)


def _references(ax, fam: str, summary: dict) -> None:
    """Horizontal ZSL (k = 0) lines per variant and the chance level where the family defines one."""
    zsl = summary["accuracy"][fam].get("zsl")
    if zsl:
        for v in ("clean", "misleading"):
            ax.axhline(zsl[v]["mean"], color=COLORS["zsl"], ls=VARIANT_STYLE[v], lw=1.2,
                       label=f"ZSL (k = 0, no tuning), {v}")
    chance = summary.get("chance", {}).get(fam)
    if chance is not None:
        ax.axhline(chance, color=COLORS["chance"], ls=":", lw=1.5,
                   label="chance (uniform guess; all: mean of the families')")


def _fig_legend(fig, axes, ncol: int = 3) -> None:
    """One legend above the figure for the series of `axes` (each label once)."""
    keep: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            keep.setdefault(label, h)
    fig.legend(keep.values(), keep.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)


def _accuracy_curves(out: Path, summary: dict) -> Path:
    fams = summary["families"] + ["all"]
    fig, axes = plt.subplots(len(fams), 2, figsize=(11, 3.0 * len(fams) + 1.2), sharey=True, squeeze=False)
    for row, fam in zip(axes, fams, strict=True):
        ax_icl, ax_ft = row
        ic = summary["icl_curve"][fam]
        idx = [i for i, k in enumerate(ic["k"]) if k > 0]
        ks = [ic["k"][i] for i in idx]
        ft_series = [(m, v) for m in summary["ft_curve"][fam] for v in ("clean", "misleading")]
        for j, v in enumerate(("clean", "misleading")):
            if ks:
                _curve(ax_icl, ks, [ic[v][i] for i in idx], f"ICL, {v}", color=COLORS["icl"], ls=VARIANT_STYLE[v],
                       dodge=0.08 * (j - 0.5), **VARIANT_MARKER[v])
        for j, (m, v) in enumerate(ft_series):
            fc = summary["ft_curve"][fam][m]
            _curve(ax_ft, fc["n"], fc[v], f"{KIND_NAME['ft_' + m]}, {v}", color=COLORS[f"ft_{m}"],
                   ls=VARIANT_STYLE[v], dodge=0.08 * (j - (len(ft_series) - 1) / 2), **VARIANT_MARKER[v])
        name = "mean over families" if fam == "all" else fam
        for ax in row:
            _references(ax, fam, summary)
            ax.set_ylim(*ACC_YLIM)
            ax.set_ylabel("accuracy")
        if ks:
            _log_x(ax_icl, ks)
        else:
            ax_icl.set_xticks([])
        ns = sorted({n for fc in summary["ft_curve"][fam].values() for n in fc["n"]})
        if ns:
            _log_x(ax_ft, ns)
        ax_icl.set_xlabel("k demonstrations (log scale; k = 0 is the ZSL line)")
        ax_ft.set_xlabel("N fine-tuning samples (log scale)")
        ax_icl.set_title(f"{name}: ICL accuracy vs k")
        ax_ft.set_title(f"{name}: FT accuracy vs N")
    if summary.get("chance", {}).get("all") is None:  # said in the legend, beside the chance line's entry
        axes[-1, 0].plot([], [], ls="none", label="(no chance line for the mean over families: some families "
                                                  "answer open-ended numbers)")
    fig.tight_layout()
    _fig_legend(fig, [axes[0, 0], axes[0, 1], axes[-1, 0]])
    return save(fig, out / "figures/icl_vs_ft_curves.svg")


def _ft_steps(out: Path, steps: dict) -> Path | None:
    if not steps or not any(e["step"] for by_n in steps.values() for e in by_n.values()):
        return None
    fig, axes = plt.subplots(2, len(steps), figsize=(5.8 * len(steps), 7.5), squeeze=False)
    for j, (m, by_n) in enumerate(steps.items()):
        color = COLORS.get(f"ft_{m}", COLORS["zsl"])
        ns = sorted(by_n, key=int)
        for n, t in zip(ns, _ramp(len(ns)), strict=True):
            e = by_n[n]
            if not e["step"]:
                continue
            _curve(axes[0, j], e["step"], e["loss"], f"N = {n}", metric="loss", color=_shade(color, t))
            for v in ("clean", "misleading"):
                _curve(axes[1, j], e["step"], e[v], f"N = {n}, {v}", color=_shade(color, t), ls=VARIANT_STYLE[v],
                       **VARIANT_MARKER[v])
        axes[0, j].set_title(f"{KIND_NAME['ft_' + m]}: training loss")
        axes[0, j].set_ylabel("training loss (minibatch)")
        axes[0, j].set_ylim(bottom=0)
        axes[1, j].set_title(f"{KIND_NAME['ft_' + m]}: accuracy during training (first test items)")
        axes[1, j].set_ylabel("accuracy")
        axes[1, j].set_ylim(*ACC_YLIM)
        for ax in axes[:, j]:
            ax.set_xlabel("optimiser step")
            ax.legend()
    fig.tight_layout()
    return save(fig, out / "figures/ft_steps.svg")


def _robustness_scatter(out: Path, summary: dict) -> Path:
    fams = summary["families"] + ["all"]
    settings = [s for s in summary["accuracy"]["all"] if s != "icl_k0"]  # icl_k0 is the ZSL prompt: shown as ZSL
    by_kind: dict[str, list[str]] = {}
    for s in settings:
        by_kind.setdefault(_kind(s), []).append(s)
    shade = {s: t for group in by_kind.values() for s, t in zip(group, _ramp(len(group)), strict=True)}
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.plot([0, 1], [0, 1], color=COLORS["chance"], lw=0.8, label="clean = misleading (no accuracy lost)")
    for i, fam in enumerate(fams):
        big = fam == "all"
        marker = "o" if big else FAMILY_MARKERS[i % len(FAMILY_MARKERS)]
        for s in settings:
            cell = summary["accuracy"][fam][s]
            x, y = cell["clean"]["mean"], cell["misleading"]["mean"]
            color = _shade(COLORS[_kind(s)], shade[s])
            zsl = s == "zsl"
            if big:
                xerr = [[max(x - cell["clean"]["ci_low"], 0)], [max(cell["clean"]["ci_high"] - x, 0)]]
                yerr = [[max(y - cell["misleading"]["ci_low"], 0)], [max(cell["misleading"]["ci_high"] - y, 0)]]
                ax.errorbar([x], [y], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="none", ecolor=color,
                            alpha=0.6, capsize=2, lw=1, zorder=2)
            # ZSL hollow and on top, so a setting at the same point (e.g. ICL that changed nothing) never hides it
            ax.scatter([x], [y], marker=marker, s=(130 if zsl else 90) if big else (60 if zsl else 30),
                       facecolors="none" if zsl else [color], edgecolors=[COLORS["zsl"]] if zsl or big else "none",
                       linewidths=1.8 if zsl else 0.8, alpha=1.0 if big else 0.75, zorder=5 if zsl else 3)
    handles = [Line2D([], [], ls="none", marker="o", mfc="none", mec=COLORS["zsl"], mew=1.8, ms=9,
                      label="ZSL (= ICL k = 0), hollow")]
    fewer = {"icl": "shots", "ft_full": "samples", "ft_lora": "samples"}
    handles += [Line2D([], [], ls="none", marker="o", color=COLORS[k], ms=8,
                       label=f"{KIND_NAME[k]} (lighter: fewer {fewer[k]})") for k in fewer if k in by_kind]
    handles += [Line2D([], [], ls="none", marker=FAMILY_MARKERS[i % len(FAMILY_MARKERS)], color=COLORS["chance"],
                       ms=7, label=f) for i, f in enumerate(summary["families"])]
    handles += [Line2D([], [], ls="none", marker="o", color=COLORS["chance"], mec="k", ms=10,
                       label="mean over families (95% CI)"), *ax.get_legend_handles_labels()[0]]
    ax.set_xlim(*ACC_YLIM)
    ax.set_ylim(*ACC_YLIM)
    ax.set_aspect("equal")
    ax.set_xlabel("accuracy on clean items")
    ax.set_ylabel("accuracy on misleading items")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title("Robustness: below the diagonal = accuracy lost to the shortcut")
    return save(fig, out / "figures/robustness_scatter.svg")


def _changed_bars(out: Path, summary: dict) -> Path | None:
    ch = summary.get("changed_vs_zsl") or {}
    if not ch:
        return None
    names = list(ch)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.8))
    for i, s in enumerate(names):
        d = ch[s]
        err = np.nan_to_num([[max(d["mean"] - d["ci_low"], 0)], [max(d["ci_high"] - d["mean"], 0)]])
        ax.bar([i], [d["mean"]], yerr=err, capsize=4, color=COLORS[_kind(s)], width=0.6)
    ax.axhline(TINY_CHANGED, color=COLORS["chance"], ls=":", lw=1.5,
               label=f"{100 * TINY_CHANGED:g}%: below it a caveat, not testable with accuracy as ZSL's")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("setting (ICL: largest k; FT: largest N)")
    ax.set_ylabel("share of items whose correctness\ndiffers from zero-shot's")
    ax.set_title("Did the setting change anything? (95% Wilson CI over seeds)")
    ax.legend()
    return save(fig, out / "figures/changed_vs_zsl.svg")


def _heat_matrix(cells: list[dict], n_layers: int, n_heads: int) -> tuple[np.ndarray, dict]:
    """(layer, head) matrix with the MLP as the last column, and (layer, head) -> its cell's position."""
    mat = np.full((n_layers, n_heads + 1), np.nan)
    for c in cells:
        mat[c["layer"], c["head"] if c["head"] >= 0 else n_heads] = c["effect"]
    return mat, {(c["layer"], c["head"]): (c["layer"], c["head"] if c["head"] >= 0 else n_heads) for c in cells}


def _top_cells(cells: list[dict], k: int) -> list[tuple[int, int]]:
    e = np.nan_to_num(np.abs([c["effect"] for c in cells]), nan=0.0)
    return [(cells[i]["layer"], cells[i]["head"]) for i in np.argsort(-e, kind="stable")[:k]]


def _outline(ax, pos: dict, keys, **kw) -> None:
    for key in keys:
        r, c = pos[key]
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, **kw))


def _circuit_heatmaps(out: Path, summary: dict) -> Path | None:
    circ = summary["circuits"]
    heat, k = circ["mean_effects"], int(circ["top_k"])
    hf = [f for f in summary["families"] if "base" in heat.get(f, {})]
    if not hf:
        return None
    cols = [("base", "base model (ZSL)"), ("icl", "ICL − base"), ("ft", "FT − base")]
    fig, axes = plt.subplots(len(hf), 3, figsize=(14.5, 2.9 * len(hf) + 1.2), squeeze=False, layout="constrained")
    mats = {}
    for fam in hf:
        cells = heat[fam]["base"]
        n_layers = max(c["layer"] for c in cells) + 1
        n_heads = max(c["head"] for c in cells) + 1
        base, pos = _heat_matrix(cells, n_layers, n_heads)
        mats[fam] = {"base": (base, pos, _top_cells(cells, k))}
        for s in ("icl", "ft"):
            if heat[fam].get(s):
                m, _ = _heat_matrix(heat[fam][s], n_layers, n_heads)
                mats[fam][s] = (m - base, pos, _top_cells(heat[fam][s], k))
    vb = np.nanmax([np.nanmax(np.abs(v["base"][0])) for v in mats.values()])
    vb = vb if vb == vb and vb > 0 else 1.0
    vd = np.nanmax([np.nanmax(np.abs(v[s][0])) for v in mats.values() for s in ("icl", "ft") if s in v] or [1.0])
    vd = vd if vd == vd and vd > 0 else 1.0
    im_b = im_d = None
    for i, fam in enumerate(hf):
        for j, (s, title) in enumerate(cols):
            ax = axes[i, j]
            if s not in mats[fam]:
                ax.axis("off")
                continue
            mat, pos, top = mats[fam][s]
            if s == "base":
                # interpolation none: the SVG holds one pixel per cell, drawn crisp, instead of a 300 dpi raster
                im_b = ax.imshow(mat, cmap=BASE_CMAP, vmin=-vb, vmax=vb, aspect="auto", interpolation="none")
            else:
                im_d = ax.imshow(mat, cmap=DIFF_CMAP, vmin=-vd, vmax=vd, aspect="auto", interpolation="none")
                _outline(ax, pos, mats[fam]["base"][2], ec=COLORS["zsl"], lw=1.0, ls="--")
            _outline(ax, pos, top, ec=COLORS["zsl"], lw=2.0)
            n_heads = mat.shape[1] - 1
            ax.set_xticks(range(n_heads + 1), [str(h) for h in range(n_heads)] + ["MLP"])
            ax.set_yticks(range(mat.shape[0]))
            ax.set_title(f"{fam}: {title}")
            ax.set_xlabel("attention head (last column: MLP)")
            ax.set_ylabel("layer")
    if im_b is not None:
        fig.colorbar(im_b, ax=axes[:, 0], shrink=0.9, label="patching effect (base model)")
    if im_d is not None:
        fig.colorbar(im_d, ax=axes[:, 1:], shrink=0.9, label="effect difference from the base model")
    fig.legend(handles=[Patch(fill=False, ec=COLORS["zsl"], lw=2.0, label=f"the setting's top-{k} components"),
                        Patch(fill=False, ec=COLORS["zsl"], lw=1.0, ls="--",
                              label=f"the base model's top-{k} (difference maps)")],
               loc="outside upper center", ncol=2, frameon=False)
    return save(fig, out / "figures/circuit_heatmaps.svg")


def _patching_agreement(out: Path, records: pd.DataFrame, summary: dict) -> Path | None:
    if "setting" not in records or "effect_attr" not in records:
        return None
    eff = records[(records["kind"] == "effect") & records["setting"].isin(["base", "icl", "ft"])].dropna(
        subset=["effect", "effect_attr"])
    if not len(eff):
        return None
    ft_kind = _kind(summary["circuits"].get("ft_setting", "ft_full_N0"))
    style = {"base": ("base model (ZSL)", COLORS["zsl"]), "icl": ("ICL", COLORS["icl"]),
             "ft": (f"{KIND_NAME[ft_kind]} (fine-tuned)", COLORS[ft_kind])}
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    for s in ("base", "icl", "ft"):
        g = eff[eff["setting"] == s]
        ax.scatter(g["effect"], g["effect_attr"], s=9, alpha=0.5, label=style[s][0], color=style[s][1], lw=0)
    lim = float(np.nanmax(np.abs(eff[["effect", "effect_attr"]].to_numpy()))) or 1.0
    ax.plot([-lim, lim], [-lim, lim], color=COLORS["chance"], lw=0.8, label="attribution = exhaustive")
    ax.set_xlabel("exhaustive activation patching effect")
    ax.set_ylabel("attribution patching estimate")
    ax.set_title("Attribution vs exhaustive patching")
    ax.legend()
    return save(fig, out / "figures/patching_agreement.svg")


def figures(out: Path, records: pd.DataFrame, summary: dict) -> dict[str, Path]:
    """The page's figures by caption (a figure with nothing to show is left out), drawn side by side (draw_all)."""
    chance_note = ("chance: uniform guess over the answer set" if summary.get("chance", {}).get("all") is not None
                   else "chance per family where the answers form a closed set; none for the mean over families, "
                   "since some families answer open-ended numbers")
    heatmaps = (f"circuit heatmaps: mean {summary['circuits']['method']} patching effect per head and MLP of the "
                "base model, and the ICL − base and FT − base differences (mean over seeds); solid boxes: the "
                f"setting's top-{summary['circuits']['top_k']} components by |effect|, dashed: the base model's")
    tasks = {
        "ICL accuracy vs k demonstrations (left) and FT accuracy vs N training samples (right); clean items solid, "
        f"misleading dashed; black lines: zero-shot (k = 0); grey dotted: {chance_note}; shading or bars: 95% CI "
        "over seeds": (_accuracy_curves, out, summary),
        "fine-tuning loss and accuracy over steps (mean over families, 95% CI over seeds; darker: larger N)":
            (_ft_steps, out, summary.get("ft_steps") or {}),
        "robustness: clean vs misleading accuracy for every setting and family (ZSL hollow; ICL k = 0 is the same "
        "prompt as ZSL and is shown once)": (_robustness_scatter, out, summary),
        "share of eval items (every family and variant) whose correctness differs from zero-shot's":
            (_changed_bars, out, summary),
        heatmaps: (_circuit_heatmaps, out, summary),
        "attribution vs exhaustive patching (every component, setting and seed)":
            (_patching_agreement, out, records, summary),
    }
    drawn = draw_all(list(tasks.values()), first=(list(tasks).index(heatmaps),))  # the heatmaps take the longest
    return {c: p for c, p in zip(tasks, drawn, strict=True) if p}


def _check_effect(t: dict) -> str:
    """What a setting's moved check does to the claims resting on it (older runs: `barely_changed` only)."""
    if t.get("barely_moved", t.get("barely_changed")):
        return "not testable (barely changed the model's answers)"
    return "caveat (changed few answers)" if t.get("weak") else "tested as they are"


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
    for m, r in summary.get("robustness", {}).items():
        out.append(f"<b>Accuracy lost to misleading items</b> (clean − misleading, mean over families, per seed): "
                   f"ICL ({H.esc(r['icl'])}) {H.fmt_ci(r['drop_icl'], 2)}, FT {H.esc(m)} ({H.esc(r['ft'])}) "
                   f"{H.fmt_ci(r['drop_ft'], 2)}; FT − ICL = {H.fmt_ci(r['effect'], 2)} (&gt; 0: ICL the more robust).")
    ch = summary.get("changed_vs_zsl") or {}
    if ch:
        txt = ", ".join(f"{H.esc(s)} {100 * d['mean']:.1f}%" for s, d in ch.items() if d["mean"] == d["mean"])
        out.append(f"<b>Did it change anything?</b> Share of eval items whose correctness differs from zero-shot's: "
                   f"{txt}. A setting (ICL or fine-tuning) that changes almost nothing cannot be compared with the "
                   "other.")
    floor = summary.get("floor")
    if floor:
        state = ("at floor: every claim is not testable" if floor["at_floor"] else
                 "at ceiling: every claim is not testable" if floor["at_ceiling"] else
                 "neither at floor nor at ceiling" if summary["n_seeds"] >= MIN_SEEDS else
                 f"not checked (fewer than {MIN_SEEDS} seeds)")
        out.append(f"<b>Floor and ceiling.</b> Chance level of the mean over families: {floor['chance']:.2f} (the "
                   "mean of the families' chance levels; an open-ended number answer counts 0). The model is "
                   f"{state} (zero-shot, ICL at the largest k and FT at the largest N, clean and misleading items: "
                   "all of their accuracy intervals contain chance, or all reach 1).")
    sh = summary["circuit_shift"].get("all", {})
    if sh and sh.get("icl"):
        out.append(
            f"<b>Circuit shift</b> from the base model ({summary['circuits']['method']} patching, top-"
            f"{summary['circuits']['top_k']}): ICL 1 − cos = {H.fmt_ci(sh['icl']['cosine'])}, 1 − Jaccard = "
            f"{H.fmt_ci(sh['icl']['jaccard'])}; FT 1 − cos = {H.fmt_ci(sh['ft']['cosine'])}, 1 − Jaccard = "
            f"{H.fmt_ci(sh['ft']['jaccard'])}.")
    ag = summary["patching_agreement"]
    line = (f"<b>Attribution vs exhaustive patching</b> (base model): Spearman ρ over all components = "
            f"{H.fmt_ci(ag['spearman'])}, over the top components = {H.fmt_ci(ag['spearman_top'])}; attribution "
            f"is {H.fmt_ci(ag['speedup'], 1)}× faster.")
    if "n_rankable" in ag:  # older summaries lack it
        small = (f"no component's exhaustive effect reaches {ag['min_effect']:.0%} of the clean − corrupted logit "
                 "difference")
        if ag["n_rankable"] == 0:
            line += f" The effects are too small to rank ({small} in any family and seed): these ρ measure noise."
        else:
            r = ag["rankable"]
            line += (f" Where the effects are real ({ag['n_rankable']} of {ag['n_units']} family × seed units; in "
                     f"the others {small}): ρ = {H.fmt_ci(r['spearman'])} signed, {H.fmt_ci(r['spearman_abs'])} "
                     "on |effect|.")
    out.append(line)
    return out


def write_report(out: Path, records: pd.DataFrame, summary: dict, spec, model_info: dict) -> Path:
    out = Path(out)
    figs = figures(out, records, summary)
    n_seeds = summary["n_seeds"]
    parts = [H.index_link(out), H.small_run_banner(getattr(spec, "preset", "default"), n_seeds,
                                                   f"{n_seeds} seeds × {spec.n_eval} items per family and variant")]
    parts += [H.stand_in_note("implicit patterns")] if model_info.get("builtin_stand_in") else []
    parts.append(H.warnings_section(summary.get("warnings", [])))
    rules = ", ".join(f"{f}: {r}" for f, r in summary["rules"].items())
    # the steps each N actually trains for (FinetuneSpec.steps_for: `steps` is a minimum when `epochs` is set)
    steps = {m: ", ".join(f"N = {n}: {getattr(spec, m).steps_for(n)}" for n in sorted(spec.ft_sizes))
             for m in spec.ft_methods}
    names = {"full": "full", "lora": "LoRA"}
    steps_text = (f"{next(iter(steps.values()))} ({' and '.join(names[m] for m in steps)})"
                  if len(set(steps.values())) == 1 else "; ".join(f"{v} ({names[m]})" for m, v in steps.items()))
    parts.append(
        f"<p>Model <code>{H.esc(model_info.get('model'))}</code> ({H.esc(model_info.get('family'))}, "
        f"{model_info.get('n_layers')} layers, {model_info.get('n_params', 0):,} parameters); {summary['n_seeds']} "
        f"seeds × {spec.n_eval} test items per variant; rules (held out of pretraining by default): {H.esc(rules)}; "
        f"item size <b>{H.esc(summary.get('size', 'paper'))}</b> ({H.esc(_sizes_text(summary))}). "
        f"Fine-tuning: AdamW steps {steps_text}, of {spec.full.batch_size} / {spec.lora.batch_size} examples (full "
        f"/ LoRA), constant LR after warmup, loss on {spec.full.loss_on} tokens. Accuracy is "
        "exact match of the normalised answer (label scoring for closed answer sets, greedy decoding otherwise).</p>")
    parts.append(H.headlines_section(summary.get("headlines", []), MULTIPLICITY))
    parts.append("<h2>Findings</h2>" + "".join(f'<div class="finding">{f}</div>' for f in findings(summary)))
    checks = [*summary.get("tuning", {}).values(), *([summary["icl_check"]] if summary.get("icl_check") else [])]
    if summary.get("changed_vs_zsl"):
        acc_all = summary["accuracy"]["all"]
        parts.append(
            "<h2>Did fine-tuning (and ICL) change anything?</h2><p>The records keep each item's correctness, so "
            "the measure is the share of eval items (every family, both variants) whose correctness differs from "
            f"zero-shot's (95% Wilson interval across seeds). iclft puts a caveat on the claims resting on a "
            f"setting (ICL at the largest k, FT at the largest N) that changes under {100 * TINY_CHANGED:g}% of the "
            "items, and calls them not testable when its accuracy also equals zero-shot's within its interval.</p>"
            + H.csv_table(out, "changed_vs_zsl", ["setting", "items changed vs ZSL", "accuracy clean",
                                                  "accuracy misleading", "claims resting on it"],
                          [[s, H.fmt_ci(d, 3), H.fmt_ci(acc_all.get(s, {}).get("clean"), 2),
                            H.fmt_ci(acc_all.get(s, {}).get("misleading"), 2),
                            next((_check_effect(t) for t in checks if t["setting"] == s), "—")]
                           for s, d in summary["changed_vs_zsl"].items()]))
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
               "metrics.html, Implicit patterns); robustness effect = (acc_clean − acc_misleading) of FT minus that "
               "of ICL, per seed on the mean over families (> 0: ICL loses less to the misleading items); items "
               "changed vs ZSL = share of eval items whose correctness differs from zero-shot's. records.parquet: "
               "kind = acc (one row per test item and setting), "
               "curve (one row per recorded FT step), effect (one row per component and circuit setting)")
