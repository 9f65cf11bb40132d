"""The top-level page of `iclft run all`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from iclft import rundir
from iclft.metrics.stats import MULTIPLICITY
from iclft.report import html as H
from iclft.rundir import atomic_write_text


def write_index(out: Path, runs: dict[str, Path]) -> Path:
    """One table answering the question: every study's headline claims, this run's value with its interval, the
    paper's value and a verdict, linking to each study's report; above it, what was run (model, weights, iclft,
    date, preset)."""
    rows, csv_rows, notes, presets, seeds, about = [], [], [], [], {}, {}
    for name, path in runs.items():
        rel = Path(path).relative_to(out) / "report.html"
        summary = json.loads((Path(path) / "summary.json").read_text(encoding="utf-8"))
        spec = yaml.safe_load((Path(path) / "spec.yaml").read_text(encoding="utf-8"))
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
        about[name] = _about(manifest, spec, summary)
        link = f'<a href="{H.esc(rel)}">{H.esc(name)}</a>'
        notes.append(f"{link}: {summary.get('n_seeds')} seeds, preset {H.esc(spec.get('preset', 'default'))}")
        presets.append(spec.get("preset", "default"))
        seeds[name] = int(summary.get("n_seeds") or 0)
        for h in summary.get("headlines", []):
            rows.append([link, H.esc(h["claim"]), H.esc(h["metric"]) + "<br>" + H.esc(H.fmt_value(h)),
                         H.esc(h["paper"]), H.verdict_cell(h)])
            csv_rows.append([name, h["claim"], h["metric"], H.fmt_value(h), h["paper"], h["verdict"],
                             h.get("caveat") or "", h.get("sesoi", "")])
    size = (f"{next(iter(seeds.values()))} seeds in every study" if len(set(seeds.values())) == 1
            else ", ".join(f"{n} seeds in {name}" for name, n in seeds.items()))
    parts = [H.small_run_banner(presets, min(seeds.values(), default=0), size),
             about_table(about),
             "<p>Does in-context learning change the model the way fine-tuning does? Each row is one claim of the "
             "papers, this run's number with its 95% interval across seeds, the published value and a verdict. "
             "Follow the study's link for methods, per-seed values, figures and every other number.</p>",
             H.raw_table(["study", "claim", "this run (95% CI)", "paper", "verdict"], rows),
             f"<p><small>{H.esc(MULTIPLICITY)} (within each study).</small></p>",
             "<p>Runs: " + "; ".join(notes) + ". Each directory also holds records.parquet, summary.json and "
             "manifest.json; <a href='" + H.esc(next(iter(runs), "")) + "/metrics.html'>metrics.html</a> defines "
             "every metric.</p>"]
    buf = io.StringIO()
    csv.writer(buf).writerows([["study", "claim", "metric", "this run (95% CI)", "paper", "verdict", "caveat",
                                "smallest effect of interest"],
                               *csv_rows])
    atomic_write_text(Path(out) / "headlines.csv", buf.getvalue())
    parts.append('<p><a href="headlines.csv">headlines.csv</a></p>')
    path = Path(out) / "report.html"
    atomic_write_text(path, H.page("iclft — does ICL change the model the way fine-tuning does?", parts))
    return path


def _about(manifest: dict, spec: dict, summary: dict) -> dict[str, str]:
    """What one study ran, as text per field (HTML)."""
    m = manifest.get("model", {})
    sha = m.get("model_sha256")
    commit, note = manifest.get("iclft_commit"), ""
    if commit is None:  # the manifest records none: the commit of the code writing this page, said as such
        commit, note = rundir.code_commit(), " (of the code that wrote this page)"
    commit = f"commit <code>{H.esc(commit)}</code>{note}" if commit else "commit not recorded"
    stand_in = ", a randomly initialised stand-in" if m.get("builtin_stand_in") else ""
    when = (manifest.get("finished_at") or "").replace("T", " ").replace("Z", " UTC") or "unknown"
    return {
        "model": (f"<code>{H.esc(m.get('model'))}</code> ({H.esc(m.get('family'))}, {m.get('n_layers')} layers, "
                  f"{m.get('n_params') or 0:,} parameters{stand_in}); weights SHA-256 "
                  f"<code>{H.esc(sha[:16] + '…' if sha else 'not hashed')}</code>"),
        "iclft": f"{H.esc(manifest.get('iclft_version'))}, {commit}",
        "finished": H.esc(when),
        "preset": f"<b>{H.esc(spec.get('preset', 'default'))}</b>, {summary.get('n_seeds')} seeds",
    }


def about_table(about: dict[str, dict[str, str]]) -> str:
    """What was run, one row per field; a value every study shares is said once, else per study."""
    rows = []
    for field in ("model", "iclft", "finished", "preset"):
        values = {name: a[field] for name, a in about.items()}
        if field == "finished":  # one date: when the last study finished
            values = {"": max(values.values())}
        cell = (next(iter(values.values())) if len(set(values.values())) == 1
                else "<br>".join(f"{H.esc(n)}: {v}" for n, v in values.items()))
        rows.append(f"<tr><th>{field}</th><td>{cell}</td></tr>")
    return f'<table class="text about">{"".join(rows)}</table>'
