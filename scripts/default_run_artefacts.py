"""Commit what README's "what the default run reproduces" section says, and print that section from it.

    python scripts/default_run_artefacts.py RUN_DIR [--dest docs/default-run]   # RUN_DIR: a finished `iclft run all`
    python scripts/default_run_artefacts.py --print [--dest docs/default-run]   # the section from the committed copy

The first form copies RUN_DIR/headlines.csv and a trimmed manifest (model hash, iclft version, git commit: --commit or
this checkout's, seeds, preset, wall times, torch version and threads, per study) into DEST, then prints the README
section's Markdown, between the markers `tests/test_docs_trace.py` reads. The section is generic: one table row per
row of headlines.csv, whatever claims and verdicts it holds, so every number in it traces to the committed files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "docs" / "default-run"
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def trimmed_manifest(run_dir: Path, note: str | None = None, commit: str | None = None) -> dict:
    """The facts the section states, from each study's manifest.json and spec.yaml (run all: one per study)."""
    import yaml

    studies, first = {}, None
    for man in sorted(run_dir.glob("*/manifest.json")):
        m = json.loads(man.read_text(encoding="utf-8"))
        spec = yaml.safe_load((man.parent / "spec.yaml").read_text(encoding="utf-8"))
        first = first or m
        studies[man.parent.name] = {
            "preset": spec.get("preset", "default"), "seeds": m["seeds"], "n_seeds": len(m["seeds"]),
            # whole seconds: the section prints these numbers as they are here
            "wall_time_s": round(m["wall_time_s"]), "torch_threads": m["torch_threads"],
            "executor": m.get("executor"), "finished_at": m["finished_at"],
        }
    if first is None:
        sys.exit(f"error: no */manifest.json under {run_dir}: not a finished `iclft run all` directory")
    model = first["model"]
    # the run's manifest records no commit: the one given, else this checkout's when the artefacts are copied
    status = None if commit else _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": first["command"],
        "note": note,  # what the manifests cannot say (e.g. a machine shared with other jobs)
        "iclft_version": first["iclft_version"],
        "git_commit": commit or _git("rev-parse", "HEAD"),
        "git_uncommitted_changes": None if status is None else bool(status),
        "python": first["python"], "platform": first["platform"],
        "torch": first["versions"].get("torch"), "transformers": first["versions"].get("transformers"),
        "model": {k: model.get(k) for k in ("model", "model_sha256", "n_params", "builtin_stand_in") if k in model},
        "studies": studies,
    }


def copy_run(run_dir: Path, dest: Path, note: str | None = None, commit: str | None = None) -> None:
    if not (run_dir / "headlines.csv").is_file():
        sys.exit(f"error: {run_dir}/headlines.csv is missing: not a finished `iclft run all` directory")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "headlines.csv", dest / "headlines.csv")
    man = trimmed_manifest(run_dir, note, commit)
    (dest / "manifest.json").write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(dest: Path) -> str:
    """README's section, from DEST/headlines.csv and DEST/manifest.json only."""
    man = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    with open(dest / "headlines.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    studies = man["studies"]
    presets = sorted({s["preset"] for s in studies.values()})
    seeds = sorted({s["n_seeds"] for s in studies.values()})
    threads = sorted({s["torch_threads"] for s in studies.values()})
    workers = sorted({(s.get("executor") or {}).get("workers", 1) for s in studies.values()})
    wall = max(s["wall_time_s"] for s in studies.values())  # run all runs the studies' units together
    day = max(s["finished_at"] for s in studies.values())[:10]
    commit = man.get("git_commit")
    commit_text = "" if not commit else (f", commit `{commit[:12]}`"
                                         + (" with uncommitted changes" if man.get("git_uncommitted_changes") else ""))
    sha = (man["model"].get("model_sha256") or "")[:16]
    lines = [
        BEGIN,
        f"What the default run reproduces on the built-in model: `iclft run all`, preset {', '.join(presets)}, "
        f"{' / '.join(map(str, seeds))} seeds, 95% intervals across seeds; measured {day} with iclft "
        f"`{man['iclft_version']}`{commit_text}, torch `{man['torch']}`, {' / '.join(map(str, workers))} worker "
        f"processes (driver torch threads: {' / '.join(map(str, threads))}), model sha256 `{sha}…`, {wall} s wall"
        + (f" ({man['note']})" if man.get("note") else "") + ". Every row of the run's `headlines.csv`, "
        "committed with a trimmed manifest in `docs/default-run/` (`python scripts/default_run_artefacts.py OUT` "
        "copies them from a finished run and prints this section):",
        "",
    ]
    # every column headlines.csv has, in its order; a caveat qualifies its verdict, so it goes in that cell
    cols = [c for c in rows[0] if c != "caveat"] if rows else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = dict(r, verdict=r["verdict"] + (f" ({r['caveat']})" if r.get("caveat") else ""))
        lines.append("| " + " | ".join(_cell(cells[c]) for c in cols) + " |")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a finished `iclft run all` directory")
    p.add_argument("--dest", type=Path, default=DEST, help="where the artefacts go (default: docs/default-run)")
    p.add_argument("--print", action="store_true", help="only print the section from the committed artefacts")
    p.add_argument("--note", help="a remark the manifests cannot make, stored and printed with the wall time")
    p.add_argument("--commit", help="the git commit the run was made at (default: this checkout's HEAD now)")
    a = p.parse_args(argv)
    if not a.print:
        if a.run_dir is None:
            p.error("RUN_DIR is required (or --print)")
        copy_run(a.run_dir, a.dest, a.note, a.commit)
    print(section(a.dest))


if __name__ == "__main__":
    main()
