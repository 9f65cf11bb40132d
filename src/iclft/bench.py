"""One benchmark table: every fast path of iclft against the slow way it replaces, measured side by side.

Each `bench_*` function runs one comparison on one model and returns a row (a dict):

    name, model, baseline, fast    what is compared, on which model
    baseline_s, fast_s             best wall time of each (timed runs alternate between the two ways)
    ratio                          baseline_s / fast_s: the speed-up (< 1: the fast way is slower)
    sizes                          the workload, in words
    + extra metrics                max_abs_diff (largest difference of the results of the two ways),
                                   mem_ratio, spearman_all, spearman_top, ...

`run_bench` runs every comparison on the built-in model and on a deeper randomly initialised Llama built
from a config (`deep_model`: 24 layers x 16 heads by default, so that per-component patching has 408
components), and `format_table` prints the rows side by side. `iclft bench` is the command line.
Ratios are what count: both ways of a row run in the same process, interleaved, on the same inputs.
`iclft bench --peers` (`iclft.bench_peers`) sets iclft next to HF, TransformerLens and nnsight instead.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from iclft.models.load import Loaded, load


@dataclass(frozen=True)
class Sizes:
    """Workload of each comparison on one model."""

    capture_prompts: int = 64
    capture_k: int = 4
    capture_batch: int = 16
    prefix_queries: int = 32
    prefix_k: int = 32
    prefix_batch: int = 32
    adapter_trials: int = 8  # B
    adapter_k: int = 4
    adapter_steps: int = 30
    patch_pairs_per_family: int = 4
    patch_top: int = 10
    repeats: int = 3  # timed runs of each cheap way (the best counts)
    slow_repeats: int = 2  # timed runs of an expensive baseline (full recomputation, exhaustive patching)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


@dataclass(frozen=True)
class DeepSpec:
    """A deeper random Llama: many layers and heads, small width, the built-in tokenizer's vocabulary."""

    layers: int = 24
    heads: int = 16
    hidden: int = 256
    intermediate: int = 512
    max_positions: int = 2048
    seed: int = 0

    @property
    def name(self) -> str:
        return f"random-{self.layers}Lx{self.heads}H"


# Default: ~5 minutes with one torch thread on a 2-core CPU (measured 300 s). Quick: a smoke test (~20 s).
PRESETS: dict[str, dict] = {
    "default": {
        "builtin": Sizes(),
        "deep": Sizes(capture_prompts=32, prefix_queries=16, adapter_steps=10, patch_pairs_per_family=1, repeats=2,
                      slow_repeats=1),
        "deep_spec": DeepSpec(),
    },
    "quick": {
        "builtin": Sizes(capture_prompts=8, capture_k=2, capture_batch=4, prefix_queries=4, prefix_k=4,
                         prefix_batch=4, adapter_trials=2, adapter_steps=3, patch_pairs_per_family=1, patch_top=5,
                         repeats=1, slow_repeats=1),
        "deep": Sizes(capture_prompts=8, capture_k=2, capture_batch=4, prefix_queries=4, prefix_k=4,
                      prefix_batch=4, adapter_trials=2, adapter_steps=3, patch_pairs_per_family=1, patch_top=5,
                      repeats=1, slow_repeats=1),
        "deep_spec": DeepSpec(layers=6, heads=4, hidden=64, intermediate=128),
    },
}


# ------------------------------------------------------------------------------------------ helpers


