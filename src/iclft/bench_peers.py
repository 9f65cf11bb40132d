"""`iclft bench --peers`: iclft next to plain HF transformers, TransformerLens and nnsight, one run.

Three workloads on three models (the built-in model, a 12-layer random Llama, a random GPT-2-small config; the
built-in tokenizer's vocabulary throughout):

    capture   every layer's last-token residual state and the logits of a batch of prompts of one length
    patching  exhaustive activation patching of attention heads (each head's output at all positions, one
              head at a time) over clean/misleading pairs of the implicit study (each pair with its own
              demonstrations, so the clean and corrupted prompts share everything before the query)
    prefix    last-token logits of queries that all follow the same k demonstrations (the dual study's prompts)

Each tool does a workload its own documented way: iclft `capture` / `activation_patching` /
`capture(prefix=)` (and its uncached `capture`); HF one forward (patching: a hook on the attention output
projection, one forward per head); TransformerLens `TransformerBridge.run_with_cache`, the same `generic
_activation_patch` that `get_act_patch_attn_head_out_all_pos` is, over the same heads; nnsight `trace`, for
patching one trace with one `invoke` per head (its batched form). Prompts of several lengths are right-padded
for the peers (causal attention: a pad after the last token cannot change it) and left-padded with position
ids by iclft. Results are compared with iclft's: max|diff|, with the final norm applied to a tool's last layer
where it is taken before that norm (iclft's last `resid_post` is after it, as HF's last hidden state).

Timing: process CPU seconds (torch on one thread), tools interleaved round by round after one warm-up
round, median of `repeats` rounds. Peak memory: each (workload, tool) once more in a fresh process, the growth
of its peak resident set during the run over its resident set before it (Linux `VmHWM`, reset after loading).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iclft import UserError
from iclft.bench import DeepSpec, _max_diff, deep_model, patching_pairs
from iclft.models.load import Loaded, load

PEERS = ("transformer_lens", "nnsight")
INSTALL = "pip install 'iclft[bench]' -c benchmarks/constraints-bench.txt"
TOOLS = {"capture": ("iclft", "HF", "TransformerLens", "nnsight"),
         "patching": ("iclft", "HF", "TransformerLens", "nnsight"),
         "prefix": ("iclft", "iclft uncached", "HF", "TransformerLens", "nnsight")}


def require_peers() -> None:
    """A UserError naming the install command when TransformerLens or nnsight is missing."""
    missing = [m for m in PEERS if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"the peer benchmark needs {' and '.join(missing)}: {INSTALL}")


@dataclass(frozen=True)
class PeerSizes:
    """One model's workloads."""

    capture_prompts: int = 32
    capture_tokens: int = 512
    patch_pairs: int = 16
    patch_k: int = 2  # demonstrations per pair
    patch_layers: tuple[int, ...] | None = None  # the layers whose heads are patched; None: all
    prefix_queries: int = 64
    prefix_k: int = 16
    repeats: int = 5


# Default: ~15 minutes on the shared 2-core machine; quick: a smoke test.
PEER_PRESETS: dict[str, dict[str, PeerSizes]] = {
    "default": {
        "builtin": PeerSizes(),
        "llama12": PeerSizes(capture_prompts=8, capture_tokens=256, patch_pairs=4, patch_layers=(0, 6, 11),
                             prefix_queries=16, prefix_k=8),
        "gpt2": PeerSizes(capture_prompts=4, capture_tokens=128, patch_pairs=2, patch_k=1, patch_layers=(0, 11),
                          prefix_queries=8, prefix_k=4),
    },
    "quick": {
        "builtin": PeerSizes(capture_prompts=4, capture_tokens=32, patch_pairs=2, patch_k=1, patch_layers=(0, 3),
                             prefix_queries=4, prefix_k=2, repeats=1),
    },
}
LLAMA12 = DeepSpec(layers=12, heads=8, hidden=256, intermediate=1024)


