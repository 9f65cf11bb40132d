"""Activation patching and attribution patching over attention heads and MLP blocks (METRICS.md,
"Implicit patterns").

A *pair* is a clean prompt and a corrupted (misleading) prompt of IDENTICAL token length, plus two answer
tokens: `right` and `wrong`. LD = logit[right] − logit[wrong] at the last position.

Components: the output of attention head (l, h) — the head's slice of the site `blocks.{l}.attn.z`, the
input of the attention output projection, so patching one head leaves the others untouched — and the
output of MLP l (`blocks.{l}.mlp.out`); any other hook site of `iclft.capture.sites` can be patched whole
as `Component(kind, l)`, e.g. `Component("resid_post", 2)`.
Patching c runs the corrupted prompt with c's activation taken from the clean run at the
same positions (pairs are batched with the same left padding, so positions line up exactly):

    e_c = (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt)

Attribution patching replaces the patched run by a first-order Taylor expansion around the corrupted
run: LD_patched − LD_corrupt ≈ (a_clean − a_corrupt) · ∂LD/∂a, one forward + backward for all components.

Over several pairs, effects are pooled as Σ_p sign(Δ_p)(LD_patched,p − LD_corrupt,p) / Σ_p |Δ_p| with
Δ_p = LD_clean,p − LD_corrupt,p: the |Δ_p|-weighted mean of the per-pair e_c, which equals the formula
above for one pair and does not blow up on pairs whose clean and corrupted LD barely differ.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from iclft.capture import sites as S
from iclft.capture.prefix import cache_of, keep_last
from iclft.models.families import Family, blocks_of, n_heads
from iclft.prompts.batching import pad_left

_SITE_OF = {"head": "attn.z", "mlp": "mlp.out"}  # the site a head (a slice of it) or an MLP is patched at


@dataclass(frozen=True)
class Component:
    kind: str  # "head" | "mlp" | another site kind (`iclft.capture.sites.SITES`), patched whole
    layer: int
    head: int = -1  # -1 unless a head

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.head}"
        return f"L{self.layer}MLP" if self.kind == "mlp" else f"L{self.layer}.{self.kind}"

    @property
    def site(self) -> str:
        return f"blocks.{self.layer}.{_SITE_OF.get(self.kind, self.kind)}"


def components(model, family: Family) -> list[Component]:
    """Every head of every layer, then that layer's MLP: layer-major order."""
    h = n_heads(model.config)
    out = []
    for layer in range(len(blocks_of(model, family))):
        out += [Component("head", layer, i) for i in range(h)]
        out.append(Component("mlp", layer))
    return out


@dataclass
class PairBatch:
    """Clean and corrupted prompts, left-padded to one width so that positions line up."""

    clean: torch.Tensor  # (P, W)
    corrupt: torch.Tensor  # (P, W)
    mask: torch.Tensor  # (P, W), identical for both
    pos: torch.Tensor  # (P, W)
    right: torch.Tensor  # (P,)
    wrong: torch.Tensor  # (P,)
    first_diff: list[int] = field(default_factory=list)  # first padded position where clean != corrupt

    def __len__(self) -> int:
        return self.clean.shape[0]

    def rows(self, sl: slice) -> PairBatch:
        return PairBatch(self.clean[sl], self.corrupt[sl], self.mask[sl], self.pos[sl], self.right[sl],
                         self.wrong[sl], self.first_diff[sl])


