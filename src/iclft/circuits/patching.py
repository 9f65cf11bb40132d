"""Activation patching and attribution patching over attention heads and MLP blocks (METRICS.md,
"Implicit patterns").

A *pair* is a clean prompt and a corrupted (misleading) prompt of IDENTICAL token length, plus two answer
tokens: `right` and `wrong`. LD = logit[right] − logit[wrong] at the last position.

Components: the output of attention head (l, h) — the head's slice of the input of the attention output
projection (`family.o_proj`), so patching one head leaves the others untouched — and the output of MLP l
(`family.mlp`). Patching c runs the corrupted prompt with c's activation taken from the clean run at the
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
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from iclft.capture.core import pad_left
from iclft.models.families import Family, blocks_of, get_module, n_heads


@dataclass(frozen=True)
class Component:
    kind: str  # "head" | "mlp"
    layer: int
    head: int = -1  # -1 for an MLP

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"L{self.layer}MLP"


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
    """Where the activations live: o_proj inputs (heads) and MLP outputs, per layer."""

    def __init__(self, model, family: Family):
        blocks = blocks_of(model, family)
        self.o_proj = [get_module(b, family.o_proj) for b in blocks]
        self.mlp = [get_module(b, family.mlp) for b in blocks]
        self.n_layers = len(blocks)
        self.n_heads = n_heads(model.config)


def _as3d(t: torch.Tensor, shape) -> torch.Tensor:
    return t.view(*shape[:2], -1) if t.dim() == 2 else t  # OPT's fc2 runs on (batch*seq, d)


@contextlib.contextmanager
def _hooks(sites: _Sites, record: dict | None = None, patch: dict | None = None):
    """record: fills record[("o", l)] / record[("m", l)] with the activations (graph kept).
    patch: {key: (clean_act, mask)}: the clean activation replaces the running one where `mask` (broadcast
    to (P, W, D)) is set."""
    handles = []

    def swap(key, t):
        if patch and key in patch:
            src, mask = patch[key]
            if t.dim() == 2:  # OPT runs its MLP on (batch*seq, d)
                mask = mask.reshape(-1, mask.shape[-1])
            t = torch.where(mask, src.view_as(t), t)
        if record is not None:
            record[key] = t
        return t

    def o_hook(layer):
        def pre(_mod, args):
            return (swap(("o", layer), args[0]), *args[1:])

        return pre

    def m_hook(layer):
        def post(_mod, _inp, out):
            if isinstance(out, tuple):
                return (swap(("m", layer), out[0]), *out[1:])
            return swap(("m", layer), out)

        return post

    try:
        for layer in range(sites.n_layers):
            handles.append(sites.o_proj[layer].register_forward_pre_hook(o_hook(layer)))
            handles.append(sites.mlp[layer].register_forward_hook(m_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def _keep_kw(model) -> dict:
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _ld(model, ids, batch: PairBatch, **kw) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=batch.mask, position_ids=batch.pos, use_cache=False,
                   **_keep_kw(model), **kw).logits[:, -1].float()
    return logits.gather(1, batch.right[:, None])[:, 0] - logits.gather(1, batch.wrong[:, None])[:, 0]


def _head_cols(sites: _Sites, width: int, head: int, device) -> torch.Tensor:
    dh = width // sites.n_heads
    cols = torch.zeros(width, dtype=torch.bool, device=device)
    cols[head * dh:(head + 1) * dh] = True
    return cols


def _patch_spec(sites: _Sites, clean_acts: dict, comps: list[Component], positions=None) -> dict:
    """Build the patch dict for a set of components; positions: None (all) or a (P, W) bool mask."""
    spec: dict = {}
    for c in comps:
        key = ("o", c.layer) if c.kind == "head" else ("m", c.layer)
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


def _run_patched(model, sites, batch: PairBatch, patch: dict) -> torch.Tensor:
    with _hooks(sites, patch=patch):
        return _ld(model, batch.corrupt, batch)


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


def _clean_and_corrupt(model, sites, batch: PairBatch):
    clean_acts: dict = {}
    with _hooks(sites, record=clean_acts):
        ld_clean = _ld(model, batch.clean, batch)
    ld_corrupt = _ld(model, batch.corrupt, batch)
    return {k: v.detach() for k, v in clean_acts.items()}, ld_clean, ld_corrupt


def _batches(batch: PairBatch, batch_size: int):
    for s in range(0, len(batch), batch_size):
        yield batch.rows(slice(s, s + batch_size))


@torch.no_grad()
def patch_together(model, family: Family, batch: PairBatch, comps: list[Component]) -> np.ndarray:
    """LD of the corrupted prompts with ALL of `comps` patched from the clean run at once: (P,)."""
    sites = _Sites(model, family)
    clean_acts, _, _ = _clean_and_corrupt(model, sites, batch)
    if not comps:
        return _ld(model, batch.corrupt, batch).cpu().numpy()
    return _run_patched(model, sites, batch, _patch_spec(sites, clean_acts, comps)).cpu().numpy()


@torch.no_grad()
def activation_patching(model, family: Family, batch: PairBatch, comps: list[Component] | None = None,
                        batch_size: int = 32, per_position: bool = False) -> PatchResult:
    """Exhaustive patching: one corrupted forward pass per component (per component and position with
    per_position=True, over the positions from the first token where the pair differs to the end;
    earlier positions carry identical activations, so patching them changes nothing)."""
    import time

    t0 = time.perf_counter()
    comps = comps or components(model, family)
    sites = _Sites(model, family)
    lds_c, lds_x, deltas, rows_pos = [], [], [], None
    start = min(batch.first_diff)  # over ALL pairs: every batch must produce the same rows
    for b in _batches(batch, batch_size):
        clean_acts, ld_clean, ld_corrupt = _clean_and_corrupt(model, sites, b)
        lds_c.append(ld_clean)
        lds_x.append(ld_corrupt)
        d = []
        if not per_position:
            for c in comps:
                d.append(_run_patched(model, sites, b, _patch_spec(sites, clean_acts, [c])) - ld_corrupt)
        else:
            width = b.clean.shape[1]
            rows_pos = []
            for c in comps:
                for p in range(start, width):
                    pos = torch.zeros_like(b.mask, dtype=torch.bool)
                    pos[:, p] = True
                    d.append(_run_patched(model, sites, b, _patch_spec(sites, clean_acts, [c], pos)) - ld_corrupt)
                    rows_pos.append((c, p))
        deltas.append(torch.stack(d))
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
    sites = _Sites(model, family)
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
                           **_keep_kw(model)).logits[:, -1].float()
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
            key = ("o", c.layer) if c.kind == "head" else ("m", c.layer)
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
