"""The pages around the study reports: the metric definitions, the `run all` index, the sweep index and compare page
(issue 29, part 4). Synthetic run directories where the page only reads files; the session's `run all --quick` where
the page has to agree with what a study computed."""

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from iclft import rundir
from iclft.metrics import stats
from iclft.report import compare as C
from iclft.report import html as H
from iclft.report.index import write_index

# ------------------------------------------------------------------------------------------------ metrics.html


class _Tables(HTMLParser):
    """Every table of a page: rows of cells, each cell (text, [code spans])."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell, self._code = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ["", []]
        elif tag == "code" and self._cell is not None:
            self._code = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "code" and self._code is not None:
            self._cell[1].append(self._code)
            self._code = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._code is not None:
            self._code += data


def _bound(text: str) -> float:
    text = text.strip().replace("−", "-")
    return {"∞": math.inf, "-∞": -math.inf}.get(text, None) or float(text)


def _interval_rules(page: str) -> dict[str, tuple[str, float, float]]:
    """{metric: (method, low, high)} from the metrics page's table of interval rules."""
    parser = _Tables()
    parser.feed(page)
    tables = [t for t in parser.tables if [c[0] for c in t[0]][-1:] == ["interval"]]
    assert len(tables) == 1, "metrics.html has one table of interval rules"
    rules = {}
    for row in tables[0][1:]:
        (_, names), _, (rng, _), (_, method) = row
        low, high = re.fullmatch(r"[\[(](.+),(.+)[\])]", rng).groups()
        for name in names:
            assert name not in rules, f"{name} documented twice"
            rules[name] = (method[0], _bound(low), _bound(high))
    return rules


def test_metrics_page_is_rendered_markdown():
    page = H.metrics_html()
    assert "<pre" not in page and "## " not in page and "|---|" not in page  # no raw Markdown left
    assert '<h2 id="aggregation">Aggregation</h2>' in page
    assert "<table>" in page and "<strong>last token</strong>" in page and "<code>rec2ftp" in page
    assert page.count("<h1>") == 1  # METRICS.md's own title is the page's


def test_metrics_page_gives_every_quantity_its_interval_rule():
    """Each metric in stats.QUANTITIES is in the page's table with the method and range the code uses, and the
    table names no metric the code does not know; every method it names is explained above it."""
    page = H.metrics_html()
    rules = _interval_rules(page)
    table = dict(stats.QUANTITIES)
    missing = sorted(set(table) - set(rules))
    assert not missing, f"metrics undocumented in METRICS.md's Aggregation table: {missing}"
    for name, q in table.items():
        assert rules[name] == (q.method, q.low, q.high), name
    for extra in set(rules) - set(table):  # names that quantity() resolves without a table row (acc, acc_*)
        q = stats.quantity(extra.replace("*", "clean"))
        assert rules[extra] == (q.method, q.low, q.high), extra
    aggregation = page[page.index('id="aggregation"'):page.index("<table", page.index('id="aggregation"'))]
    for method in {*(r[0] for r in rules.values()), "crossed"}:
        assert f"<li><code>{method}</code> — " in aggregation, method
    assert "t-interval across seeds (n ≥ 2)" not in page  # the old rule: every interval a t-interval


def test_the_metrics_page_beside_a_report_is_the_rendered_one(quick_all):
    page = (quick_all / "dual" / "metrics.html").read_text(encoding="utf-8")
    assert page == H.metrics_html()


# ------------------------------------------------------------------------------------------------ run directories


def _run(out: Path, study: str, headlines: list[dict], model="org/model-a", n_params=3_000_000, preset="quick",
         seeds=2, finished="2026-01-02T03:04:05Z", sha="ab" * 32, commit=None) -> Path:
    """A finished run directory holding what the pages read (no records: they never read them)."""
    out.mkdir(parents=True)
    (out / "spec.yaml").write_text(yaml.safe_dump({"model": model, "preset": preset, "seeds": seeds}))
    (out / "summary.json").write_text(json.dumps({"study": study, "n_seeds": seeds, "headlines": headlines}))
    manifest = {"iclft_version": "9.8.7", "finished_at": finished, "study": study,
                "model": {"model": model, "family": "llama", "n_layers": 4, "n_params": n_params,
                          "model_sha256": sha}}
    if commit:
        manifest["iclft_commit"] = commit
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "identity.json").write_text("{}")
    (out / "records.parquet").write_bytes(b"")
    rundir.write_finished(out)
    return out


