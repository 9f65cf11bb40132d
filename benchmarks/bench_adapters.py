"""Per-trial LoRA tuning: B stacked adapters (StackedLora) vs B sequential PEFT trainings (LoraSession).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_adapters.py [--sizes 8 32 128] [--quick]
        [--steps 30] [--k 4] [--repeats R] [--seq-limit N]

Trials are the convergence study's: sentiment queries, k random demonstrations each, trial 2i the IT adapter
(demonstrations with the instruction) and trial 2i+1 the SL adapter (without) of query i, both from query
i's seed; default LoraConfigSpec (30 steps). Each way trains its B adapters and captures every trial's ZSL
prompt (resid_post at the last token, all layers, + logits) through its own adapter; both run side by side
in one process on the built-in model. Printed per B: wall time of each way, the ratio, and the max |diff| of
the hidden states, logits and per-step losses. Target: >= 4x at B = 32 on CPU. With --repeats R each way runs
R times, alternating (so both see the same machine load), and the best time counts.

--seq-limit N runs the sequential way on the first N trials only (for a large B); the printout then says so and
compares the two ways per trial on those N trials — nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import functools
import random
import warnings
import zlib

import torch

from iclft.bench import side_by_side
from iclft.capture import capture, site_names
from iclft.models.load import load
from iclft.prompts import PromptBuilder, select_demos
from iclft.tasks import get_task
from iclft.tuning import LoraConfigSpec, LoraSession, StackedLora


def make_trials(loaded, n_trials: int, k: int, seed: int = 0):
    """(training examples, seed, ZSL prompt) per trial, as the convergence study builds them."""
    task = get_task("sentiment")
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    rng = random.Random(seed)
    out = []
    for i in range((n_trials + 1) // 2):
        q = rng.choice(task.test)
        demos = select_demos(q, task.train, k, "random", rng, None, 32)
        zsl = builder.build(q, [], instruction=True).ids
        s = zlib.crc32(f"{seed}/bench/{i}".encode())
        for with_instruction in (True, False):
            out.append(([builder.training_ids(d, None, with_instruction) for d in demos], s, zsl))
    return out[:n_trials]


def sequential(loaded, spec, trials, sites, n_layers):
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id
    losses, states, logits = [], [], []
    with LoraSession(model, fam, spec) as s:
        for examples, seed, zsl in trials:
            losses.append(s.train(examples, seed=seed, pad_id=pad))
            c = capture(model, fam, [zsl], sites, pad_id=pad, logits=True)
            states.append(c.stack("resid_post", n_layers)[0])
            logits.append(c.logits[0])
    return torch.tensor(losses), torch.stack(states), torch.stack(logits)


def stacked(loaded, spec, trials, sites, n_layers):
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id
    with StackedLora(model, fam, spec) as s:
        losses = s.train([t[0] for t in trials], [t[1] for t in trials], pad_id=pad)
        c = s.capture([t[2] for t in trials], list(range(len(trials))), sites, pad_id=pad, logits=True)
    return torch.tensor(losses), c.stack("resid_post", n_layers), c.logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128], help="numbers of trials B")
    ap.add_argument("--quick", action="store_true", help="B = 8 only")
    ap.add_argument("--steps", type=int, default=LoraConfigSpec().steps)
    ap.add_argument("--k", type=int, default=4, help="demonstrations per trial")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each way, alternating (the best counts)")
    ap.add_argument("--seq-limit", type=int, default=None, help="sequential way on the first N trials only")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a transformers API deprecated in v5

    loaded = load("builtin")
    n_layers = loaded.info["n_layers"]
    sites = site_names(n_layers)
    spec = LoraConfigSpec(steps=args.steps)
    sizes = [8] if args.quick else args.sizes
    warm = make_trials(loaded, 2, args.k)
    sequential(loaded, spec.model_copy(update={"steps": 2}), warm, sites, n_layers)  # first-call costs
    stacked(loaded, spec.model_copy(update={"steps": 2}), warm, sites, n_layers)

    print(f"model={loaded.name} layers={n_layers} threads={torch.get_num_threads()} k={args.k} "
          f"steps={spec.steps} r={spec.r}")
    print(f"{'B':>5} {'seq trials':>10} {'sequential s':>12} {'stacked s':>10} {'ratio':>7} "
          f"{'max|dh|':>9} {'max|dlogit|':>11} {'max|dloss|':>10}")
    for b in sizes:
        trials = make_trials(loaded, b, args.k)
        n_seq = min(b, args.seq_limit or b)
        t_seq, (l_seq, h_seq, g_seq), t_stk, (l_stk, h_stk, g_stk) = side_by_side(
            functools.partial(sequential, loaded, spec, trials[:n_seq], sites, n_layers),
            functools.partial(stacked, loaded, spec, trials, sites, n_layers), args.repeats, args.repeats)
        if n_seq == b:
            ratio = f"{t_seq / t_stk:6.2f}x"
        else:  # per trial: the sequential way measured on n_seq trials, the stacked way on all b
            ratio = f"{(t_seq / n_seq) / (t_stk / b):6.2f}x*"
        dh = (h_stk[:n_seq] - h_seq).abs().max().item()
        dg = (g_stk[:n_seq] - g_seq).abs().max().item()
        dl = (l_stk[:n_seq] - l_seq).abs().max().item()
        print(f"{b:>5} {n_seq:>10} {t_seq:>12.2f} {t_stk:>10.2f} {ratio:>7} {dh:>9.2e} {dg:>11.2e} {dl:>10.2e}",
              flush=True)
    if args.seq_limit and any(b > args.seq_limit for b in sizes):
        print(f"* sequential MEASURED ON THE FIRST {args.seq_limit} TRIALS ONLY (its 'sequential s' is for those); "
              f"ratio = (sequential s per trial) / (stacked s per trial); diffs over those trials")


if __name__ == "__main__":
    main()