def gpt2_small(tokenizer, seed: int = 0) -> Loaded:
    """A randomly initialised GPT-2 small (12 layers x 12 heads, 768 wide) over `tokenizer`'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from iclft.models.families import family_for

    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    model.config._attn_implementation = "sdpa"
    model.eval().requires_grad_(False)
    info = {"model": "random-gpt2-small", "family": "gpt2", "random_init": True, "n_layers": cfg.n_layer,
            "n_params": sum(p.numel() for p in model.parameters())}
    return Loaded(model, tokenizer, family_for(cfg), "random-gpt2-small", info)


def peer_model(key: str) -> Loaded:
    builtin = load("builtin")
    if key == "builtin":
        return builtin
    if key == "llama12":
        return deep_model(builtin.tokenizer, LLAMA12)
    if key == "gpt2":
        return gpt2_small(builtin.tokenizer)
    raise UserError(f"unknown peer-bench model {key!r} (builtin, llama12, gpt2)")


# ------------------------------------------------------------------------------------------ workloads


@dataclass
class Work:
    """One workload's inputs, shared by every tool."""

    kind: str
    prompts: list[list[int]] = dataclasses.field(default_factory=list)  # capture; prefix: prefix + suffix
    prefix: list[int] = dataclasses.field(default_factory=list)
    suffixes: list[list[int]] = dataclasses.field(default_factory=list)
    pairs: list = dataclasses.field(default_factory=list)  # (clean, corrupt, right, wrong)
    heads: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    describe: str = ""


def make_work(kind: str, m: Loaded, sz: PeerSizes) -> Work:
    tok = m.tokenizer
    if kind == "capture":
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(4, len(tok), (sz.capture_prompts, sz.capture_tokens), generator=g).tolist()
        return Work(kind, prompts=ids, describe=f"{sz.capture_prompts} x {sz.capture_tokens} tok, one batch")
    if kind == "prefix":
        from iclft.prompts import PromptBuilder
        from iclft.studies.dual_view import demo_pool, draw_demos
        from iclft.tasks import get_task

        task = get_task("sentiment")
        builder = PromptBuilder(tok, task, max_len=m.max_len)
        _, qs, (train,) = builder.fit(task.test[:sz.prefix_queries], [(task.train, task)], sz.prefix_k)
        pool = demo_pool(dataclasses.replace(task, train=train, test=qs))
        demos = draw_demos(pool, sz.prefix_k, task.label_words, "balanced", random.Random(0))
        prompts = [builder.build(q, demos) for q in qs]
        start = prompts[0].query_span[0]
        prefix, suffixes = prompts[0].ids[:start], [p.ids[start:] for p in prompts]
        return Work(kind, prompts=[prefix + s for s in suffixes], prefix=prefix, suffixes=suffixes,
                    describe=f"{len(suffixes)} queries, k={len(demos)}, prefix {len(prefix)} tok")
    if kind == "patching":
        from iclft.tasks.implicit import FAMILIES

        per_family = -(-sz.patch_pairs // len(FAMILIES))
        pairs = patching_pairs(m, per_family, k=sz.patch_k, items=60)[:sz.patch_pairs]
        n_layers, n_heads = m.info["n_layers"], m.model.config.num_attention_heads
        layers = sz.patch_layers if sz.patch_layers is not None else range(n_layers)
        heads = [(la, h) for la in layers if la < n_layers for h in range(n_heads)]
        lens = [len(p[0]) for p in pairs]
        return Work(kind, pairs=pairs, heads=heads,
                    describe=f"{len(heads)} heads x {len(pairs)} pairs, k={sz.patch_k}, {min(lens)}-{max(lens)} tok")
    raise ValueError(kind)


def _right_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, width) ids right-padded, and each row's last real position."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, torch.tensor([len(s) - 1 for s in seqs])


def _at(path: str, root):
    return functools.reduce(getattr, path.split("."), root)


def _final_norm(m: Loaded) -> Callable:
    return _at(m.family.final_norm, m.model)


def _ld(logits: torch.Tensor, last: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(last))
    lg = logits[rows, last].float() if logits.dim() == 3 else logits.float()
    return lg[rows, right] - lg[rows, wrong]


# ------------------------------------------------------------------------------------------ the tools


