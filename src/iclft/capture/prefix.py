"""Capture with a shared prefix: run the common part of many prompts once and reuse its KV cache.

In the dual-view study every query of a seed is shown after the same demonstrations, so the prompts
differ only in their suffix (the query). `capture_prefixed(model, family, prefix, suffixes, sites)`
runs `prefix` once (batch 1, `use_cache=True`), then runs the suffixes in length-sorted batches on top
of a copy of its cache. Inside a batch the suffixes are left-padded *between* the prefix and the
suffix: [prefix | pad pad | suffix], with the padding masked out and position ids continuing from the
prefix, so the last column is every prompt's last token and each prompt sees exactly the positions it
would alone. The result is a `Capture` laid out as `capture(..., last=True)` would lay it out for the
full prompts `prefix + suffix` (attn.scores over the prompt's non-padding keys, prefix keys first).

`record_attention` is the attention-function recorder used here and by FT-KV tuning: it keeps the
attention queries (after RoPE, as attention sees them) and keys of chosen layers.
Sites are those of `iclft.capture.sites` (e.g. `blocks.{l}.attn.q`, the last token's query, (heads, d_head)).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers.cache_utils import DynamicCache

from iclft.capture import sites as S
from iclft.capture.attention import AttentionRecord, record_attention  # noqa: F401 - re-exported
from iclft.capture.core import Capture
from iclft.models.families import Family, blocks_of, n_heads
from iclft.prompts.batching import length_batches, pad_after_prefix


def prefix_cache(model, prefix: list[int]):
    """Per layer (keys, values) of `prefix` from one forward pass, or None for an empty prefix."""
    if not prefix:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **keep_last(model))
    cache = out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


def keep_last(model) -> dict:
    """`logits_to_keep=1` where the model takes it: the LM head only at the last position. A PEFT wrapper
    passes the argument on to the model it wraps, so that model's signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}


def cache_of(model, kv, batch: int | None = None) -> DynamicCache:
    """A DynamicCache over per-layer (keys, values) that does not copy them; with `batch`, batch-1 tensors
    are expanded to `batch` rows as stride-0 views. The forward pass appends to the cache by concatenation
    (a new tensor), so `kv` itself is never changed; that concatenation is then the only copy of the
    prefix per forward pass (building the cache from the tensors directly would copy them once more)."""
    grow = (lambda t: t.expand(batch, -1, -1, -1)) if batch is not None else (lambda t: t)
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in kv], config=model.config)
    layers = getattr(cache, "layers", None)
    if layers is not None and len(layers) == len(kv) and all(
            isinstance(getattr(layer, "keys", None), torch.Tensor) and isinstance(getattr(layer, "values", None),
                                                                                  torch.Tensor)
            and getattr(layer, "is_initialized", True) for layer in layers):
        for layer, (k, v) in zip(layers, kv, strict=True):
            layer.keys, layer.values = grow(k), grow(v)
            if hasattr(layer, "cumulative_length"):  # sliding-window layers size their masks from it
                layer.cumulative_length = k.shape[-2]
        return cache
    return DynamicCache(ddp_cache_data=[(grow(k), grow(v)) for k, v in kv], config=model.config)


def _expand_cache(model, kv, batch: int) -> DynamicCache:
    return cache_of(model, kv, batch)


@torch.no_grad()
def capture_prefixed(
    model,
    family: Family,
    prefix: list[int],
    suffixes: list[list[int]],
    sites: list[str],
    *,
    pad_id: int,
    batch_size: int = 16,
    logits: bool = False,
) -> Capture:
    """Last-token capture of the prompts `prefix + s` for s in `suffixes`, computing the prefix once.

    Same sites and result layout as `capture(last=True)`.
    """
    if not suffixes:
        raise ValueError("no prompts to capture")
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("every suffix needs at least one token (the prompt's last token is in it)")
    blocks = blocks_of(model, family)
    parsed = S.parse(sites, len(blocks))
    heads = n_heads(model.config)
    rec_layers = {layer for _, layer, site in parsed if site.hook == "attention"}
    want_keys = any(site.kind == "attn.scores" for _, _, site in parsed)
    device = next(model.parameters()).device
    n_prefix = len(prefix)

    current: dict[str, torch.Tensor] = {}
    shape: list[int] = []

    def keep(name, site):
        def fn(t):
            if t.dim() == 2:  # OPT runs its MLP on (batch*seq, d)
                t = t.view(*shape, -1)
            if site.heads:
                t = S.split_heads(t, heads)
            current[name] = t[:, -1].detach()

        return fn

    kv = prefix_cache(model, prefix)  # before any hook or recorder: the prefix needs no recording
    hooks = [S.hook(model, family, layer, site, keep(name, site), blocks)
             for name, layer, site in parsed if site.hook != "attention"]

    got: dict[str, list] = {s: [None] * len(suffixes) for s, _, _ in parsed}
    all_logits: list = [None] * len(suffixes)
    pre_rope = any(site.kind == "attn.q_pre" for _, _, site in parsed)
    ctx = (record_attention(model, family, rec_layers, last_only=True, keys=want_keys, pre_rope=pre_rope)
           if rec_layers
           else contextlib.nullcontext())
    try:
        with ctx as rec:
            for idx in length_batches(suffixes, batch_size):
                seqs = [suffixes[i] for i in idx]
                ids, mask, pos = pad_after_prefix(seqs, n_prefix, pad_id)
                b, width = ids.shape
                current.clear()
                shape[:] = ids.shape
                if rec is not None:
                    rec.clear()
                kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                              **keep_last(model))
                if kv is not None:
                    out = model(**kwargs, past_key_values=_expand_cache(model, kv, b), use_cache=True)
                else:
                    out = model(**kwargs, use_cache=False)
                # one q·k product per layer for the whole batch (not one per prompt), moved to the CPU once
                scores = {layer: rec.scores_last(layer).cpu() for _, layer, site in parsed
                          if site.kind == "attn.scores"}
                last_logits = out.logits[:, -1].float().cpu() if logits else None
                for j, i in enumerate(idx):
                    n = len(seqs[j])
                    if logits:
                        all_logits[i] = last_logits[j]
                    for name, layer, site in parsed:
                        if site.kind == "attn.scores":
                            s = scores[layer][j]  # (heads, n_prefix + width)
                            got[name][i] = torch.cat([s[:, :n_prefix], s[:, n_prefix + width - n:]], dim=-1)
                        elif site.kind in ("attn.q", "attn.q_pre"):
                            qs = rec.queries if site.kind == "attn.q" else rec.queries_pre
                            got[name][i] = qs[layer][j, :, -1].float().cpu()
                        else:
                            got[name][i] = current[name][j].float().cpu()
    finally:
        for h in hooks:
            h.remove()

    result = Capture()
    for name, _, site in parsed:
        result.acts[name] = got[name] if site.kind == "attn.scores" else torch.stack(got[name])
    if logits:
        result.logits = torch.stack(all_logits)
    return result
