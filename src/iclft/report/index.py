"""The top-level page of `iclft run all`, and re-rendering a run directory's report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from iclft import UserError
from iclft.report import html as H
from iclft.sweep import atomic_write_text


def write_index(out: Path, runs: dict[str, Path]) -> Path:
    parts = ["<p>One report per study; each directory also holds records.parquet, summary.json and "
             "manifest.json.</p><ul>"]
    for name, path in runs.items():
        rel = Path(path).relative_to(out) / "report.html"
        parts.append(f'<li><a href="{H.esc(rel)}">{H.esc(name)}</a></li>')
    parts.append("</ul>")
    path = Path(out) / "report.html"
    atomic_write_text(path, H.page("iclft — all studies", parts))
    return path


def rerender(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        records = pd.read_parquet(run_dir / "records.parquet")
        spec_data = yaml.safe_load((run_dir / "spec.yaml").read_text())
        info = json.loads((run_dir / "manifest.json").read_text())["model"]
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name
        raise UserError(f"{str(run_dir)!r} is not a finished run directory (missing {missing})") from None
    study = summary.get("study")
    if study == "convergence":
        from iclft.report.convergence import write_report
        from iclft.studies.convergence import ConvergenceSpec

        return write_report(run_dir, records, summary, ConvergenceSpec(**spec_data), info)
    if study == "dual":
        from iclft.report.dual_view import write_report
        from iclft.studies.dual_view import DualSpec

        return write_report(run_dir, records, summary, DualSpec(**spec_data), info)
    if study == "implicit":
        from iclft.report.implicit import write_report
        from iclft.studies.implicit_patterns import ImplicitSpec

        return write_report(run_dir, records, summary, ImplicitSpec(**spec_data), info)
    raise UserError(f"no report renderer for study {study!r}")
