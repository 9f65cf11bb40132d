"""Capture cost vs plain HF forwards, measured side by side in one run on the same prompts.

    .venv/bin/python benchmarks/bench_capture.py [--model builtin] [--prompts 64] [--k 4] [--batch 16]

Prints: capture (all resid_post sites + logits) vs a plain batched HF forward with output_hidden_states
(target <= 1.15x), vs a one-prompt-at-a-time loop (target >= 5x faster), and peak-memory ratio (<= 1.2x).
"""

from __future__ import annotations

import argparse
import gc
import random
import time

import torch

from iclft.capture import capture, site_names
from iclft.capture.core import pad_left
from iclft.models.load import load
from iclft.prompts import PromptBuilder
from iclft.tasks import get_task


def timed(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    loaded = load(args.model)
    task = get_task("sentiment")
    b = PromptBuilder(loaded.tokenizer, task, loaded.max_len)
    rng = random.Random(0)
    prompts = [b.build(q, rng.sample(task.train, args.k)).ids for q in task.test[: args.prompts]]
    n_layers = loaded.info["n_layers"]
    sites = site_names(n_layers)
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id

    def ours():
        capture(model, fam, prompts, sites, pad_id=pad, batch_size=args.batch, logits=True)

    @torch.no_grad()
    def hf_batched():
        # the same batching (length-sorted, left padding, position ids) but HF's own hidden-state output
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        keep = []
        for s in range(0, len(order), args.batch):
            ids, mask, pos = pad_left([prompts[i] for i in order[s:s + args.batch]], pad, "cpu")
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
            keep.append(([h[:, -1].clone() for h in out.hidden_states[1:]], out.logits[:, -1].clone()))

    def one_at_a_time():
        capture(model, fam, prompts, sites, pad_id=pad, batch_size=1, logits=True)

    ours()  # warm-up
    t_ours, t_hf, t_single = timed(ours), timed(hf_batched), timed(one_at_a_time, repeats=1)
    m_ours, m_hf = _peak_tensor_bytes(ours), _peak_tensor_bytes(hf_batched)
    print(f"model={args.model} prompts={len(prompts)} k={args.k} batch={args.batch} layers={n_layers} "
          f"threads={torch.get_num_threads()}")
    print(f"capture (iclft)             {t_ours:8.3f} s")
    print(f"HF batched hidden_states    {t_hf:8.3f} s   ratio capture/HF = {t_ours / t_hf:.3f}x (target <= 1.15x)")
    print(f"one prompt at a time        {t_single:8.3f} s   speed-up = {t_single / t_ours:.2f}x (target >= 5x)")
    print(f"peak tensor memory          {m_ours / 2**20:8.1f} MiB vs HF {m_hf / 2**20:.1f} MiB   "
          f"ratio = {m_ours / m_hf:.3f}x (target <= 1.2x)")


def _peak_tensor_bytes(fn) -> int:
    """Peak bytes of live CPU tensor storage while fn runs (torch's CPU allocator profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # running sum of allocations/frees in event order gives the live-bytes curve; take its maximum
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak


if __name__ == "__main__":
    main()
