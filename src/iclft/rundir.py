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

import functools
import hashlib
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
    except OSError as exc:  # disk full, quota, I/O error: the old file (if any) is untouched
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {str(path)!r}: {exc.strerror or exc}; nothing was half-written, and "
                        "rerunning the same command resumes") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_parquet(df: pd.DataFrame, path: Path) -> bytes:
    """Write `df` as Parquet; returns the bytes written (a shard's checksum is taken over them)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())
    return buf.getvalue()


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


def identity(model_info: dict, spec: BaseModel | None = None) -> dict:
    """What a resume must share with the run it continues besides the spec: iclft version, model weights, and the
    contents of task files named by the spec (a task file edited between two runs would otherwise mix results)."""
    ident = {"iclft_version": iclft.__version__, "model": model_info.get("model"),
             "model_sha256": model_info.get("model_sha256"), "stand_in": model_info.get("builtin_stand_in")}
    from iclft.tasks import task_files

    names = [getattr(spec, f) for f in ("task", "control_task") if isinstance(getattr(spec, f, None), str)]
    files = {str(p): sha256_file(p) for name in names for p in task_files(name) if p.is_file()}
    if files:  # only then: a run on a built-in task keeps the identity it always had
        ident["task_sha256"] = files
    return ident


LOCK = ".lock"
FINISHED = "finished.json"  # SHA-256 of every file the report reads, written last: edits after the run show


def within(root: Path, *parts: str) -> Path:
    """root/parts, refused unless it resolves inside root: names from a sweep file, a unit id or a study name must
    never write elsewhere (`../x`, `/abs/x`, a symlink out)."""
    root = Path(root)
    path = root.joinpath(*parts)
    top, real = root.resolve(), path.resolve()
    if real != top and top not in real.parents:
        raise UserError(f"{'/'.join(parts)!r} would write outside {str(root)!r}; names must be plain "
                        "(letters, digits, '.', '_', '-')")
    return path


@contextmanager
def _locked(out: Path):
    """An exclusive lock on the run directory for as long as a run writes to it; the kernel drops it when the
    process dies, so a killed run never leaves a stale lock."""
    import fcntl

    fh = open(out / LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole run
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise UserError(f"{str(out)!r} is in use by another iclft run (pid {holder}); wait for it to finish or "
                            "choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # releases the lock


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK]


@contextmanager
def open_run(out: Path, spec: BaseModel, ident: dict | None = None):
    """Create (or resume) OUT, locked against a second run writing to it.

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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {str(out)!r}: {exc.strerror or exc}") from None
    with _locked(out):  # a second run on OUT fails here, before it could remove or change anything
        try:
            old = out / "spec.yaml"
            if old.is_file():
                if old.read_text(encoding="utf-8") != text:
                    raise UserError(f"{str(out)!r} holds a run with a different spec; choose another --out")
                old_ident = out / "identity.json"
                if old_ident.is_file() and old_ident.read_text(encoding="utf-8").strip() != ident_text:
                    raise UserError(f"{str(out)!r} was started by another iclft version, model weights or task "
                                    "file contents; choose another --out")
            elif _entries(out):
                raise UserError(f"{str(out)!r} exists and is not an iclft run directory")
            atomic_write_text(out / "spec.yaml", text)
            atomic_write_text(out / "identity.json", ident_text + "\n")
            yield out
        except BaseException:
            # Whatever failed (an input error, a bug, Ctrl-C), a directory this run created and in which no unit
            # finished is removed, so that a corrected rerun starts clean; finished shards are never thrown away.
            if created and not any(shard_dir(out).glob("*.parquet")):
                shutil.rmtree(out, ignore_errors=True)
            raise


ROOT_MARK = ".iclft"  # what kind of directory of runs this is ("run all", "sweep")


