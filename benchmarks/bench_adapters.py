"""Stacked per-trial LoRA (`iclft.tuning.StackedLora`) vs B sequential PEFT trainings (`LoraSession`).

B trials built as the convergence study builds them (k sentiment demonstrations, IT and SL adapters), each followed
by a capture of its zero-shot prompt; both ways timed side by side in one run (`iclft.bench.bench_adapters`).

    OMP_NUM_THREADS=1 python benchmarks/bench_adapters.py [--sizes 8 32 128] [--steps 30] [--model builtin|deep]
"""

from __future__ import annotations

import argparse

from iclft.bench import bench_adapters, load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--model", default="builtin")
    args = ap.parse_args(argv)
    loaded = load_model(args.model)
    print(f"{'B':>5} {'sequential s':>13} {'stacked s':>10} {'ratio':>7} {'max|diff|':>10} {'max|dloss|':>10}")
    for b in args.sizes:
        r = bench_adapters(loaded, trials=b, k=args.k, steps=args.steps)
        print(f"{b:>5} {r['baseline_s']:>13.2f} {r['fast_s']:>10.2f} {r['ratio']:>6.2f}x "
              f"{r['max_abs_diff']:>10.2e} {r['max_loss_diff']:>10.2e}")


if __name__ == "__main__":
    main()
