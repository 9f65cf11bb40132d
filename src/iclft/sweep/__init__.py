"""Units of work, each writing its own shard atomically, so a rerun after a kill skips finished units.

The default executor runs units in-process, in order; rows come back in unit order regardless of which
units were resumed, so a resumed run equals an uninterrupted one row for row.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Unit:
    id: str  # file-name safe, unique within a run
    params: dict = field(default_factory=dict, hash=False, compare=False)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def run_units(
    units: list[Unit], fn: Callable[[Unit], pd.DataFrame], shard_dir: Path, desc: str = "units"
) -> pd.DataFrame:
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise ValueError("unit ids must be unique")
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = sum((shard_dir / f"{u.id}.parquet").exists() for u in units)
    with tqdm(total=len(units), initial=done, desc=desc, unit="unit", dynamic_ncols=True) as bar:
        for u in units:
            path = shard_dir / f"{u.id}.parquet"
            if path.exists():
                continue
            df = fn(u)
            df.insert(0, "unit", u.id)
            atomic_write_parquet(df, path)
            bar.update(1)
    return pd.concat([pd.read_parquet(shard_dir / f"{i}.parquet") for i in ids], ignore_index=True)
