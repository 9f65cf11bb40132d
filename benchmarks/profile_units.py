"""Time (and optionally cProfile) single units of the implicit and dual studies on the built-in model.

One unit of each kind with the studies' default specs as of commit b73636d (pinned below; only the family and
the seed are chosen):
  implicit: icl, ft_full, ft_lora, circuits  (`implicit_patterns.run_unit`)
  dual:     one seed                          (`dual_view.run_seed`)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_units.py --parts icl ft_full ft_lora circuits dual
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/profile_units.py --parts circuits --profile 25
    # the same units on another checkout (e.g. the code before a change), same venv, same machine:
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/before/src .venv/bin/python benchmarks/profile_units.py ...

Parts run in the given order in one process with one loaded model, as in a study run: `--parts ft_full circuits`
times the circuits unit with the ft unit's model handed over, `--parts circuits` alone as in a resumed run.
Prints one line per unit: part, family, seed, wall and CPU seconds (best of --repeat; with OMP_NUM_THREADS=1 the
process CPU time is the steadier number on a shared machine), and with --profile the top-N
functions by cumulative time. `--save DIR` writes each unit's records as DIR/<part>.parquet so that two
checkouts can be compared record by record (`--compare DIR_A DIR_B`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import pandas as pd
import torch
from records_equal import max_abs_diff  # benchmarks/ is the script directory, so on sys.path

IMPLICIT_PARTS = ("icl", "ft_full", "ft_lora", "circuits")

# The default specs as of the "Fast studies" profiling (commit b73636d), pinned so that timings stay
# comparable while the presets are resized; --current-defaults uses the code's defaults instead.
PINNED_IMPLICIT = dict(
    batch_size=16, n_eval=20, k_values=[0, 1, 2, 4, 8, 16], ft_sizes=[16, 64, 256, 1024], curve_eval=10,
    instruction=True, max_new_tokens=6, circuit_pairs=6, circuit_k=4, circuit_ft="full", circuit_n=None,
    circuit_method="exhaustive", top_k=8,
    full=dict(method="full", lr=3e-4, steps=20, epochs=2, batch_size=8, warmup_steps=4, weight_decay=0.0,
              grad_clip=1.0, loss_on="answer", eval_every=None),
    lora=dict(method="lora", lr=3e-3, steps=20, epochs=2, batch_size=8, warmup_steps=4, weight_decay=0.0,
              grad_clip=1.0, loss_on="answer", eval_every=None, adapter=dict(r=8, alpha=16, targets=None)),
)
PINNED_DUAL = dict(
    batch_size=32, task="sentiment", k=32, queries=None, demo_sampling="balanced", instruction=True,
    ft_instruction=False, lr_grid=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], val_size=200, query_chunk=256,
)


_LOADED: dict = {}


def _load(spec):
    from iclft.models.load import load

    key = (spec.model, spec.dtype, spec.device, spec.attn_implementation)
    if key not in _LOADED:  # one model per process, as in a study run (the circuits unit reuses the ft unit's model)
        _LOADED[key] = load(spec.model, dtype=spec.dtype, device=spec.device,
                            attn_implementation=spec.attn_implementation)
    return _LOADED[key]


def _implicit_unit(part: str, family: str, seed: int, overrides: dict):
    from iclft.studies import implicit_patterns as ip

    spec = ip.ImplicitSpec(families=[family], **overrides)
    loaded = _load(spec)
    n_train = max(max(spec.ft_sizes), max(spec.k_values) + 1, spec.circuit_k + 1)
    return lambda: ip.run_unit(spec, loaded, family, seed, part, n_train)


def _dual_unit(seed: int, overrides: dict):
    from iclft.studies import dual_view as dv
    from iclft.studies.protocol import Unit

    spec = dv.DualSpec(**overrides)
    ctx = dv.setup(spec)  # the study's own set-up: task (auto), fitting, the query pool
    return lambda: dv.run_unit(spec, ctx, Unit(f"seed{seed}", {"seed": seed}))


def compare(a: Path, b: Path) -> None:
    for fa in sorted(Path(a).glob("*.parquet")):
        fb = Path(b) / fa.name
        if not fb.exists():
            print(f"{fa.name}: missing in {b}")
            continue
        x, y = pd.read_parquet(fa), pd.read_parquet(fb)
        worst, where, unequal = max_abs_diff(x, y)
        print(f"{fa.stem}: max|diff| {worst:.3g} ({where}); non-numeric columns that differ: {unequal or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=[*IMPLICIT_PARTS, "dual"])
    ap.add_argument("--family", default="expression", help="implicit-pattern family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, help="print the top-N functions by cumulative time")
    ap.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative | tottime)")
    ap.add_argument("--save", type=Path, default=None, help="write each unit's records to DIR/<part>.parquet")
    ap.add_argument("--compare", nargs=2, type=Path, default=None, help="compare two --save directories")
    ap.add_argument("--current-defaults", action="store_true", help="the specs' current defaults, not the pinned ones")
    ap.add_argument("--ft-sizes", type=int, nargs="+", default=None, help="override implicit ft_sizes")
    ap.add_argument("--queries", type=int, default=None, help="override dual queries")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    torch.manual_seed(0)
    for part in args.parts:
        if part == "dual":
            over = {} if args.current_defaults else dict(PINNED_DUAL)
            fn = _dual_unit(args.seed, {**over, **({"queries": args.queries} if args.queries else {})})
        else:
            over = {} if args.current_defaults else dict(PINNED_IMPLICIT)
            fn = _implicit_unit(part, args.family, args.seed,
                                {**over, **({"ft_sizes": args.ft_sizes} if args.ft_sizes else {})})
        best, best_cpu, df = float("inf"), float("inf"), None
        for _ in range(args.repeat):
            prof = cProfile.Profile() if args.profile else None
            t, c = time.perf_counter(), time.process_time()
            if prof:
                prof.enable()
            df = fn()
            if prof:
                prof.disable()
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        print(f"{part:9s} family={args.family if part != 'dual' else '-':12s} seed={args.seed} "
              f"seconds={best:.2f} cpu_seconds={best_cpu:.2f} rows={len(df)}", flush=True)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            df.to_parquet(args.save / f"{part}.parquet", index=False)
        if prof:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(args.sort).print_stats(args.profile)
            print(s.getvalue())


if __name__ == "__main__":
    main()