def _headline(claim, metric, mean, low, high, percent=False, verdict="too few seeds to tell"):
    return {"claim": claim, "metric": metric, "value": {"mean": mean, "ci_low": low, "ci_high": high},
            "paper": "85.6 %", "percent": percent, "verdict": verdict, "caveat": None}


REC2FTP = "ICL recovers most of the queries FT-KV fixes"


def test_run_all_index_says_what_was_run(tmp_path):
    out = tmp_path / "all"
    (out / rundir.ROOT_MARK).parent.mkdir()
    (out / rundir.ROOT_MARK).write_text("run all\n")
    runs = {"dual": _run(out / "dual", "dual", [_headline(REC2FTP, "Rec2FTP", 0.625, 0.5, 0.75, percent=True)],
                         commit="0123456789ab", finished="2026-01-02T03:04:05Z"),
            "convergence": _run(out / "convergence", "convergence", [_headline("c", "d_icl_it", 0.1, -0.2, 0.3)],
                                seeds=5, preset="default", commit="0123456789ab", finished="2026-01-02T04:00:00Z")}
    page = write_index(out, runs).read_text(encoding="utf-8")
    about = page[page.index('class="text about"'):page.index("</table>", page.index('class="text about"'))]
    for text in ("<code>org/model-a</code>", "3,000,000 parameters", "4 layers", "abababababababab…",
                 "9.8.7, commit <code>0123456789ab</code>", "2026-01-02 04:00:00 UTC",  # the last study's end
                 "dual: <b>quick</b>, 2 seeds", "convergence: <b>default</b>, 5 seeds"):
        assert text in about, text
    assert "62.5 [50.0, 75.0] %" in page  # Rec2FTP in % as the paper prints it
    # a study's page links back to this index; one in a sweep to the sweep's, one on its own to none
    assert 'href="../report.html"' in H.index_link(out / "dual")
    sweep = tmp_path / "sw"
    (sweep / "m1" / "dual").mkdir(parents=True)
    (sweep / rundir.ROOT_MARK).write_text("sweep\n")
    assert 'href="../../index.html"' in H.index_link(sweep / "m1" / "dual")
    assert H.index_link(tmp_path / "alone") == "" and H.index_link(sweep / "m1") == ""


def test_run_all_index_without_a_recorded_commit_names_the_code_that_wrote_it(tmp_path, monkeypatch):
    out = tmp_path / "all"
    runs = {"dual": _run(out / "dual", "dual", [])}
    monkeypatch.setattr(rundir, "code_commit", lambda: "feedc0ffee12-dirty")
    page = write_index(out, runs).read_text(encoding="utf-8")
    assert "commit <code>feedc0ffee12-dirty</code> (of the code that wrote this page)" in page
    monkeypatch.setattr(rundir, "code_commit", lambda: None)
    assert "commit not recorded" in write_index(out, runs).read_text(encoding="utf-8")