@contextmanager
def open_root(out: Path, kind: str):
    """A directory holding several runs (`run all`, a sweep): new, empty, or one made by the same kind of command
    (rerun to resume) -- never an unrelated directory. Removed again if it was new and no unit finished."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a directory")
    created = not out.exists()
    mark = out / ROOT_MARK
    if not created and any(out.iterdir()):
        found = mark.read_text(encoding="utf-8").strip() if mark.is_file() else None
        if found != kind:
            what = f"holds an iclft {found} run" if found else "exists and is not an iclft directory"
            raise UserError(f"{str(out)!r} {what}; choose another --out for `iclft {kind}`")
    try:
        atomic_write_text(mark, kind + "\n")
        yield out
    except BaseException:
        if created and not any(out.rglob("shards/*.parquet")):
            shutil.rmtree(out, ignore_errors=True)
        raise


UNIT_BYTES = 1024  # driver memory per unit (its Unit, job and bookkeeping; ~0.7 KB measured), rounded up
SHARD_BYTES = 8192  # disk per finished unit at least: a shard and its checksum, one 4 KiB block each


def check_size(name: str, n_units: int, out: Path) -> None:
    """Refuse, before anything is allocated or written, a run whose units alone cannot fit this machine's memory
    or OUT's disk (e.g. `--set seeds=100000000`), with the estimate."""
    need_mem, need_disk = n_units * UNIT_BYTES, n_units * SHARD_BYTES
    have_mem = _available_memory()
    probe = Path(out).absolute()
    while not probe.exists():
        probe = probe.parent
    vfs = os.statvfs(probe)
    have_disk, have_files = vfs.f_bavail * vfs.f_frsize, vfs.f_favail
    short = []
    if have_mem is not None and need_mem > have_mem:
        short.append(f"~{_size(need_mem)} of memory to track them ({_size(have_mem)} available)")
    if need_disk > have_disk:
        short.append(f"~{_size(need_disk)} of disk for their shards ({_size(have_disk)} free)")
    if have_files and 2 * n_units > have_files:  # f_favail is 0 where a filesystem does not count inodes
        short.append(f"{2 * n_units:,} files ({have_files:,} free on that filesystem)")
    if short:
        raise UserError(f"{name}: {n_units:,} units would need {' and '.join(short)}; lower seeds (or the sizes "
                        "that multiply them)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def shard_dir(out: Path) -> Path:
    return Path(out) / "shards"


def shard_path(out: Path, unit_id: str) -> Path:
    return within(shard_dir(out), f"{unit_id}.parquet")


def write_shard(out: Path, unit_id: str, df: pd.DataFrame) -> None:
    """The unit's rows, then their checksum: a shard without a matching checksum is not finished."""
    path = shard_path(out, unit_id)
    data = atomic_write_parquet(df, path)
    atomic_write_text(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def shard_state(out: Path, unit_id: str) -> str:
    """"done", "missing", or "bad" (truncated, overwritten, or written without its checksum)."""
    path = shard_path(out, unit_id)
    if not path.is_file():
        return "missing"
    check = path.with_suffix(".sha256")
    try:
        want = check.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return "bad"
    return "done" if sha256_file(path) == want else "bad"


def drop_shard(out: Path, unit_id: str) -> None:
    path = shard_path(out, unit_id)
    path.unlink(missing_ok=True)
    path.with_suffix(".sha256").unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


FINISHED_FILES = ("spec.yaml", "identity.json", "records.parquet", "summary.json", "manifest.json")


def write_finished(out: Path) -> None:
    """Checksums of the files a report is rendered from, and of the code that rendered it, written after all."""
    out = Path(out)
    atomic_write_json(out / FINISHED, {"sha256": {f: sha256_file(out / f) for f in FINISHED_FILES},
                                       "code_sha256": code_sha256()})


@functools.cache
def code_sha256() -> str:
    """SHA-256 over the running iclft's source (every .py file and the metric definitions reports ship): a rerun
    that computes nothing leaves a finished run's files alone only if the same code wrote them (a version number
    stays put while a checkout changes)."""
    root = Path(iclft.__file__).parent
    h = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), root / "report" / "METRICS.md"]):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def finished_by_this_code(out: Path) -> bool:
    """Whether OUT's finished.json was written by the running code (see code_sha256)."""
    try:
        return json.loads((Path(out) / FINISHED).read_text(encoding="utf-8")).get("code_sha256") == code_sha256()
    except (OSError, ValueError, AttributeError):
        return False


def check_finished(out: Path) -> None:
    """A UserError naming each file changed since the run finished (an edited manifest or spec would otherwise be
    rendered as if true)."""
    out = Path(out)
    try:
        recorded = json.loads((out / FINISHED).read_text(encoding="utf-8"))["sha256"]
    except FileNotFoundError:
        raise UserError(f"{str(out)!r} is not a finished run directory (missing {FINISHED})") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{str(out)!r}: {FINISHED} is unreadable") from None
    changed = [f for f in FINISHED_FILES if not (out / f).is_file() or sha256_file(out / f) != recorded.get(f)]
    if changed:
        raise UserError(f"{str(out)!r}: {', '.join(changed)} changed after the run finished (SHA-256 differs from "
                        f"{FINISHED}); restore the file(s) or rerun the study into a new --out")


def write_records(out: Path, records: pd.DataFrame) -> None:
    atomic_write_parquet(records, Path(out) / "records.parquet")


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_json(Path(out) / "summary.json", summary)


def write_examples(out: Path, examples: dict[str, list[list[str]]]) -> None:
    atomic_write_json(Path(out) / "examples.json", examples)


def code_commit() -> str | None:
    """The git commit of the running iclft source ("-dirty" with uncommitted changes), or None for an install that
    is not iclft's own checkout (a wheel; a venv inside some other repository) or without git."""
    import subprocess

    src = Path(__file__).resolve().parent

    def git(*args):
        proc = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() / "src" / "iclft" != src:
            return None
        return git("describe", "--always", "--dirty", "--abbrev=12", "--exclude=*") or None
    except (OSError, subprocess.SubprocessError):
        return None


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
        "iclft_commit": code_commit(),
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
    if (run_dir / "summary.json").is_file():
        check_finished(run_dir)
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