class Tools:
    """Every tool's way of running each workload on one model; each returns tensors comparable with iclft's:
    capture (states (n, layers, d), logits (n, V)), patching (delta (heads, pairs)), prefix (logits (n, V))."""

    def __init__(self, m: Loaded, tools=("HF", "TransformerLens", "nnsight")):
        self.m, self.model, self.fam = m, m.model, m.family
        self.pad = m.tokenizer.pad_token_id
        self.n_layers = m.info["n_layers"]
        cfg = m.model.config
        self.n_heads = cfg.num_attention_heads
        self.d_head = cfg.hidden_size // self.n_heads
        self.tl = self.lm = None
        if "TransformerLens" in tools:
            from transformer_lens.model_bridge import TransformerBridge

            with _quiet():  # the bridge switches attention to eager: give it its own copy
                self.tl = TransformerBridge.boot_transformers(m.name, hf_model=copy.deepcopy(m.model),
                                                              tokenizer=m.tokenizer)
            self.tl.eval()
        if "nnsight" in tools:
            from nnsight import LanguageModel

            with _quiet():
                self.lm = LanguageModel(copy.deepcopy(m.model), tokenizer=m.tokenizer)

    def run(self, tool: str, w: Work):
        with torch.no_grad(), _quiet():
            return getattr(self, f"_{w.kind}_{tool.replace(' ', '_').lower()}")(w)

    # capture ----------------------------------------------------------------------------------------------
    def _capture_iclft(self, w: Work):
        from iclft.capture import capture, site_names

        cap = capture(self.model, self.fam, w.prompts, site_names(self.n_layers), pad_id=self.pad,
                      batch_size=len(w.prompts), logits=True)
        return cap.stack("resid_post", self.n_layers), cap.logits

    def _capture_hf(self, w: Work):
        out = self.model(input_ids=torch.tensor(w.prompts), output_hidden_states=True, use_cache=False)
        return torch.stack([h[:, -1] for h in out.hidden_states[1:]], 1), out.logits[:, -1]

    def _capture_transformerlens(self, w: Work):
        names = [f"blocks.{i}.hook_resid_post" for i in range(self.n_layers)]
        logits, cache = self.tl.run_with_cache(torch.tensor(w.prompts), names_filter=lambda n: n in names)
        states = [cache[n][:, -1] for n in names]
        states[-1] = _final_norm(self.m)(states[-1])  # TL's last resid_post is before the final norm
        return torch.stack(states, 1), logits[:, -1]

    def _capture_nnsight(self, w: Work):
        lm, saved = self.lm, []
        layers = _at(self.fam.blocks, lm)
        with lm.trace(torch.tensor(w.prompts)):
            for i in range(self.n_layers):
                out = layers[i].output
                saved.append((out[0] if isinstance(out, tuple) else out)[:, -1].save())
            logits = lm.lm_head.output[:, -1].save()
        saved[-1] = _final_norm(self.m)(saved[-1])
        return torch.stack(saved, 1), logits

    # prefix -----------------------------------------------------------------------------------------------
    def _prefix_iclft(self, w: Work):
        from iclft.capture import capture

        return capture(self.model, self.fam, w.suffixes, [], prefix=w.prefix, pad_id=self.pad,
                       batch_size=len(w.suffixes), logits=True).logits

    def _prefix_iclft_uncached(self, w: Work):
        from iclft.capture import capture

        return capture(self.model, self.fam, w.prompts, [], pad_id=self.pad, batch_size=len(w.prompts),
                       logits=True).logits

    def _prefix_hf(self, w: Work):
        ids, last = _right_pad(w.prompts, self.pad)
        return self.model(input_ids=ids, use_cache=False).logits[torch.arange(len(last)), last]

    def _prefix_transformerlens(self, w: Work):
        ids, last = _right_pad(w.prompts, self.pad)
        return self.tl(ids)[torch.arange(len(last)), last]

    def _prefix_nnsight(self, w: Work):
        ids, last = _right_pad(w.prompts, self.pad)
        with self.lm.trace(ids):
            logits = self.lm.lm_head.output.save()
        return logits[torch.arange(len(last)), last]

    # patching ---------------------------------------------------------------------------------------------
    def _pair_tensors(self, w: Work):
        clean, last = _right_pad([p[0] for p in w.pairs], self.pad)
        corrupt, _ = _right_pad([p[1] for p in w.pairs], self.pad)
        return clean, corrupt, last, torch.tensor([p[2] for p in w.pairs]), torch.tensor([p[3] for p in w.pairs])

    def _cols(self, h: int) -> slice:
        return slice(h * self.d_head, (h + 1) * self.d_head)

    def _patching_iclft(self, w: Work):
        from iclft.circuits.patching import Component, activation_patching, make_pairs

        batch = make_pairs(w.pairs, self.pad)
        comps = [Component("head", la, h) for la, h in w.heads]
        return torch.from_numpy(activation_patching(self.model, self.fam, batch, comps, batch_size=len(batch)).delta)

    def _patching_hf(self, w: Work):
        clean, corrupt, last, right, wrong = self._pair_tensors(w)
        blocks = _at(self.fam.blocks, self.model)
        o_proj = [_at(self.fam.o_proj, b) for b in blocks]
        z: dict = {}
        handles = [o.register_forward_pre_hook(lambda _m, a, i=i: z.__setitem__(i, a[0])) for i, o in enumerate(o_proj)]
        self.model(input_ids=clean, use_cache=False)
        for h in handles:
            h.remove()
        base = _ld(self.model(input_ids=corrupt, use_cache=False).logits, last, right, wrong)
        out = []
        for la, h in w.heads:
            def patch(_m, a, la=la, cols=self._cols(h)):
                x = a[0].clone()
                x[..., cols] = z[la][..., cols]
                return (x, *a[1:])

            handle = o_proj[la].register_forward_pre_hook(patch)
            try:
                out.append(_ld(self.model(input_ids=corrupt, use_cache=False).logits, last, right, wrong) - base)
            finally:
                handle.remove()
        return torch.stack(out)

    def _patching_transformerlens(self, w: Work):
        import pandas as pd
        from transformer_lens import patching as tlp

        tlp.tqdm = lambda it, **_: it  # its per-head progress bar, not part of the work

        clean, corrupt, last, right, wrong = self._pair_tensors(w)
        names = {f"blocks.{la}.attn.hook_z" for la, _ in w.heads}
        _, cache = self.tl.run_with_cache(clean, names_filter=lambda n: n in names)
        base = _ld(self.tl(corrupt), last, right, wrong)
        res = tlp.generic_activation_patch(
            self.tl, corrupt, cache, lambda logits: _ld(logits, last, right, wrong),
            patch_setter=tlp.layer_head_vector_patch_setter, activation_name="z",
            index_df=pd.DataFrame(w.heads, columns=["layer", "head"]), reduce="none")
        return res.values - base

    def _patching_nnsight(self, w: Work):
        clean, corrupt, last, right, wrong = self._pair_tensors(w)
        lm = self.lm
        layers = _at(self.fam.blocks, lm)
        z = {}
        with lm.trace(clean):
            for la in sorted({la for la, _ in w.heads}):
                z[la] = _at(self.fam.o_proj, layers[la]).input.save()
        with lm.trace(corrupt):
            base = lm.lm_head.output.save()
        outs = []
        with lm.trace() as tracer:  # one invoke per head: nnsight batches them into one forward
            for la, h in w.heads:
                with tracer.invoke(corrupt):
                    cols = self._cols(h)
                    _at(self.fam.o_proj, layers[la]).input[:, :, cols] = z[la][:, :, cols]
                    outs.append(lm.lm_head.output.save())
        base = _ld(base, last, right, wrong)
        return torch.stack([_ld(o, last, right, wrong) - base for o in outs])


