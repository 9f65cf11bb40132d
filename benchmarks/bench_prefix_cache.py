"""Prefix KV-cache reuse vs full recomputation, side by side in one run.

The dual-view study shows every query of a seed after the same k demonstrations. This prints the time to
capture the study's last-token sites (attn.out, attn.scores at every layer, and the logits) for the same
prompts both ways on the built-in model with k = 32, the speed-up, and the largest difference between them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prefix_cache.py [--queries 128] [--k 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from iclft.capture import capture, site_names  # noqa: E402
from iclft.capture.prefix import capture_prefixed  # noqa: E402
from iclft.models.load import load  # noqa: E402
from iclft.prompts import PromptBuilder  # noqa: E402
from iclft.studies.dual_view import demo_pool, draw_demos, fit_demos  # noqa: E402
from iclft.tasks import get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=128)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each way (the best is reported)")
    args = ap.parse_args()

    loaded = load("builtin")
    task = get_task("sentiment")
    builder = PromptBuilder(loaded.tokenizer, task)
    queries = task.test[: args.queries]
    demos = draw_demos(demo_pool(task, queries), args.k, task.label_words, "balanced", random.Random(0))
    longest = max(queries, key=lambda q: len(builder.build(q, [])))
    demos = fit_demos(builder, demos, longest, loaded.max_len, True)
    prompts = [builder.build(q, demos) for q in queries]
    start = prompts[0].query_span[0]
    prefix, suffixes = prompts[0].ids[:start], [p.ids[start:] for p in prompts]
    n_layers = loaded.info["n_layers"]
    sites = site_names(n_layers, ("attn.out", "attn.scores"))
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id

    def full():
        return capture(model, fam, [p.ids for p in prompts], sites, pad_id=pad, batch_size=args.batch_size,
                       logits=True)

    def cached():
        return capture_prefixed(model, fam, prefix, suffixes, sites, pad_id=pad, batch_size=args.batch_size,
                                logits=True)

    def timed(fn):
        best, res = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = fn()
            best = min(best, time.perf_counter() - t0)
        return best, res

    t_full, a = timed(full)
    t_cached, b = timed(cached)
    err = float((a.logits - b.logits).abs().max())
    for s in sites:
        if s.endswith("attn.scores"):
            err = max(err, max(float((x - y).abs().max()) for x, y in zip(a.acts[s], b.acts[s], strict=True)))
        else:
            err = max(err, float((a.acts[s] - b.acts[s]).abs().max()))
    mean_len = sum(len(p) for p in prompts) / len(prompts)
    print(f"model {loaded.name} ({'random stand-in' if loaded.info.get('builtin_stand_in') else 'pretrained'}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"{len(prompts)} prompts, k = {len(demos)} demonstrations, shared prefix {len(prefix)} tokens, "
          f"mean prompt {mean_len:.0f} tokens, batch size {args.batch_size}, best of {args.repeats}")
    print(f"full recomputation : {t_full:8.3f} s")
    print(f"prefix KV reuse    : {t_cached:8.3f} s")
    print(f"speed-up           : {t_full / t_cached:8.1f}x")
    print(f"max |difference|   : {err:.2e}")


if __name__ == "__main__":
    main()