def make_pairs(pairs: list[tuple[list[int], list[int], int, int]], pad_id: int, device="cpu") -> PairBatch:
    """pairs: (clean_ids, corrupt_ids, right_token, wrong_token), clean and corrupt of equal length."""
    if not pairs:
        raise ValueError("no pairs to patch")
    for clean, corrupt, right, wrong in pairs:
        if len(clean) != len(corrupt):
            raise ValueError(f"clean and corrupted prompts must have the same length ({len(clean)} != {len(corrupt)})")
        if right == wrong:
            raise ValueError("the right and wrong answer tokens must differ")
    clean, mask, pos = pad_left([p[0] for p in pairs], pad_id, device)
    corrupt, _, _ = pad_left([p[1] for p in pairs], pad_id, device)
    diff = (clean != corrupt)
    first = [int(d.nonzero()[0, 0]) if d.any() else clean.shape[1] for d in diff]
    return PairBatch(clean, corrupt, mask, pos,
                     torch.tensor([p[2] for p in pairs], device=device),
                     torch.tensor([p[3] for p in pairs], device=device), first)


# ------------------------------------------------------------------------------------------ hooks


class _Sites:
    """The hooked sites: every layer's `attn.z` (heads) and `mlp.out`, plus the sites of any other `comps`."""

    def __init__(self, model, family: Family, comps=()):
        self.model, self.family = model, family
        self.blocks = blocks_of(model, family)
        self.n_layers = len(self.blocks)
        self.n_heads = n_heads(model.config)
        names = [f"blocks.{layer}.{kind}" for layer in range(self.n_layers) for kind in _SITE_OF.values()]
        names += sorted({c.site for c in comps} - set(names))
        self.parsed = S.parse(names, self.n_layers)


def _as3d(t: torch.Tensor, shape) -> torch.Tensor:
    return t.view(*shape[:2], -1) if t.dim() == 2 else t  # OPT's fc2 runs on (batch*seq, d)


@contextlib.contextmanager
def _hooks(sites: _Sites, record: dict | None = None, patch: dict | None = None):
    """record: fills record[site name] with the activations (graph kept).
    patch: {site name: (clean_act, mask)}: the clean activation, (rows, W, D), replaces the running one where
    `mask` (broadcast to (rows, W, D)) is set."""
    handles = []

    def swap(key):
        def fn(t):
            if patch and key in patch:
                src, mask = patch[key]
                # OPT runs its MLP on (batch*seq, d): patch it as (batch, seq, d)
                t = torch.where(mask, src, t.view(src.shape)).view_as(t)
            if record is not None:
                record[key] = t
            return t

        return fn

    try:
        for name, layer, site in sites.parsed:
            handles.append(S.hook(sites.model, sites.family, layer, site, swap(name), sites.blocks))
        yield
    finally:
        for h in handles:
            h.remove()


def _ld(model, ids, batch: PairBatch, past=None, **kw) -> torch.Tensor:
    """LD at the last position; with `past` (a prefix cache, see `_Prefix`), `ids` are the tokens after it."""
    if past is not None:
        kw.update(past_key_values=past(), use_cache=True)
    else:
        kw.update(use_cache=False)
    logits = model(input_ids=ids, attention_mask=batch.mask, position_ids=batch.pos,
                   **keep_last(model), **kw).logits[:, -1].float()
    return logits.gather(1, batch.right[:, None])[:, 0] - logits.gather(1, batch.wrong[:, None])[:, 0]


def _head_cols(sites: _Sites, width: int, head: int, device) -> torch.Tensor:
    dh = width // sites.n_heads
    cols = torch.zeros(width, dtype=torch.bool, device=device)
    cols[head * dh:(head + 1) * dh] = True
    return cols


def _patch_spec(sites: _Sites, clean_acts: dict, comps: list[Component], positions=None) -> dict:
    """Build the patch dict for a set of components patched together; clean_acts: (P, W, D) per key;
    positions: None (all) or a (P, W) bool mask."""
    spec: dict = {}
    for c in comps:
        key = c.site
        src = clean_acts[key]
        width = src.shape[-1]
        cols = spec.get(key, (None, torch.zeros(width, dtype=torch.bool, device=src.device)))[1]
        if c.kind == "head":
            cols = cols | _head_cols(sites, width, c.head, src.device)
        else:
            cols = torch.ones(width, dtype=torch.bool, device=src.device)
        spec[key] = (src, cols)
    out = {}
    for key, (src, cols) in spec.items():
        m = cols.view(1, 1, -1)
        if positions is not None:
            m = m & positions[:, :, None]
        out[key] = (src, m)
    return out


