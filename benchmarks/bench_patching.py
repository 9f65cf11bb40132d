"""Exhaustive activation patching vs attribution patching, same pairs, one run.

Prints the wall time of each, the speed-up and the rank agreement (Spearman) of their effects, over all
components and over the top components (the top-K by exhaustive |effect|), for two granularities:
  per component            every attention head and MLP, patched at all positions (what the study uses)
  per component x position every head and MLP at every position from the first differing token on
The measuring code is `iclft.bench.bench_patching` (also run by `iclft bench`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_patching.py [--pairs-per-family 4] [--top 10]
        [--model builtin|deep|PATH]
"""

from __future__ import annotations

import argparse

import torch

from iclft.bench import bench_patching, format_table, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin", help="'builtin', 'deep' (24-layer random Llama) or a model")
    ap.add_argument("--pairs-per-family", type=int, default=4)
    ap.add_argument("--top", type=int, default=10, help="K of the top components")
    ap.add_argument("--position-pairs", type=int, default=6, help="pairs used in the per-position comparison")
    ap.add_argument("--repeat", type=int, default=2, help="timings are the best of this many runs")
    args = ap.parse_args()
    loaded = load_model(args.model)
    print(f"model {loaded.name} ({loaded.info['n_layers']} layers, {loaded.info['n_params']:,} parameters, "
          f"stand-in: {loaded.info.get('builtin_stand_in')}, random init: {bool(loaded.info.get('random_init'))}); "
          f"torch threads {torch.get_num_threads()}")
    rows = [bench_patching(loaded, pairs_per_family=args.pairs_per_family, top=args.top, repeats=args.repeat,
                           slow_repeats=args.repeat),
            bench_patching(loaded, pairs_per_family=args.pairs_per_family, top=args.top, repeats=args.repeat,
                           slow_repeats=1, per_position=True, max_pairs=args.position_pairs)]
    print(format_table(rows))


if __name__ == "__main__":
    main()
