"""Capture cost vs plain HF forwards, measured side by side in one run on the same prompts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_capture.py [--model builtin|deep|PATH] [--prompts 64]
        [--k 4] [--batch 16]

Prints: capture (all resid_post sites + logits) vs a plain batched HF forward with output_hidden_states
(target: capture/HF <= 1.15x), vs a one-prompt-at-a-time loop, and the peak-memory ratio (target <= 1.2x).
The measuring code is `iclft.bench.bench_capture` (also run by `iclft bench`).
"""

from __future__ import annotations

import argparse

import torch

from iclft.bench import bench_capture, format_table, load_model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin", help="'builtin', 'deep' (24-layer random Llama) or a model")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each way (the best counts)")
    args = ap.parse_args()

    loaded = load_model(args.model)
    r = bench_capture(loaded, prompts=args.prompts, k=args.k, batch=args.batch, repeats=args.repeats, single=True)
    print(f"model={loaded.name} layers={loaded.info['n_layers']} threads={torch.get_num_threads()}; {r['sizes']}")
    print(format_table([r]))
    print(f"capture/HF time ratio    {r['fast_s'] / r['baseline_s']:.3f}x (target <= 1.15x)")
    print(f"one prompt at a time     {r['single_s']:.3f} s: one-at-a-time / batched = {r['speedup_vs_single']:.2f}x")
    print(f"peak tensor memory       {r['peak_mib']:.1f} MiB vs HF {r['baseline_peak_mib']:.1f} MiB: "
          f"ratio {r['mem_ratio']:.3f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