def _run_patched(model, sites, batch: PairBatch, patch: dict, past=None) -> torch.Tensor:
    with _hooks(sites, patch=patch):
        return _ld(model, batch.corrupt, batch, past)


class _Prefix:
    """The positions before `cut`, where clean and corrupted prompts are identical (cut <= every pair's first
    differing position), run once: their KV cache serves every later run of the batch, which then feeds
    only the tokens from `cut` on (`self.batch`: ids and positions from `cut`, the full attention mask).
    Patching a position before `cut` would copy an activation onto itself, so no run needs them."""

    def __init__(self, model, batch: PairBatch, cut: int):
        self.model, self.cut = model, cut
        self.kv = None
        if cut > 0:
            out = model(input_ids=batch.clean[:, :cut], attention_mask=batch.mask[:, :cut],
                        position_ids=batch.pos[:, :cut], use_cache=True, **keep_last(model))
            self.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.batch = PairBatch(batch.clean[:, cut:], batch.corrupt[:, cut:], batch.mask, batch.pos[:, cut:],
                               batch.right, batch.wrong, [f - cut for f in batch.first_diff])

    def cache(self, copies: int = 1, from_layer: int = 0):
        """A zero-argument factory of a fresh cache (a forward pass appends to the cache it is given), the
        batch repeated `copies` times (rows copy-major); None without a prefix. Layers below `from_layer`
        are replayed (`_replay`), never read their cache: they get stride-0 views of one row, not copies."""
        if self.kv is None:
            return None

        def grow(t, layer):
            if copies == 1:
                return t
            return _repeat(t, copies) if layer >= from_layer else t[:1].expand(copies * t.shape[0], *t.shape[1:])

        kv = [(grow(k, i), grow(v, i)) for i, (k, v) in enumerate(self.kv)]
        return lambda: cache_of(self.model, kv)


def _repeat(t: torch.Tensor, g: int) -> torch.Tensor:
    return t.repeat(g, *([1] * (t.dim() - 1)))


def _repeat_out(out, g: int, rows: int):
    """A block's output (a tensor, or a tuple holding tensors) with every batch-`rows` tensor repeated g times."""
    if isinstance(out, torch.Tensor):
        return _repeat(out, g) if out.dim() and out.shape[0] == rows else out
    if isinstance(out, (tuple, list)):
        return type(out)(_repeat_out(o, g, rows) for o in out)
    return out


@contextlib.contextmanager
def _replay(blocks, outs: list, upto: int, g: int, rows: int):
    """Blocks below `upto` return their recorded corrupted-run output (repeated g times) instead of computing
    it: a patch at layer l cannot change what the layers before l compute, so a patched run starts at l."""
    saved = [blocks[i].__dict__.get("forward") for i in range(upto)]
    for i in range(upto):
        out = _repeat_out(outs[i], g, rows)
        blocks[i].forward = lambda *_a, _out=out, **_k: _out
    try:
        yield
    finally:
        for i in range(upto):
            if saved[i] is None:
                del blocks[i].forward
            else:
                blocks[i].forward = saved[i]


