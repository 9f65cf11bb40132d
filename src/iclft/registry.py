"""Every study with its report: the one place that knows both. The CLI, `iclft report` and the index page
read it; adding a study is a study module, a report module and one line here. Running is iclft.sweep's."""

from __future__ import annotations

from pathlib import Path

from iclft import UserError, rundir
from iclft.report import convergence as convergence_report
from iclft.report import dual_view as dual_report
from iclft.report import implicit as implicit_report
from iclft.studies import convergence, dual_view, implicit_patterns
from iclft.studies.protocol import Study

STUDIES: dict[str, Study] = {s.name: s for s in (
    convergence.STUDY.rendered_by(convergence_report.write_report),
    dual_view.STUDY.rendered_by(dual_report.write_report),
    implicit_patterns.STUDY.rendered_by(implicit_report.write_report),
)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    return STUDIES[name]


def rerender(run_dir: Path) -> Path:
    """Re-render report.html (and figures) of a finished run directory from its records and summary."""
    summary, records, spec_data, info = rundir.read_finished(run_dir)
    study = STUDIES.get(summary.get("study"))
    if study is None or study.render is None:
        raise UserError(f"no report renderer for study {summary.get('study')!r}")
    return study.render(Path(run_dir), records, summary, study.spec(**spec_data), info)
