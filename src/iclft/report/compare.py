"""Several finished runs side by side: every headline number with its interval, per study, one column per run
(like Dai et al.'s 1.3B-vs-2.7B tables), and each headline metric against model size (like Yin et al.'s size
curves). Reads only what run directories hold (summary.json, manifest.json), so any runs compare: a sweep's
cells, `run all` directories, runs of different models made months apart."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from iclft import UserError, rundir  # noqa: E402
from iclft.metrics.stats import MIN_SEEDS
from iclft.report import html as H  # noqa: E402
from iclft.rundir import atomic_write_bytes, atomic_write_text  # noqa: E402
from iclft.yamlfile import read_yaml  # noqa: E402


def find_runs(paths: list[Path]) -> list[Path]:
    """Every finished run directory at or below each path (a run, a `run all` or a sweep directory)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{str(p)!r} is not a directory")
        runs = [p] if (p / "summary.json").is_file() else sorted(s.parent for s in p.rglob("summary.json"))
        if not runs:
            raise UserError(f"{str(p)!r} holds no finished run (no summary.json at or below it)")
        found += [r for r in runs if r not in found]
    return found


def collect(runs: list[Path], root: Path | None = None) -> list[dict]:
    """One row per (run, headline): study, run label, model, size, preset, claim, metric, value and interval (and
    whether the paper prints it in %), verdict. A run's label is its path below `root`, or else below the
    directory that holds every run compared."""
    rows = []
    common = Path(os.path.commonpath([Path(r).absolute().parent for r in runs])) if runs else None
    for run in runs:
        rundir.check_finished(run)  # an edited summary or manifest must not be compared as if true
        try:
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{str(run)!r}: unreadable run files ({exc})") from None
        spec = read_yaml(run / "spec.yaml", "spec file")
        model = manifest.get("model", {})
        if root is not None and run.is_relative_to(root):
            label = str(run.relative_to(root))
        else:
            label = str(Path(run).absolute().relative_to(common))
        for h in summary.get("headlines", []):
            v = h.get("value", {})
            rows.append({"study": summary.get("study", manifest.get("study", "?")), "run": label,
                         "model": model.get("model"), "n_params": model.get("n_params"),
                         "preset": (spec or {}).get("preset", "default"),
                         "seeds": summary.get("n_seeds"), "claim": h["claim"], "metric": h["metric"],
                         "mean": v.get("mean"), "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high"),
                         "percent": bool(h.get("percent")),
                         "paper": h.get("paper"), "verdict": h.get("verdict"), "caveat": h.get("caveat") or "",
                         "path": str(run)})
    return rows


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _size(n) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _model_name(model) -> str:
    """A local model directory by its name (its full path is in manifest.json); a hub id or `builtin` as is."""
    m = str(model)
    return (Path(m).name or m) if m.startswith(("/", ".", "~")) else m


def _value(r: dict) -> str:
    """The value with its interval, in the unit the study page and the index print it (Rec2FTP in %)."""
    return H.fmt_value({"value": {k: r[k] for k in ("mean", "ci_low", "ci_high")}, "percent": r["percent"]})


def _metric_label(metrics: list[str]) -> str:
    """One label for a claim's metric across runs: the metric, or what its runs' labels share (a label may carry
    a run's own number, e.g. Rec2FTP's baseline)."""
    metrics = list(dict.fromkeys(metrics))
    if len(metrics) == 1:
        return metrics[0]
    common = os.path.commonprefix(metrics)
    return common[:common.rfind(" (")].strip() if " (" in common else common.strip(" (,") or metrics[0]


