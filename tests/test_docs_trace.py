"""README's numbers about the default run trace to committed artefacts (docs/default-run/)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "default-run"
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"
# a number with its sign (ASCII or Unicode minus): "-0.050" and "0.050" are different claims
NUMBER = re.compile(r"[-−]?\d+(?:\.\d+)?")


def _numbers(text: str) -> set[str]:
    return {n.replace("−", "-") for n in NUMBER.findall(text)}


def _readme_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in readme and END in readme, (
        f"README.md lacks the {BEGIN} ... {END} markers around what the default run reproduces; paste the output "
        "of `python scripts/default_run_artefacts.py --print` there")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0]


def test_every_number_in_the_readme_section_is_in_the_committed_run():
    """Every number README states about the default run is in headlines.csv or the trimmed manifest, with its sign;
    code spans (hashes, versions) must occur there verbatim; and every headline value is stated."""
    section = _readme_section()
    headlines = (RUN / "headlines.csv").read_text(encoding="utf-8")
    artefacts = headlines + (RUN / "manifest.json").read_text(encoding="utf-8")
    spans = re.findall(r"`([^`]*)`", section)
    for span in spans:
        if any(c.isdigit() for c in span):
            assert span.rstrip("…") in artefacts, span
    prose = re.sub(r"`[^`]*`", " ", section)
    missing = sorted(_numbers(prose) - _numbers(artefacts))
    assert not missing, f"numbers in README's default-run section not in docs/default-run/: {missing}"
    import csv

    for row in csv.DictReader(headlines.splitlines()):  # nothing measured is left out
        assert row["this run (95% CI)"] in section, row["claim"]


def test_the_script_prints_the_section_from_the_committed_files():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "default_run_artefacts.py"), "--print"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    printed = res.stdout.split(BEGIN, 1)[1].split(END, 1)[0]
    assert printed.strip() == _readme_section().strip()