def _run_jobs(model, sites, prefix: _Prefix, clean_acts: dict, block_outs: list,
              jobs: list[tuple[Component, int | None]]) -> torch.Tensor:
    """LD of the corrupted prompts, each job (component, padded position or None = all) patched ALONE, all
    jobs in one forward pass over len(jobs) copies of the batch (rows job-major): (len(jobs), P). The blocks
    before the jobs' first layer are replayed from the corrupted run (`block_outs`), not recomputed."""
    batch = prefix.batch
    g, (p, w) = len(jobs), batch.corrupt.shape
    start = min(c.layer for c, _ in jobs)
    masks: dict = {}
    for j, (c, position) in enumerate(jobs):
        key = c.site
        src = clean_acts[key]
        if key not in masks:
            masks[key] = torch.zeros((g, 1 if all(q is None for _, q in jobs) else w, src.shape[-1]),
                                     dtype=torch.bool, device=src.device)
        cols = _head_cols(sites, src.shape[-1], c.head, src.device) if c.kind == "head" else slice(None)
        if position is None:
            masks[key][j, :, cols] = True
        else:
            masks[key][j, position - prefix.cut, cols] = True
    patch = {key: (_repeat(clean_acts[key], g), m.repeat_interleave(p, dim=0)) for key, m in masks.items()}
    rows = PairBatch(_repeat(batch.clean, g), _repeat(batch.corrupt, g), _repeat(batch.mask, g),
                     _repeat(batch.pos, g), _repeat(batch.right, g), _repeat(batch.wrong, g))
    with _replay(sites.blocks, block_outs, start, g, p):
        return _run_patched(model, sites, rows, patch, prefix.cache(g, start)).view(g, p)


@dataclass
class PatchResult:
    components: list[Component]
    ld_clean: np.ndarray  # (P,)
    ld_corrupt: np.ndarray  # (P,)
    delta: np.ndarray  # (C, P): LD_patched − LD_corrupt (exhaustive) or its first-order estimate
    seconds: float = 0.0
    positions: list[list[int]] | None = None  # per-position mode: the padded positions per component row

    def per_pair(self) -> np.ndarray:
        """(C, P) effects e_c per pair (NaN where LD_clean == LD_corrupt)."""
        d = self.ld_clean - self.ld_corrupt
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d != 0, self.delta / d, np.nan)

    def effects(self) -> np.ndarray:
        """(C,) pooled effects: Σ_p sign(Δ_p)·delta_p / Σ_p |Δ_p|."""
        d = self.ld_clean - self.ld_corrupt
        denom = np.abs(d).sum()
        if denom == 0:
            return np.full(self.delta.shape[0], np.nan)
        return (self.delta * np.sign(d)[None]).sum(1) / denom


def effect(ld_patched: float, ld_clean: float, ld_corrupt: float) -> float:
    """e = (LD_patched − LD_corrupt) / (LD_clean − LD_corrupt) for one pair."""
    return (ld_patched - ld_corrupt) / (ld_clean - ld_corrupt)


# ------------------------------------------------------------------------------------------ runs


def _clean_and_corrupt(model, sites, batch: PairBatch, past=None, block_outs: list | None = None):
    """Clean activations at every site, LD clean and LD corrupt; `block_outs` (a list) receives every block's
    output in the corrupted run (for `_replay`)."""
    clean_acts: dict = {}
    with _hooks(sites, record=clean_acts):
        ld_clean = _ld(model, batch.clean, batch, past)
    handles = [] if block_outs is None else [
        b.register_forward_hook(lambda _m, _i, out: block_outs.append(out)) for b in sites.blocks]
    try:
        ld_corrupt = _ld(model, batch.corrupt, batch, past)
    finally:
        for h in handles:
            h.remove()
    return {k: _as3d(v.detach(), batch.clean.shape) for k, v in clean_acts.items()}, ld_clean, ld_corrupt


def _batches(batch: PairBatch, batch_size: int):
    for s in range(0, len(batch), batch_size):
        yield batch.rows(slice(s, s + batch_size))


@torch.no_grad()
def patch_together(model, family: Family, batch: PairBatch, comps: list[Component]) -> np.ndarray:
    """LD of the corrupted prompts with ALL of `comps` patched from the clean run at once: (P,)."""
    sites = _Sites(model, family, comps)
    clean_acts, _, _ = _clean_and_corrupt(model, sites, batch)
    if not comps:
        return _ld(model, batch.corrupt, batch).cpu().numpy()
    return _run_patched(model, sites, batch, _patch_spec(sites, clean_acts, comps)).cpu().numpy()


