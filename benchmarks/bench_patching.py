"""Exhaustive activation patching vs attribution patching on the built-in model, same pairs, one run.

Prints the wall time of each, the speed-up and the rank agreement (Spearman) of their effects, over all
components and over the top components (the top-K by exhaustive |effect|), for two granularities:
  per component            every attention head and MLP, patched at all positions (what the study uses)
  per component x position every head and MLP at every position from the first differing token on

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_patching.py [--pairs-per-family 4] [--top 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from iclft.circuits.pairs import build_pairs, pair_ids
from iclft.circuits.patching import activation_patching, attribution_patching, make_pairs, top_k
from iclft.models.load import load
from iclft.prompts import PromptBuilder
from iclft.tasks.implicit import DEFAULT_RULE, FAMILIES, generate, implicit_task


def spearman_top(ex: np.ndarray, at: np.ndarray, k: int) -> float:
    idx = sorted(top_k(ex, k))
    return float(spearmanr(ex[idx], at[idx]).statistic)


def best_of(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--pairs-per-family", type=int, default=4)
    ap.add_argument("--top", type=int, default=10, help="K of the top components")
    ap.add_argument("--position-pairs", type=int, default=6, help="pairs used in the per-position comparison")
    ap.add_argument("--repeat", type=int, default=2, help="timings are the best of this many runs")
    args = ap.parse_args()
    torch.manual_seed(0)
    loaded = load(args.model)
    pad = loaded.tokenizer.pad_token_id
    ids = []
    for fam in FAMILIES:
        task = implicit_task(fam, seed=0, n_train=8, n_test=2)
        builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
        pairs = build_pairs(builder, fam, DEFAULT_RULE[fam], generate(fam, 40, 99, "misleading"),
                            args.pairs_per_family)
        ids += [pair_ids(builder, p) for p in pairs]
    batch = make_pairs(ids, pad)
    model, family = loaded.model, loaded.family
    print(f"model {loaded.name} ({loaded.info['n_layers']} layers, {loaded.info['n_params']:,} parameters, "
          f"stand-in: {loaded.info.get('builtin_stand_in')}); {len(ids)} clean/misleading pairs from "
          f"{len(FAMILIES)} families; torch threads {torch.get_num_threads()}")
    attribution_patching(model, family, batch.rows(slice(0, 2)))  # warm-up
    print(f"{'granularity':30s} {'rows':>6s} {'exhaustive s':>13s} {'attribution s':>14s} {'speed-up':>9s} "
          f"{'Spearman all':>13s} {'Spearman top-' + str(args.top):>15s}")
    # One pair from each family first, so a small per-position subset still spans the families.
    order = sorted(range(len(ids)), key=lambda i: (i % args.pairs_per_family, i))[:args.position_pairs]
    spread = make_pairs([ids[i] for i in order], pad)
    for per_position in (False, True):
        b = spread if per_position else batch
        t_ex, ex = best_of(lambda pp=per_position, b=b: activation_patching(
            model, family, b, batch_size=len(b), per_position=pp), 1 if per_position else args.repeat)
        t_at, at = best_of(lambda pp=per_position, b=b: attribution_patching(
            model, family, b, batch_size=len(b), per_position=pp), args.repeat)
        e_ex, e_at = ex.effects(), at.effects()
        name = f"per comp. x position ({len(b)} p.)" if per_position else f"per component ({len(b)} pairs)"
        print(f"{name:30s} {len(e_ex):6d} {t_ex:13.3f} {t_at:14.3f} {t_ex / t_at:8.1f}x "
              f"{spearmanr(e_ex, e_at).statistic:13.3f} {spearman_top(e_ex, e_at, args.top):15.3f}")


if __name__ == "__main__":
    main()
