"""One attention-function recorder shared by every capture path.

`record_attention` routes the model's attention through a wrapper (registered with transformers'
AttentionInterface under the model's own eager/sdpa implementation) that keeps the attention queries
(after RoPE, as attention sees them) and, if asked, the keys of chosen layers, then calls the model's
own attention function, so outputs are unchanged. The implementation is restored on exit.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from dataclasses import dataclass, field

import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from iclft.models.families import Family, blocks_of, get_module

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("iclft_attn_recorder", default=None)


@dataclass
class AttentionRecord:
    """What `record_attention` keeps, per layer, for the latest forward pass.

    queries[l]: (batch, heads, q_len, d_head), or (batch, heads, 1, d_head) with last_only;
    keys[l]:    (batch, heads, n_keys, d_head) with KV groups repeated to the query heads (if keys=True);
    scaling[l]: the scale attention multiplies q·k by.
    """

    layer_of_attn: dict[int, int]
    layers: set[int]
    last_only: bool
    want_keys: bool
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)

    def clear(self) -> None:
        self.queries.clear()
        self.keys.clear()
        self.scaling.clear()

    def scores_last(self, layer: int) -> torch.Tensor:
        """Pre-softmax, pre-mask q·k·scale of the last query position: (batch, heads, n_keys), float32."""
        q = self.queries[layer][:, :, -1]
        return torch.einsum("bhd,bhkd->bhk", q.float(), self.keys[layer].float()) * self.scaling[layer]


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    rec: AttentionRecord | None = _ACTIVE.get()
    impl = kw.pop("_iclft_impl", None) or "sdpa"
    if rec is not None:
        layer = rec.layer_of_attn.get(id(module))
        if layer in rec.layers:
            q = query[:, :, -1:] if rec.last_only else query
            rec.queries[layer] = q.detach()
            if rec.want_keys:
                n_rep = query.shape[1] // key.shape[1]
                rec.keys[layer] = (key.repeat_interleave(n_rep, dim=1) if n_rep > 1 else key).detach()
            rec.scaling[layer] = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    if impl == "eager":
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[impl]
    return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw)


def _register(impl: str) -> str:
    name = f"iclft_record_{impl}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        def fn(module, *args, **kw):
            return _recording_attention(module, *args, _iclft_impl=impl, **kw)

        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    return name


@contextlib.contextmanager
def record_attention(model, family: Family, layers, *, last_only: bool = False, keys: bool = False):
    """Record attention queries (and keys) of `layers` during the forward passes inside the block.

    Yields an `AttentionRecord` that each forward pass overwrites. The model's attention implementation
    is restored on exit.
    """
    cfg = model.config
    impl = cfg._attn_implementation or "eager"
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"recording attention needs eager or sdpa attention, not {impl!r}")
    blocks = blocks_of(model, family)
    rec = AttentionRecord({id(get_module(b, family.attn)): i for i, b in enumerate(blocks)}, set(layers),
                          last_only, keys)
    token = _ACTIVE.set(rec)
    cfg._attn_implementation = _register(impl)
    try:
        yield rec
    finally:
        cfg._attn_implementation = impl
        _ACTIVE.reset(token)