def deep_model(tokenizer, spec: DeepSpec = DeepSpec(), attn_implementation: str = "sdpa") -> Loaded:
    """A randomly initialised Llama from `spec`, with `tokenizer`'s vocabulary (so the same prompts work)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from iclft.models.families import blocks_of, family_for

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = attn_implementation
    model.eval().requires_grad_(False)
    fam = family_for(cfg)
    info = {"model": spec.name, "family": fam.name, "random_init": True, "builtin_stand_in": False,
            "n_layers": len(blocks_of(model, fam)), "n_params": sum(p.numel() for p in model.parameters()),
            "attn_implementation": model.config._attn_implementation, **dataclasses.asdict(spec)}
    return Loaded(model, tokenizer, fam, spec.name, info)


def load_model(name: str = "builtin", spec: DeepSpec = DeepSpec()) -> Loaded:
    """`load(name)`, except "deep": the deeper random Llama of `spec` with the built-in tokenizer."""
    return deep_model(load("builtin").tokenizer, spec) if name == "deep" else load(name)


def side_by_side(baseline: Callable, fast: Callable, baseline_repeats: int, fast_repeats: int):
    """Best wall time and last result of each way; timed runs alternate so both see the same machine load."""
    t_base = t_fast = math.inf
    r_base = r_fast = None
    for i in range(max(baseline_repeats, fast_repeats)):
        if i < baseline_repeats:
            gc.collect()
            t0 = time.perf_counter()
            r_base = baseline()
            t_base = min(t_base, time.perf_counter() - t0)
        if i < fast_repeats:
            gc.collect()
            t0 = time.perf_counter()
            r_fast = fast()
            t_fast = min(t_fast, time.perf_counter() - t0)
    return t_base, r_base, t_fast, r_fast


def best_of(fn: Callable, repeats: int):
    """Best wall time of `repeats` runs of fn, and its last result."""
    _, _, t_best, result = side_by_side(lambda: None, fn, 0, repeats)
    return t_best, result


def peak_tensor_bytes(fn: Callable) -> int:
    """Peak bytes of CPU tensor storage allocated while fn runs (torch's CPU allocator profiler).

    The running sum of the allocations and frees that each op makes itself (`self_cpu_memory_usage`; the
    inclusive `cpu_memory_usage` would count a nested op's allocations once per enclosing op), in order.
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def _row(name: str, loaded: Loaded, baseline: str, fast: str, baseline_s: float, fast_s: float, sizes: str,
         **extra) -> dict:
    return {"name": name, "model": loaded.name, "baseline": baseline, "fast": fast, "baseline_s": baseline_s,
            "fast_s": fast_s, "ratio": baseline_s / fast_s, "sizes": sizes, **extra}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------------------------------ capture


def bench_capture(loaded: Loaded, *, prompts: int = 64, k: int = 4, batch: int = 16, repeats: int = 3,
                  single: bool = False, memory: bool = True) -> dict:
    """capture() of every resid_post site + logits vs a plain batched HF forward with output_hidden_states.

    The baseline batches the same way (length-sorted, left padding, position ids, use_cache=False) and keeps
    the same last-token tensors, so the ratio is the cost of capturing by hooks. max_abs_diff compares the two
    results (every layer's last-token hidden state and the logits). single=True also times capture one prompt
    at a time (`single_s`, `speedup_vs_single`); memory=True adds the peak-tensor-memory ratio (`mem_ratio`).
    """
    from iclft.capture import capture, site_names
    from iclft.prompts import PromptBuilder
    from iclft.prompts.batching import pad_left
    from iclft.tasks import get_task

    task = get_task("sentiment")
    builder = PromptBuilder(loaded.tokenizer, task, loaded.max_len)
    rng = random.Random(0)
    ids = [builder.build(q, rng.sample(task.train, k)).ids for q in task.test[:prompts]]
    n_layers = loaded.info["n_layers"]
    sites = site_names(n_layers)
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id

    def ours(p=ids):
        return capture(model, fam, p, sites, pad_id=pad, batch_size=batch, logits=True)

    @torch.no_grad()
    def hf(p=ids):
        order = sorted(range(len(p)), key=lambda i: len(p[i]))
        hidden, logits = [None] * len(p), [None] * len(p)
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            x, mask, pos = pad_left([p[i] for i in idx], pad, loaded.device)
            out = model(input_ids=x, attention_mask=mask, position_ids=pos, output_hidden_states=True,
                        use_cache=False)
            h = torch.stack([t[:, -1] for t in out.hidden_states[1:]], 1).float().cpu()  # (b, layers, d)
            lg = out.logits[:, -1].float().cpu()
            for j, i in enumerate(idx):
                hidden[i], logits[i] = h[j], lg[j]
        return torch.stack(hidden), torch.stack(logits)

    ours(ids[:batch])  # warm-up
    hf(ids[:batch])
    t_hf, (h_hf, l_hf), t_ours, cap = side_by_side(hf, ours, repeats, repeats)
    err = max(_max_diff(cap.stack("resid_post", n_layers), h_hf), _max_diff(cap.logits, l_hf))
    extra = {"max_abs_diff": err}
    if memory:
        m_ours, m_hf = peak_tensor_bytes(ours), peak_tensor_bytes(hf)
        extra.update(mem_ratio=m_ours / m_hf, peak_mib=m_ours / 2**20, baseline_peak_mib=m_hf / 2**20)
    if single:
        t_single, _ = best_of(lambda: capture(model, fam, ids, sites, pad_id=pad, batch_size=1, logits=True), 1)
        extra.update(single_s=t_single, speedup_vs_single=t_single / t_ours)
    mean_len = sum(map(len, ids)) / len(ids)
    return _row("capture vs HF forward", loaded, "HF forward with output_hidden_states", "capture (hooks)",
                t_hf, t_ours, f"{len(ids)} prompts, k={k}, ~{mean_len:.0f} tok, batch {batch}, {n_layers} sites",
                **extra)


# ------------------------------------------------------------------------------------------ prefix cache


def bench_prefix_cache(loaded: Loaded, *, queries: int = 32, k: int = 32, batch: int = 32, repeats: int = 2,
                       slow_repeats: int | None = None) -> dict:
    """The dual-view study's capture (attn.out, attn.scores at every layer, logits) of `queries` prompts that
    share k demonstrations: the shared prefix run once and its KV cache reused, vs full recomputation."""
    from iclft.capture import capture, site_names
    from iclft.prompts import PromptBuilder
    from iclft.studies.dual_view import demo_pool, draw_demos
    from iclft.tasks import get_task

    task = get_task("sentiment")
    builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
    _, qs, (train,) = builder.fit(task.test[:queries], [(task.train, task)], k)  # as the study: k fits
    pool = demo_pool(dataclasses.replace(task, train=train, test=qs))
    demos = draw_demos(pool, k, task.label_words, "balanced", random.Random(0))
    prompts = [builder.build(q, demos) for q in qs]
    start = prompts[0].query_span[0]
    prefix, suffixes = prompts[0].ids[:start], [p.ids[start:] for p in prompts]
    sites = site_names(loaded.info["n_layers"], ("attn.out", "attn.scores"))
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id

    def full():
        return capture(model, fam, [p.ids for p in prompts], sites, pad_id=pad, batch_size=batch, logits=True)

    def cached():
        return capture(model, fam, suffixes, sites, prefix=prefix, pad_id=pad, batch_size=batch, logits=True)

    capture(model, fam, [s[:4] for s in suffixes[:2]], sites, prefix=prefix[:8], pad_id=pad, logits=True)  # warm
    t_full, a, t_cached, b = side_by_side(full, cached, slow_repeats or repeats, repeats)
    err = _max_diff(a.logits, b.logits)
    for s in sites:
        if s.endswith("attn.scores"):
            err = max(err, max(_max_diff(x, y) for x, y in zip(a.acts[s], b.acts[s], strict=True)))
        else:
            err = max(err, _max_diff(a.acts[s], b.acts[s]))
    mean_len = sum(len(p) for p in prompts) / len(prompts)
    return _row("prefix KV vs full", loaded, "full recomputation", "shared-prefix KV reuse", t_full, t_cached,
                f"{len(prompts)} queries, k={len(demos)}, prefix {len(prefix)} tok, ~{mean_len:.0f} tok, batch {batch}",
                max_abs_diff=err, k=len(demos), prefix_tokens=len(prefix), mean_prompt_tokens=mean_len)


# ------------------------------------------------------------------------------------------ patching


def patching_pairs(loaded: Loaded, pairs_per_family: int, k: int = 0, items: int = 40) -> list:
    """Clean/misleading pairs (token ids) from every implicit-pattern family, `pairs_per_family` each (built from
    `items` generated misleading items), each after `k` demonstrations of its family (seeded per family),
    ordered so that any leading slice spans the families."""
    from iclft.circuits.pairs import build_pairs, pair_ids
    from iclft.prompts import PromptBuilder
    from iclft.tasks.implicit import DEFAULT_RULE, FAMILIES, generate, implicit_task

    per_family = []
    for fam in FAMILIES:
        task = implicit_task(fam, seed=0, n_train=64 if k else 8, n_test=2)
        builder = PromptBuilder(loaded.tokenizer, task, max_len=loaded.max_len)
        rng = random.Random(f"peers/{fam}")
        pairs = build_pairs(builder, fam, DEFAULT_RULE[fam], generate(fam, items, 99, "misleading"),
                            pairs_per_family)
        per_family.append([pair_ids(builder, p, rng.sample(task.train, k)) if k else pair_ids(builder, p)
                           for p in pairs])
    return [fam[i] for i in range(pairs_per_family) for fam in per_family if i < len(fam)]


def spearman_top(exhaustive: np.ndarray, attribution: np.ndarray, k: int) -> float:
    """Spearman over the top-k components by exhaustive |effect|."""
    from scipy.stats import spearmanr

    from iclft.circuits.patching import top_k

    idx = sorted(top_k(exhaustive, k))
    return float(spearmanr(exhaustive[idx], attribution[idx]).statistic)


def bench_patching(loaded: Loaded, *, pairs_per_family: int = 4, top: int = 10, repeats: int = 2,
                   slow_repeats: int = 2, per_position: bool = False, max_pairs: int | None = None) -> dict:
    """Exhaustive activation patching (one corrupted forward per component) vs attribution patching (one
    forward + backward), same pairs: the speed-up and the rank agreement of the effects (Spearman over all
    components and over the top components by exhaustive |effect|). per_position=True patches every component
    at every position from the first differing token on (the first `max_pairs` pairs)."""
    from scipy.stats import spearmanr

    from iclft.circuits.patching import activation_patching, attribution_patching, make_pairs

    torch.manual_seed(0)
    ids = patching_pairs(loaded, pairs_per_family)[:max_pairs]
    pad = loaded.tokenizer.pad_token_id
    batch = make_pairs(ids, pad, loaded.device)
    model, fam = loaded.model, loaded.family
    attribution_patching(model, fam, batch.rows(slice(0, 2)))  # warm-up
    t_ex, ex, t_at, at = side_by_side(
        lambda: activation_patching(model, fam, batch, batch_size=len(batch), per_position=per_position),
        lambda: attribution_patching(model, fam, batch, batch_size=len(batch), per_position=per_position),
        slow_repeats, repeats)
    e_ex, e_at = ex.effects(), at.effects()
    n_comp = len(ex.components)
    what = f"{n_comp} components" + (f" x positions = {len(e_ex)} rows" if per_position else "")
    mean_len = sum(len(p[0]) for p in ids) / len(ids)
    return _row("attribution vs exh." + (" /pos" if per_position else ""), loaded,
                "exhaustive activation patching", "attribution patching", t_ex, t_at,
                f"{len(ids)} pairs, ~{mean_len:.0f} tok, {what}, top {top}",
                spearman_all=float(spearmanr(e_ex, e_at).statistic), spearman_top=spearman_top(e_ex, e_at, top),
                top=top, components=n_comp, rows=len(e_ex))


# ------------------------------------------------------------------------------------------ LoRA adapters


def adapter_trials(loaded: Loaded, n_trials: int, k: int, seed: int = 0) -> list:
    """(training examples, seed, zero-shot prompt ids) per trial, as the convergence study builds them: trial 2i
    is query i's IT adapter (demonstrations with the instruction), trial 2i+1 its SL adapter (without)."""
    import zlib

    from iclft.prompts import PromptBuilder, select_demos
    from iclft.tasks import get_task

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


def bench_adapters(loaded: Loaded, *, trials: int = 8, k: int = 4, steps: int = 30, repeats: int = 1) -> dict:
    """B = `trials` per-trial LoRA trainings as the convergence study runs them (`adapter_trials`), each followed
    by a capture of the trial's zero-shot prompt (resid_post at the last token of every layer, and the logits)
    through its own adapter: B sequential PEFT trainings (`LoraSession`) vs B adapters stacked into one
    forward/backward per step (`iclft.tuning.StackedLora`). LoraConfigSpec defaults except `steps`.
    max_abs_diff: hidden states and logits of the two ways; max_loss_diff: their per-step training losses."""
    import warnings

    from iclft.capture import capture, site_names
    from iclft.tuning import LoraConfigSpec, LoraSession, StackedLora

    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # PEFT uses a deprecated API
    n_layers = loaded.info["n_layers"]
    sites = site_names(n_layers)
    model, fam, pad = loaded.model, loaded.family, loaded.tokenizer.pad_token_id
    spec = LoraConfigSpec(steps=steps)
    work = adapter_trials(loaded, trials, k)

    def sequential(work=work, spec=spec):
        losses, states, logits = [], [], []
        with LoraSession(model, fam, spec) as s:
            for examples, seed, zsl in work:
                losses.append(s.train(examples, seed=seed, pad_id=pad))
                c = capture(model, fam, [zsl], sites, pad_id=pad, logits=True)
                states.append(c.stack("resid_post", n_layers)[0])
                logits.append(c.logits[0])
        return torch.tensor(losses), torch.stack(states), torch.stack(logits)

    def stacked(work=work, spec=spec):
        with StackedLora(model, fam, spec) as s:
            losses = s.train([t[0] for t in work], [t[1] for t in work], pad_id=pad)
            c = s.capture([t[2] for t in work], list(range(len(work))), sites, pad_id=pad, logits=True)
        return torch.tensor(losses), c.stack("resid_post", n_layers), c.logits

    warm = adapter_trials(loaded, 2, k)  # first-call costs (PEFT builds a lot on its first use)
    sequential(warm, spec.model_copy(update={"steps": 2}))
    stacked(warm, spec.model_copy(update={"steps": 2}))
    t_seq, (l_seq, h_seq, g_seq), t_stk, (l_stk, h_stk, g_stk) = side_by_side(sequential, stacked, repeats, repeats)
    return _row("stacked vs seq. LoRA", loaded, "sequential PEFT LoRA trainings (LoraSession)",
                "stacked adapters (StackedLora)", t_seq, t_stk,
                f"B={trials} trials, k={k} demos, {steps} AdamW steps, r={spec.adapter.r}, + capture",
                max_abs_diff=max(_max_diff(h_seq, h_stk), _max_diff(g_seq, g_stk)),
                max_loss_diff=_max_diff(l_seq, l_stk), trials=trials, steps=steps)


# ------------------------------------------------------------------------------------------ the table


def _failed(name: str, model: str, exc: Exception) -> dict:
    return {"name": name, "model": model, "baseline": None, "fast": None, "baseline_s": None, "fast_s": None,
            "ratio": None, "sizes": "", "status": f"FAILED: {type(exc).__name__}: {exc}"}


def run_bench(preset: str = "default", *, models: tuple[str, ...] = ("builtin", "deep"),
              sizes: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """Every comparison on every model; returns {"rows": [...], "models": {...}, "sizes": {...}, ...}.

    sizes: {"builtin": Sizes, "deep": Sizes, "deep_spec": DeepSpec}, overriding the preset's entries.
    """
    conf = {**PRESETS[preset], **(sizes or {})}
    t_start = time.perf_counter()
    log(f"iclft bench, preset {preset}: " + ", ".join(models) + (
        f" (deep = {conf['deep_spec']})" if "deep" in models else ""))
    builtin = load("builtin")
    loaded = {"builtin": builtin}
    if "deep" in models:
        loaded["deep"] = deep_model(builtin.tokenizer, conf["deep_spec"])
    rows, infos = [], {}
    for key in models:
        m, sz = loaded[key], conf[key]
        infos[m.name] = {k: v for k, v in m.info.items() if k not in ("model_path", "model_sha256")}
        log(f"{m.name}: {m.info['n_layers']} layers, {m.info['n_params']:,} parameters; {sz.describe()}")
        jobs = [
            ("capture vs HF forward", lambda m=m, sz=sz: bench_capture(
                m, prompts=sz.capture_prompts, k=sz.capture_k, batch=sz.capture_batch, repeats=sz.repeats)),
            ("prefix KV vs full", lambda m=m, sz=sz: bench_prefix_cache(
                m, queries=sz.prefix_queries, k=sz.prefix_k, batch=sz.prefix_batch, repeats=sz.repeats,
                slow_repeats=sz.slow_repeats)),
            ("attribution vs exh.", lambda m=m, sz=sz: bench_patching(
                m, pairs_per_family=sz.patch_pairs_per_family, top=sz.patch_top, repeats=sz.repeats,
                slow_repeats=sz.slow_repeats)),
            ("stacked vs seq. LoRA", lambda m=m, sz=sz: bench_adapters(
                m, trials=sz.adapter_trials, k=sz.adapter_k, steps=sz.adapter_steps, repeats=sz.slow_repeats)),
        ]
        for name, job in jobs:
            t0 = time.perf_counter()
            try:
                row = job()
            except Exception as exc:  # noqa: BLE001 - one broken comparison must not lose the others
                log(f"  {name}: FAILED: {type(exc).__name__}: {exc}")
                row = _failed(name, m.name, exc)
            log(f"  {name:22s} {time.perf_counter() - t0:7.1f} s")
            rows.append(row)
    return {"preset": preset, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "wall_s": time.perf_counter() - t_start, "models": infos,
            "sizes": {k: dataclasses.asdict(v) for k, v in conf.items()}, "rows": rows}


def _fmt(v, spec: str, width: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"{'-':>{width}s}"
    return f"{v:>{width}{spec}}"


def format_table(rows: list[dict]) -> str:
    """Fixed-width table: one line per row; '-' where a metric does not apply."""
    head = (f"{'benchmark':24s} {'model':16s} {'base s':>8s} {'fast s':>8s} {'speed-up':>9s} {'max|diff|':>9s} "
            f"{'mem':>6s} {'rho all':>7s} {'rho top':>7s}  sizes")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("ratio") is None:
            lines.append(f"{r['name']:24s} {r['model']:16s} {r['status']}")
            continue
        lines.append(
            f"{r['name']:24s} {r['model']:16s} {_fmt(r['baseline_s'], '.3f', 8)} {_fmt(r['fast_s'], '.3f', 8)} "
            f"{_fmt(r['ratio'], '.2f', 8)}x {_fmt(r.get('max_abs_diff'), '.1e', 9)} "
            f"{_fmt(r.get('mem_ratio'), '.2f', 6)} {_fmt(r.get('spearman_all'), '.3f', 7)} "
            f"{_fmt(r.get('spearman_top'), '.3f', 7)}  {r['sizes']}")
    lines += ["speed-up = base s / fast s, each the best of its timed runs (< 1: the fast way is slower; capture: "
              "base = plain HF forward, fast = capture).",
              "max|diff| = largest difference between the two ways' results; mem = capture's peak tensor memory / "
              "HF's; rho = Spearman of attribution vs exhaustive effects, all / top components."]
    return "\n".join(lines)


__all__ = ["DeepSpec", "PRESETS", "Sizes", "bench_adapters", "bench_capture", "bench_patching",
           "bench_prefix_cache", "deep_model", "format_table", "load_model", "peak_tensor_bytes", "run_bench",
           "side_by_side", "spearman_top"]
