"""The top-level page of `iclft run all`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from iclft.metrics.stats import MULTIPLICITY
from iclft.report import html as H
from iclft.rundir import atomic_write_text


def write_index(out: Path, runs: dict[str, Path]) -> Path:
    """One table answering the question: every study's headline claims, this run's value with its interval, the
    paper's value and a verdict, linking to each study's report."""
    rows, csv_rows, notes, banners = [], [], [], []
    for name, path in runs.items():
        rel = Path(path).relative_to(out) / "report.html"
        summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
        spec = yaml.safe_load((Path(path) / "spec.yaml").read_text(encoding="utf-8"))
        link = f'<a href="{H.esc(rel)}">{H.esc(name)}</a>'
        notes.append(f"{link}: {summary.get('n_seeds')} seeds, preset {H.esc(spec.get('preset', 'default'))}")
        banners.append(H.small_run_banner(spec.get("preset", "default"), int(summary.get("n_seeds") or 0),
                                          f"{summary.get('n_seeds')} seeds in {name}"))
        for h in summary.get("headlines", []):
            rows.append([link, H.esc(h["claim"]), H.esc(h["metric"]) + "<br>" + H.esc(H.fmt_value(h)),
                         H.esc(h["paper"]), H.verdict_cell(h)])
            csv_rows.append([name, h["claim"], h["metric"], H.fmt_value(h), h["paper"], h["verdict"],
                             h.get("caveat") or "", h.get("sesoi", "")])
    parts = [next((b for b in banners if b), ""),
             "<p>Does in-context learning change the model the way fine-tuning does? Each row is one claim of the "
             "papers, this run's number with its 95% interval across seeds, the published value and a verdict. "
             "Follow the study's link for methods, per-seed values, figures and every other number.</p>",
             H.raw_table(["study", "claim", "this run (95% CI)", "paper", "verdict"], rows),
             f"<p><small>{H.esc(MULTIPLICITY)} (within each study).</small></p>",
             "<p>Runs: " + "; ".join(notes) + ". Each directory also holds records.parquet, summary.json and "
             "manifest.json.</p>"]
    buf = io.StringIO()
    csv.writer(buf).writerows([["study", "claim", "metric", "this run (95% CI)", "paper", "verdict", "caveat",
                                "smallest effect of interest"],
                               *csv_rows])
    atomic_write_text(Path(out) / "headlines.csv", buf.getvalue())
    parts.append('<p><a href="headlines.csv">headlines.csv</a></p>')
    path = Path(out) / "report.html"
    atomic_write_text(path, H.page("iclft — does ICL change the model the way fine-tuning does?", parts))
    return path
