"""Compare the records of two runs: every `records.parquet` under RUN_A against the same path under RUN_B.

Used to show that a refactor or a speed-up leaves results unchanged:
    iclft run all --quick --out /tmp/a          # before (e.g. in a `git worktree` of the old commit)
    iclft run all --quick --out /tmp/b          # after
    python benchmarks/records_equal.py /tmp/a /tmp/b [--atol 0]
Prints, per records file, the largest |difference| of numeric columns (wall-time columns `seconds*` skipped)
and the non-numeric columns that differ; exits 1 when any file differs beyond --atol or is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def max_abs_diff(x: pd.DataFrame, y: pd.DataFrame) -> tuple[float, str | None, list[str]]:
    """(largest |x - y| over numeric columns, its column, columns that differ otherwise)."""
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return float("inf"), f"shape {x.shape} vs {y.shape}, columns equal: {list(x.columns) == list(y.columns)}", []
    worst, where, unequal = 0.0, None, []
    for col in x.columns:
        a, b = x[col], y[col]
        if pd.api.types.is_numeric_dtype(a) and not pd.api.types.is_bool_dtype(a):
            fa, fb = a.to_numpy(float), b.to_numpy(float)
            if not np.array_equal(np.isnan(fa), np.isnan(fb)):
                unequal.append(col + "(nan)")
            if col.startswith("seconds"):
                continue
            d = np.nanmax(np.abs(fa - fb), initial=0.0)
            if d > worst:
                worst, where = float(d), col
        elif not a.equals(b):
            unequal.append(col)
    return worst, where, unequal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--atol", type=float, default=0.0, help="largest accepted |difference|")
    ap.add_argument("--added-columns", action="store_true",
                    help="accept columns RUN_B adds (new measurements): compare the columns both runs have")
    args = ap.parse_args()
    files = sorted(args.run_a.rglob("records.parquet"))
    if not files:
        print(f"no records.parquet under {args.run_a}")
        return 1
    bad = 0
    for fa in files:
        rel = fa.relative_to(args.run_a)
        fb = args.run_b / rel
        if not fb.exists():
            print(f"{rel}: missing in {args.run_b}")
            bad += 1
            continue
        a, b = pd.read_parquet(fa), pd.read_parquet(fb)
        added = [c for c in b.columns if c not in a.columns]
        if args.added_columns:
            b = b.drop(columns=added)
        worst, where, unequal = max_abs_diff(a, b)
        ok = worst <= args.atol and not unequal
        bad += not ok
        print(f"{rel}: {'equal' if ok else 'DIFFERENT'}  max|diff| {worst:.3g} ({where}); "
              f"other columns that differ: {unequal or 'none'}"
              + (f"; columns added in {args.run_b}: {', '.join(added)}" if added and args.added_columns else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