def write_compare(out: Path, paths: list[Path], title: str = "iclft — runs compared",
                  page: str = "compare.html") -> Path:
    """OUT/<page>, OUT/compare.csv and OUT/figures/compare_*.png; returns the page's path."""
    out = Path(out)
    runs = find_runs(paths)
    rows = collect(runs, root=out)
    buf = io.StringIO()
    cols = ["study", "run", "model", "n_params", "seeds", "claim", "metric", "mean", "ci_low", "ci_high", "paper",
            "verdict"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "compare.csv", buf.getvalue())

    seeds = {r["run"]: r["seeds"] or 0 for r in rows}
    small = sorted(run for run, n in seeds.items() if n < MIN_SEEDS)
    size = (f"all {len(seeds)} runs compared have fewer seeds" if len(small) == len(seeds) else
            f"{len(small)} of the {len(seeds)} runs compared have fewer seeds ({', '.join(small)})")
    parts = [H.small_run_banner([r["preset"] for r in rows], min(seeds.values(), default=0), size),
             "<p>Each study's headline claims (rows) in every run (columns): the value with its 95% interval across "
             "seeds and the verdict. Runs are ordered by model size. Figures plot each headline metric against "
             "model size. <a href=\"compare.csv\">compare.csv</a> holds every number.</p>"]
    for study in dict.fromkeys(r["study"] for r in rows):
        srows = [r for r in rows if r["study"] == study]
        run_order = sorted(dict.fromkeys(r["run"] for r in srows),
                           key=lambda run: (next(r["n_params"] or 0 for r in srows if r["run"] == run), run))
        meta = {r["run"]: r for r in srows}
        head = ["claim", "paper"] + [
            f"<div class='run'>{H.esc(run.removesuffix('/' + study))}</div><small>"
            f"{H.esc(_model_name(meta[run]['model']))}, {_size(meta[run]['n_params'])}, {meta[run]['seeds']} seeds, "
            f"preset {H.esc(meta[run]['preset'])}</small>" for run in run_order]
        table = []
        for claim in dict.fromkeys(r["claim"] for r in srows):
            cells = {r["run"]: r for r in srows if r["claim"] == claim}
            first = next(iter(cells.values()))
            label = _metric_label([r["metric"] for r in cells.values()])
            row = [H.esc(claim) + f"<br><small>{H.esc(label)}</small>", H.esc(first["paper"])]
            for run in run_order:
                r = cells.get(run)
                if r is None:
                    row.append("—")
                    continue
                link = Path(r["path"]).relative_to(out) if Path(r["path"]).is_relative_to(out) else Path(r["path"])
                own = f"<br><small>{H.esc(r['metric'])}</small>" if r["metric"] != label else ""
                row.append(f'<a href="{H.esc(link / "report.html")}">{H.esc(_value(r))}</a>{own}<br>'
                           f"{H.verdict_cell(r)}")
            table.append(row)
        parts += [f"<h2>{H.esc(study)}</h2>", H.raw_table(head, table)]
        fig = _size_figure(srows, study)
        if fig is not None:
            atomic_write_bytes(out / "figures" / f"compare_{study}.png", fig)
            parts.append(f'<p><img src="figures/compare_{H.esc(study)}.png" alt="{H.esc(study)} headline metrics '
                         f'against model size" style="max-width:100%"></p>')
    path = out / page
    atomic_write_text(path, H.page(title, parts))
    return path


def _size_figure(rows: list[dict], study: str) -> bytes | None:
    """One panel per headline claim: value (95% CI) against parameters, log scale, ticks at the sizes compared;
    runs of one size side by side. A claim no run could measure says so in its panel."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    claims = list(dict.fromkeys(r["claim"] for r in rows))
    sizes = sorted({r["n_params"] for r in rows if r["n_params"]})
    if not sizes:
        return None
    ncol = min(3, len(claims))
    nrow = math.ceil(len(claims) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.5 * nrow), squeeze=False)
    for ax, claim in zip(axes.flat, claims, strict=False):
        mrows = sorted((r for r in rows if r["claim"] == claim and r["n_params"]), key=lambda r: r["n_params"])
        scale = 100.0 if any(r["percent"] for r in mrows) else 1.0
        x = [r["n_params"] for r in mrows]
        y = [scale * _num(r["mean"]) for r in mrows]
        lo = [max(0.0, yy - scale * _num(r["ci_low"])) for yy, r in zip(y, mrows, strict=True)]
        hi = [max(0.0, scale * _num(r["ci_high"]) - yy) for yy, r in zip(y, mrows, strict=True)]
        lo = [v if math.isfinite(v) else 0 for v in lo]
        hi = [v if math.isfinite(v) else 0 for v in hi]
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color="#0072B2", capsize=3)
        if not any(math.isfinite(v) for v in y):
            ax.text(0.5, 0.5, "undefined in every run\n(see the table)", transform=ax.transAxes, ha="center",
                    va="center", color="#555")
            ax.set_yticks([])
        ax.set_xscale("log")
        # ticks at the sizes compared, labelled like the table (0.5M, 1.3B): matplotlib's minor labels of a range
        # under a decade overlap ("3×10⁶4×10⁶")
        ax.set_xlim(sizes[0] / 1.6, sizes[-1] * 1.6)
        ax.xaxis.set_major_locator(FixedLocator(sizes))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticklabels([_size(n) for n in sizes])
        label = _metric_label([r["metric"] for r in mrows])
        ax.set_xlabel("parameters")
        ax.set_ylabel("%" if scale == 100 else "value")
        ax.set_title("\n".join(textwrap.wrap(label, 42)[:3]), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(claims):]:
        ax.set_visible(False)
    fig.suptitle(f"{study}: headline metrics vs model size (95% CI)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    return buf.getvalue()
