"""Units of work, each writing its own shard atomically, so a rerun after a kill skips finished units.

The default executor runs units in-process, in order; rows come back in unit order regardless of which
units were resumed, so a resumed run equals an uninterrupted one row for row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from iclft.rundir import atomic_write_parquet


@dataclass(frozen=True)
class Unit:
    id: str  # file-name safe, unique within a run
    params: dict = field(default_factory=dict, hash=False, compare=False)


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