def test_code_commit_is_this_checkouts_head():
    import subprocess

    src = Path(rundir.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("iclft is not running from a git checkout")
    commit = rundir.code_commit()
    assert commit is not None and head.stdout.strip().startswith(commit.removesuffix("-dirty"))


def _two_model_runs(root: Path, presets=("quick", "quick")) -> list[Path]:
    runs = []
    for (name, size, mean), preset in zip((("tiny1", 3_100_000, 0.625), ("tiny2", 4_200_000, 0.5)), presets,
                                          strict=True):
        runs.append(_run(root / name / "dual", "dual", [
            _headline(REC2FTP, "Rec2FTP", mean, mean - 0.125, mean + 0.125, percent=True),
            _headline("Rec2FTP above its baseline", f"Rec2FTP − baseline (baseline {size / 1e5:.1f} %), paired by seed",
                      float("nan"), float("nan"), float("nan"), percent=True),
            _headline("SimAOU above random", "SimAOU", 0.2, 0.1, 0.3),
        ], model=f"/data/models/{name}", n_params=size, preset=preset))
    return runs


def test_compare_page_headers_units_and_banner(tmp_path):
    runs = _two_model_runs(tmp_path / "sw")
    page = C.write_compare(tmp_path / "sw", runs, page="index.html").read_text(encoding="utf-8")
    assert "&lt;br&gt;" not in page and "&lt;small&gt;" not in page  # column headers are markup, not text
    assert "<div class='run'>tiny1</div><small>tiny1, 3.1M, 2 seeds, preset quick</small>" in page
    assert "62.5 [50.0, 75.0] %" in page and "50.0 [37.5, 62.5] %" in page  # Rec2FTP in %, as on the index
    assert "0.625 [0.500, 0.750]" not in page
    assert "undefined" in page and "nan [nan" not in page
    assert "Quick run: preset quick, all 2 runs compared" in page and "preset small" not in page
    # a claim whose metric label carries each run's own number: the shared part for the row, each run's in its cell
    assert "<small>Rec2FTP − baseline</small>" in page and "(baseline 31.0 %)" in page
    mixed = _two_model_runs(tmp_path / "mixed", presets=("quick", "default"))
    page = C.write_compare(tmp_path / "cmp", mixed).read_text(encoding="utf-8")
    assert "presets default, quick" in page
    assert "<div class='run'>tiny1</div>" in page  # labelled below the directory the runs share, not by full path


def test_compare_size_figure_ticks_and_empty_panels(tmp_path, monkeypatch):
    """Ticks at the sizes compared, labelled like the table, no overlapping minor labels; a claim undefined in every
    run says so over the sizes' axis instead of an empty 10⁰–10¹ panel; % where the paper prints %."""
    figs = []
    monkeypatch.setattr(C.plt, "close", figs.append)
    rows = C.collect(_two_model_runs(tmp_path / "sw"))
    assert C._size_figure(rows, "dual")[:4] == b"\x89PNG"
    (fig,) = figs
    rec2ftp, baseline, simaou = fig.axes[:3]
    for ax in (rec2ftp, baseline, simaou):
        fig.canvas.draw()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["3.1M", "4.2M"]
        assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
        lo, hi = ax.get_xlim()
        assert lo < 3_100_000 and hi > 4_200_000 and hi / lo < 10
    assert rec2ftp.get_ylabel() == "%" and simaou.get_ylabel() == "value"
    assert max(rec2ftp.lines[0].get_ydata()) == pytest.approx(62.5)
    assert any("undefined in every run" in t.get_text() for t in baseline.texts)
    assert not any(t.get_text() for t in rec2ftp.texts)
    assert baseline.get_title() == "Rec2FTP − baseline"


# ------------------------------------------------------------------------------------------------ the study pages


def test_study_pages_link_back_and_implicit_states_the_steps_it_ran(quick_all):
    index = (quick_all / "report.html").read_text(encoding="utf-8")
    manifest = json.loads((quick_all / "dual" / "manifest.json").read_text())
    assert f"{manifest['model']['n_params']:,} parameters" in index and manifest["model"]["model_sha256"][:16] in index
    for study in ("convergence", "dual", "implicit"):
        page = (quick_all / study / "report.html").read_text(encoding="utf-8")
        assert '<p class="up"><a href="../report.html">' in page, study
    # the header's steps per N are the steps the fine-tuning curves ran to
    page = (quick_all / "implicit" / "report.html").read_text(encoding="utf-8")
    summary = json.loads((quick_all / "implicit" / "summary.json").read_text())
    for by_n in summary["ft_steps"].values():
        for n, entry in by_n.items():
            assert f"N = {n}: {max(entry['step'])}" in page