# Token positions one patched forward pass may hold: rows x (prefix + suffix) positions, the size that the KV
# cache and the activations of a pass grow with. ~64 MiB of float32 KV per pass for a 4-layer, 256-wide model
# (the built-in one), ~0.6 GiB for GPT-2 small. Measured on the built-in model (CPU, one thread), any budget from
# one component per pass to 64k positions costs the same within 10 %; larger passes only add memory.
MAX_TOKENS = 1 << 15


def _groups(jobs: list, per_pass: int) -> list[list]:
    """Consecutive jobs, at most `per_pass` per group, a group never spanning two layers (so that every pass
    replays all the blocks before its layer)."""
    out: list[list] = []
    for job in jobs:
        if out and len(out[-1]) < per_pass and out[-1][-1][0].layer == job[0].layer:
            out[-1].append(job)
        else:
            out.append([job])
    return out


@torch.no_grad()
def activation_patching(model, family: Family, batch: PairBatch, comps: list[Component] | None = None,
                        batch_size: int = 32, per_position: bool = False, max_tokens: int = MAX_TOKENS
                        ) -> PatchResult:
    """Exhaustive patching: one corrupted run per component (per component and position with
    per_position=True, over the positions from the first token where the pair differs to the end;
    earlier positions carry identical activations, so patching them changes nothing).

    Three savings, none of which changes a delta beyond float rounding:
    - every run starts from the KV cache of the positions before the first differing token (`_Prefix`),
      which are identical in the clean and corrupted prompts; on ICL prompts (demonstrations first) that is
      most of the prompt;
    - a run patching layer l replays the corrupted run's outputs of blocks 0..l-1 (`_replay`): the patch
      cannot change them;
    - the runs are batched: one forward pass holds the corrupted prompts of a pair batch repeated once per
      component of one layer, each copy with only its own component patched (rows never see each other), as
      many copies as keep rows x (prefix + suffix) positions within `max_tokens` (a memory bound, the same
      on every device; at least one component per pass, so `max_tokens=1` gives one pass per component)."""
    import time

    t0 = time.perf_counter()
    comps = comps or components(model, family)
    sites = _Sites(model, family, comps)
    lds_c, lds_x, deltas, rows_pos = [], [], [], None
    start = min(batch.first_diff)  # over ALL pairs: every batch must produce the same rows
    for b in _batches(batch, batch_size):
        prefix = _Prefix(model, b, min(start, b.clean.shape[1] - 1))  # from here on, only the tokens from start
        block_outs: list = []
        clean_acts, ld_clean, ld_corrupt = _clean_and_corrupt(model, sites, prefix.batch, prefix.cache(),
                                                              block_outs)
        lds_c.append(ld_clean)
        lds_x.append(ld_corrupt)
        if not per_position:
            jobs = [(c, None) for c in comps]
        else:
            jobs = [(c, p) for c in comps for p in range(start, b.clean.shape[1])]
            rows_pos = jobs
        per_pass = max(1, max_tokens // (len(b) * b.clean.shape[1]))
        order = sorted(range(len(jobs)), key=lambda i: jobs[i][0].layer)  # stable: same-layer jobs together
        out = torch.empty(len(jobs), len(b), dtype=ld_corrupt.dtype, device=ld_corrupt.device)
        for group in _groups([jobs[i] + (i,) for i in order], per_pass):
            idx = [i for *_, i in group]
            out[idx] = _run_jobs(model, sites, prefix, clean_acts, block_outs, [j[:2] for j in group]) - ld_corrupt
        deltas.append(out)
    return PatchResult(comps, torch.cat(lds_c).cpu().numpy(), torch.cat(lds_x).cpu().numpy(),
                       torch.cat(deltas, dim=1).cpu().numpy(), time.perf_counter() - t0,
                       positions=rows_pos)


def attribution_patching(model, family: Family, batch: PairBatch, comps: list[Component] | None = None,
                         batch_size: int = 32, per_position: bool = False) -> PatchResult:
    """First-order estimate of every component's patching effect from one forward + backward per batch.
    With per_position=True the rows follow `activation_patching(per_position=True)`'s order."""
    import time

    t0 = time.perf_counter()
    comps = comps or components(model, family)
    sites = _Sites(model, family, comps)
    emb = model.get_input_embeddings()
    lds_c, lds_x, deltas, rows_pos = [], [], [], None
    start = min(batch.first_diff)
    for b in _batches(batch, batch_size):
        with torch.no_grad():
            clean_acts: dict = {}
            with _hooks(sites, record=clean_acts):
                ld_clean = _ld(model, b.clean, b)
        acts: dict = {}
        with torch.enable_grad(), _hooks(sites, record=acts):
            # The graph starts at the input embeddings, so every site downstream gets its total derivative.
            x = emb(b.corrupt).detach().requires_grad_(True)
            logits = model(inputs_embeds=x, attention_mask=b.mask, position_ids=b.pos, use_cache=False,
                           **keep_last(model)).logits[:, -1].float()
            ld = logits.gather(1, b.right[:, None])[:, 0] - logits.gather(1, b.wrong[:, None])[:, 0]
            keys = sorted(acts)
            grads = dict(zip(keys, torch.autograd.grad(ld.sum(), [acts[k] for k in keys]), strict=True))
        lds_c.append(ld_clean)
        lds_x.append(ld.detach())
        d = []
        width = b.clean.shape[1]
        if per_position:
            rows_pos = []
        for c in comps:
            key = c.site
            shape = b.clean.shape
            diff = _as3d(clean_acts[key], shape) - _as3d(acts[key].detach(), shape)
            prod = diff * _as3d(grads[key], shape)  # (P, W, D)
            if c.kind == "head":
                dh = prod.shape[-1] // sites.n_heads
                prod = prod[..., c.head * dh:(c.head + 1) * dh]
            per_pos = prod.sum(-1)  # (P, W)
            if not per_position:
                d.append(per_pos.sum(-1))
            else:
                for p in range(start, width):
                    d.append(per_pos[:, p])
                    rows_pos.append((c, p))
        deltas.append(torch.stack(d).detach())
    return PatchResult(comps, torch.cat(lds_c).cpu().numpy(), torch.cat(lds_x).cpu().numpy(),
                       torch.cat(deltas, dim=1).cpu().numpy(), time.perf_counter() - t0,
                       positions=rows_pos)


# ------------------------------------------------------------------------------------------ circuits


def top_k(effects: np.ndarray, k: int) -> set[int]:
    """Indices of the k components with the largest |effect| (NaN counts as 0; ties by index)."""
    e = np.nan_to_num(np.abs(np.asarray(effects, float)), nan=0.0)
    order = np.argsort(-e, kind="stable")
    return {int(i) for i in order[:k]}


def circuit_shift(e_base: np.ndarray, e_x: np.ndarray, k: int) -> dict[str, float]:
    """1 − cos(e_M0, e_X) over all components and 1 − Jaccard(top-K_M0, top-K_X)."""
    a = np.nan_to_num(np.asarray(e_base, float))
    b = np.nan_to_num(np.asarray(e_x, float))
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")
    ta, tb = top_k(a, k), top_k(b, k)
    jac = len(ta & tb) / len(ta | tb) if ta | tb else float("nan")
    return {"cosine": 1.0 - cos, "jaccard": 1.0 - jac}


__all__ = [
    "Component",
    "PairBatch",
    "PatchResult",
    "activation_patching",
    "attribution_patching",
    "circuit_shift",
    "components",
    "effect",
    "make_pairs",
    "patch_together",
    "top_k",
]
