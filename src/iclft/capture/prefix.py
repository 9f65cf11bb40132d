"""Forward-pass plumbing shared by capture, decoding, tuning and patching: a shared prefix's KV cache and the
`logits_to_keep` check, each written once.

A prefix shared by many prompts (the demonstrations, the instruction) runs once (`prefix_cache`); each batch of
suffixes then runs on top of `cache_of` it, laid out [prefix | pad .. pad | suffix] (`pad_after_prefix`), so
each prompt sees exactly the positions it would alone. `capture(..., prefix=)` is built on these.
"""

from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import DynamicCache


def takes_logits_to_keep(model) -> bool:
    """Whether the model can restrict its LM head to some positions (HF `logits_to_keep`). A PEFT wrapper passes
    the argument on to the model it wraps, so that model's signature decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def keep_last(model) -> dict:
    """`logits_to_keep=1` where the model takes it: the LM head only at the last position."""
    return {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}


def prefix_cache(model, prefix: list[int]):
    """Per layer (keys, values) of `prefix` from one forward pass, or None for an empty prefix."""
    if not prefix:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **keep_last(model))
    cache = out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers]


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


__all__ = ["cache_of", "keep_last", "prefix_cache", "takes_logits_to_keep"]
