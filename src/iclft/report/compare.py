"""Several finished runs side by side: every headline number with its interval, per study, one column per run
(like Dai et al.'s 1.3B-vs-2.7B tables), and each headline metric against model size (like Yin et al.'s size
curves). Reads only what run directories hold (summary.json, manifest.json), so any runs compare: a sweep's
cells, `run all` directories, runs of different models made months apart."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from iclft import UserError, rundir  # noqa: E402
from iclft.metrics.stats import MIN_SEEDS
from iclft.report import html as H  # noqa: E402
from iclft.rundir import atomic_write_bytes, atomic_write_text  # noqa: E402


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
    """One row per (run, headline): study, run label, model, size, claim, metric, value and interval, verdict."""
    rows = []
    for run in runs:
        rundir.check_finished(run)  # an edited summary or manifest must not be compared as if true
        try:
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
            manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{str(run)!r}: unreadable run files ({exc})") from None
        model = manifest.get("model", {})
        label = str(run.relative_to(root)) if root is not None and run.is_relative_to(root) else str(run)
        for h in summary.get("headlines", []):
            v = h.get("value", {})
            rows.append({"study": summary.get("study", manifest.get("study", "?")), "run": label,
                         "model": model.get("model"), "n_params": model.get("n_params"),
                         "seeds": summary.get("n_seeds"), "claim": h["claim"], "metric": h["metric"],
                         "mean": v.get("mean"), "ci_low": v.get("ci_low"), "ci_high": v.get("ci_high"),
                         "paper": h.get("paper"), "verdict": h.get("verdict"), "caveat": h.get("caveat") or "",
                         "path": str(run)})
    return rows


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _size(n) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


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

    small = sorted({r["run"] for r in rows if (r["seeds"] or 0) < MIN_SEEDS})
    parts = [H.small_run_banner("small", 0, f"{len(small)} of the runs compared have fewer seeds "
                                f"({', '.join(small)})") if small else "",
             "<p>Each study's headline claims (rows) in every run (columns): the value with its 95% interval across "
             "seeds and the verdict. Runs are ordered by model size. Figures plot each headline metric against "
             "model size. <a href=\"compare.csv\">compare.csv</a> holds every number.</p>"]
    for study in dict.fromkeys(r["study"] for r in rows):
        srows = [r for r in rows if r["study"] == study]
        run_order = sorted(dict.fromkeys(r["run"] for r in srows),
                           key=lambda run: (next(r["n_params"] or 0 for r in srows if r["run"] == run), run))
        meta = {r["run"]: r for r in srows}
        head = ["claim", "paper"] + [f"{H.esc(run)}<br><small>{H.esc(meta[run]['model'])}, "
                                     f"{_size(meta[run]['n_params'])}, {meta[run]['seeds']} seeds</small>"
                                     for run in run_order]
        table = []
        for claim in dict.fromkeys(r["claim"] for r in srows):
            cells = {r["run"]: r for r in srows if r["claim"] == claim}
            first = next(iter(cells.values()))
            row = [H.esc(claim) + f"<br><small>{H.esc(first['metric'])}</small>", H.esc(first["paper"])]
            for run in run_order:
                r = cells.get(run)
                if r is None:
                    row.append("—")
                    continue
                link = Path(r["path"]).relative_to(out) if Path(r["path"]).is_relative_to(out) else Path(r["path"])
                row.append(f'<a href="{H.esc(link / "report.html")}">'
                           f'{H.esc(H.fmt_ci(dict(mean=r["mean"], ci_low=r["ci_low"], ci_high=r["ci_high"])))}'
                           f'</a><br>{H.verdict_cell(r)}')
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
    """One panel per headline metric: value (95% CI) against parameters, log scale; runs of one size side by side."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    if not any(r["n_params"] for r in rows):
        return None
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mrows = sorted((r for r in rows if r["metric"] == metric and r["n_params"]), key=lambda r: r["n_params"])
        x = [r["n_params"] for r in mrows]
        y = [_num(r["mean"]) for r in mrows]
        lo = [max(0.0, yy - _num(r["ci_low"])) if math.isfinite(yy) else 0 for yy, r in zip(y, mrows, strict=True)]
        hi = [max(0.0, _num(r["ci_high"]) - yy) if math.isfinite(yy) else 0 for yy, r in zip(y, mrows, strict=True)]
        lo = [v if math.isfinite(v) else 0 for v in lo]
        hi = [v if math.isfinite(v) else 0 for v in hi]
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o-", color="#0072B2", capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(metric)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(labelsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{study}: headline metrics vs model size (95% CI)", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    return buf.getvalue()
