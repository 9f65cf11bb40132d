"""The run directory: what a study writes to OUT and how it is read back.

    OUT/spec.yaml         the effective spec (a rerun with it resumes)
    OUT/identity.json     iclft version and model weights: a resume must not mix in other code or weights
    OUT/shards/*.parquet  one per finished unit
    OUT/records.parquet   every unit's rows, in unit order
    OUT/summary.json      what the report reads
    OUT/examples.json     example prompts, as tokens, for the report's methods section
    OUT/manifest.json     versions, command, seeds, model, wall time

Every file is written atomically (a temporary file renamed into place), so a kill never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel

import iclft
from iclft import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # read-only place, a file where a directory should be, disk full
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def spec_yaml(spec: BaseModel) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def identity(model_info: dict) -> dict:
    return {"iclft_version": iclft.__version__, "model": model_info.get("model"),
            "model_sha256": model_info.get("model_sha256"), "stand_in": model_info.get("builtin_stand_in")}


@contextmanager
def open_run(out: Path, spec: BaseModel, ident: dict | None = None):
    """Create (or resume) OUT.

    Resuming needs the same spec and the same identity (iclft version, model hash): shards computed by other
    code or weights must not be mixed in. A fresh directory that fails with an input error before any unit
    finished is removed again; finished shards are never thrown away.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a directory")
    text = spec_yaml(spec)
    ident_text = json.dumps(ident or {}, sort_keys=True)
    created = not out.exists()
    if not created:
        old = out / "spec.yaml"
        if old.is_file():
            if old.read_text(encoding="utf-8") != text:
                raise UserError(f"{str(out)!r} holds a run with a different spec; choose another --out")
            old_ident = out / "identity.json"
            if old_ident.is_file() and old_ident.read_text(encoding="utf-8").strip() != ident_text:
                raise UserError(f"{str(out)!r} was started by another iclft version or model weights; "
                                "choose another --out")
        elif any(out.iterdir()):
            raise UserError(f"{str(out)!r} exists and is not an iclft run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {str(out)!r}: {exc.strerror or exc}") from None
    try:
        atomic_write_text(out / "spec.yaml", text)
        atomic_write_text(out / "identity.json", ident_text + "\n")
        yield out
    except BaseException:
        # Whatever failed (an input error, a bug, Ctrl-C), a directory this run created and in which no unit
        # finished is removed, so that a corrected rerun starts clean; finished shards are never thrown away.
        if created and not any(shard_dir(out).glob("*.parquet")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def shard_dir(out: Path) -> Path:
    return Path(out) / "shards"


def write_records(out: Path, records: pd.DataFrame) -> None:
    atomic_write_parquet(records, Path(out) / "records.parquet")


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_json(Path(out) / "summary.json", summary)


def write_examples(out: Path, examples: dict[str, list[list[str]]]) -> None:
    atomic_write_json(Path(out) / "examples.json", examples)


def manifest(spec, model_info: dict, started: float, extra: dict | None = None) -> dict:
    import torch

    versions = {}
    for pkg in ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "sentence-transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "iclft_version": iclft.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "command": " ".join(sys.argv),
        "seeds": spec.seed_list(),
        "batch_size": spec.batch_size,
        "dtype": spec.dtype,
        "device": spec.device,
        "torch_threads": torch.get_num_threads(),
        "model": model_info,
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_manifest(out: Path, data: dict) -> None:
    atomic_write_json(Path(out) / "manifest.json", data)


def read_finished(run_dir: Path) -> tuple[dict, pd.DataFrame, dict, dict]:
    """(summary, records, spec fields, model info) of a finished run directory."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        records = pd.read_parquet(run_dir / "records.parquet")
        spec_data = yaml.safe_load((run_dir / "spec.yaml").read_text())
        info = json.loads((run_dir / "manifest.json").read_text())["model"]
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name
        raise UserError(f"{str(run_dir)!r} is not a finished run directory (missing {missing})") from None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:  # corrupted or foreign files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{str(run_dir)!r}: unreadable run files ({type(exc).__name__}: {first[:200]})") from None
    return summary, records, spec_data, info