@contextlib.contextmanager
def _quiet():
    import logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)


def _diff(a, b) -> float:
    if isinstance(a, tuple):
        return max(_diff(x, y) for x, y in zip(a, b, strict=True))
    return _max_diff(a, b)


# ------------------------------------------------------------------------------------------ runs


def time_tools(tools: Tools, w: Work, names, repeats: int) -> dict:
    """Median CPU seconds of each tool (rounds interleave the tools, after one warm-up round) and max|diff|
    of its result from iclft's."""
    secs: dict = {t: [] for t in names}
    results: dict = {}
    for r in range(repeats + 1):
        for t in names:
            c0 = time.process_time()
            results[t] = tools.run(t, w)
            if r:  # round 0 warms up
                secs[t].append(time.process_time() - c0)
    ref = results["iclft"]
    return {t: {"cpu_s": statistics.median(secs[t]), "max_abs_diff": _diff(results[t], ref)} for t in names}


def peak_memory(model: str, preset: str, kind: str, tool: str) -> float:
    """MiB by which the peak resident set grows while `tool` runs `kind` once, in a fresh process."""
    code = (f"from iclft.bench_peers import _memory_child; _memory_child({model!r}, {preset!r}, {kind!r}, {tool!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
        return math.nan
    return json.loads(lines[-1])["peak_mib"]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return None


def _memory_child(model: str, preset: str, kind: str, tool: str) -> None:
    torch.set_num_threads(1)
    m = peer_model(model)
    w = make_work(kind, m, PEER_PRESETS[preset][model])
    tools = Tools(m, (tool,))
    rss = _status_kib("VmRSS")
    try:  # Linux: reset the peak resident set, so that loading's peak does not hide the run's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: _status_kib("VmHWM")  # noqa: E731
    except OSError:  # elsewhere: the run's growth of the lifetime peak (0 where loading peaked higher)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    tools.run(tool, w)
    print(json.dumps({"peak_mib": (peak() - rss) / 1024}))


def run_peers(preset: str = "default", *, models: tuple[str, ...] | None = None, memory: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Every workload x tool on every model of the preset; memory=True adds the fresh-process peak memory
    (on the first model only: one process per workload and tool)."""
    require_peers()
    conf = PEER_PRESETS[preset]
    models = models or tuple(conf)
    t_start = time.perf_counter()
    rows = []
    for i, key in enumerate(models):
        m, sz = peer_model(key), conf[key]
        log(f"{m.name}: {m.info['n_layers']} layers, {m.info['n_params']:,} parameters")
        tools = Tools(m)
        for kind, names in TOOLS.items():
            t0 = time.perf_counter()
            w = make_work(kind, m, sz)
            res = time_tools(tools, w, names, sz.repeats)
            mem = {t: peak_memory(key, preset, kind, t) for t in names} if memory and i == 0 else {}
            for t in names:
                rows.append({"model": m.name, "workload": kind, "tool": t, "sizes": w.describe, **res[t],
                             "vs_iclft": res[t]["cpu_s"] / res["iclft"]["cpu_s"], "peak_mib": mem.get(t)})
            log(f"  {kind:9s} {time.perf_counter() - t0:7.1f} s")
    from importlib import metadata

    import nnsight
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "transformer_lens": metadata.version("transformer-lens"), "nnsight": nnsight.__version__}
    return {"preset": preset, "torch_threads": torch.get_num_threads(), "versions": versions,
            "wall_s": time.perf_counter() - t_start, "rows": rows}


def format_peers(rows: list[dict]) -> str:
    """Markdown table: per model and workload, every tool's median CPU seconds, its multiple of iclft's, its
    max|diff| from iclft's result, and its fresh-process peak memory."""
    out = ["| model | workload | tool | CPU s (median) | x iclft | max\\|diff\\| | peak MiB | sizes |",
           "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        mem = "-" if r.get("peak_mib") is None or r["peak_mib"] != r["peak_mib"] else f"{r['peak_mib']:.0f}"
        out.append(f"| {r['model']} | {r['workload']} | {r['tool']} | {r['cpu_s']:.3f} | {r['vs_iclft']:.2f} | "
                   f"{r['max_abs_diff']:.1e} | {mem} | {r['sizes']} |")
    return "\n".join(out)


__all__ = ["INSTALL", "PEER_PRESETS", "PeerSizes", "Tools", "format_peers", "gpt2_small", "make_work",
           "require_peers", "run_peers"]
