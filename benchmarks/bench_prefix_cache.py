"""Prefix KV-cache reuse vs full recomputation, side by side in one run.

The dual-view study shows every query of a seed after the same k demonstrations. This prints the time to
capture the study's last-token sites (attn.out, attn.scores at every layer, and the logits) for the same
prompts both ways on the built-in model with k = 32, the speed-up, and the largest difference between them.
The measuring code is `iclft.bench.bench_prefix_cache` (also run by `iclft bench`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prefix_cache.py [--queries 128] [--k 32] [--repeats 2]
        [--model builtin|deep|PATH]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from iclft.bench import bench_prefix_cache, load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin", help="'builtin', 'deep' (24-layer random Llama) or a model")
    ap.add_argument("--queries", type=int, default=128)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each way (the best is reported)")
    args = ap.parse_args()

    loaded = load_model(args.model)
    r = bench_prefix_cache(loaded, queries=args.queries, k=args.k, batch=args.batch_size, repeats=args.repeats)
    kind = ("random init" if loaded.info.get("random_init") else
            "random stand-in" if loaded.info.get("builtin_stand_in") else "pretrained")
    print(f"model {loaded.name} ({kind}), torch threads {torch.get_num_threads()}")
    print(f"{r['sizes']}, best of {args.repeats}")
    print(f"full recomputation : {r['baseline_s']:8.3f} s")
    print(f"prefix KV reuse    : {r['fast_s']:8.3f} s")
    print(f"speed-up           : {r['ratio']:8.1f}x")
    print(f"max |difference|   : {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
