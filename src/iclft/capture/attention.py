"""One attention-function recorder shared by every capture path.

`record_attention` routes the model's attention through a wrapper (registered with transformers'
AttentionInterface under the model's own eager/sdpa implementation) that keeps the attention queries
(after RoPE, as attention sees them) and, if asked, the keys of chosen layers and the queries before RoPE,
then calls the model's own attention function, so outputs are unchanged. The implementation is restored
on exit.
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
    queries_pre[l]: like queries, before the rotary position embedding (if pre_rope=True): the query as a
                function of the token alone; equal to queries for models without RoPE (GPT-2, OPT);
    scaling[l]: the scale attention multiplies q·k by.
    """

    layer_of_attn: dict[int, int]
    layers: set[int]
    last_only: bool
    want_keys: bool
    pre_rope: bool = False
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    queries_pre: dict[int, torch.Tensor] = field(default_factory=dict)
    rope: dict[int, tuple | None] = field(default_factory=dict)  # layer -> (cos, sin) of the current pass
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)
    softcap: dict[int, float | None] = field(default_factory=dict)  # Gemma2: scores are cap·tanh(s / cap)

    def clear(self) -> None:
        self.queries.clear()
        self.queries_pre.clear()
        self.keys.clear()
        self.scaling.clear()
        self.softcap.clear()

    def scores_last(self, layer: int) -> torch.Tensor:
        """Pre-softmax, pre-mask q·k·scale (soft-capped where the model caps it) of the last query position:
        (batch, heads, n_keys), float32."""
        q = self.queries[layer][:, :, -1]
        s = torch.einsum("bhd,bhkd->bhk", q.float(), self.keys[layer].float()) * self.scaling[layer]
        cap = self.softcap.get(layer)
        return s if cap is None else torch.tanh(s / cap) * cap


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    rec: AttentionRecord | None = _ACTIVE.get()
    impl = kw.pop("_iclft_impl", None) or "sdpa"
    if rec is not None:
        layer = rec.layer_of_attn.get(id(module))
        if layer in rec.layers:
            q = query[:, :, -1:] if rec.last_only else query
            rec.queries[layer] = q.detach()
            if rec.pre_rope:
                rope = rec.rope.get(layer)
                pre = query if rope is None else unrotate(query, *rope)
                rec.queries_pre[layer] = (pre[:, :, -1:] if rec.last_only else pre).detach()
            if rec.want_keys:
                n_rep = query.shape[1] // key.shape[1]
                rec.keys[layer] = (key.repeat_interleave(n_rep, dim=1) if n_rep > 1 else key).detach()
            rec.scaling[layer] = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
            rec.softcap[layer] = kw.get("softcap")
    if impl == "eager":
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[impl]
    return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kw)


def unrotate(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Invert HF's `apply_rotary_pos_emb` (q·cos + rotate_half(q)·sin) on the first cos.shape[-1] dims of each
    head (partial rotary, as GPT-NeoX, leaves the rest alone). q: (batch, heads, len, d_head); cos, sin:
    (batch, len, d_rot)."""
    cos, sin = cos.unsqueeze(1).to(q.dtype), sin.unsqueeze(1).to(q.dtype)
    r = cos.shape[-1]
    q_rot, q_pass = q[..., :r], q[..., r:]
    half = r // 2
    rot_half = torch.cat([-q_rot[..., half:], q_rot[..., :half]], dim=-1)
    return torch.cat([q_rot * cos - rot_half * sin, q_pass], dim=-1)  # a rotation by -angle undoes +angle


def _register(impl: str) -> str:
    name = f"iclft_record_{impl}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        def fn(module, *args, **kw):
            return _recording_attention(module, *args, _iclft_impl=impl, **kw)

        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    return name


@contextlib.contextmanager
def record_attention(model, family: Family, layers, *, last_only: bool = False, keys: bool = False,
                     pre_rope: bool = False):
    """Record attention queries (and keys, and pre-RoPE queries) of `layers` during the forward passes inside
    the block.

    Yields an `AttentionRecord` that each forward pass overwrites. The model's attention implementation
    is restored on exit.
    """
    cfg = model.config
    impl = cfg._attn_implementation or "eager"
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"recording attention needs eager or sdpa attention, not {impl!r}")
    blocks = blocks_of(model, family)
    rec = AttentionRecord({id(get_module(b, family.attn)): i for i, b in enumerate(blocks)}, set(layers),
                          last_only, keys, pre_rope)
    hooks = []
    if pre_rope:  # RoPE families pass (cos, sin) to their attention module as `position_embeddings`
        for i in rec.layers:
            def keep(_mod, _args, kwargs, i=i):
                rec.rope[i] = kwargs.get("position_embeddings")

            hooks.append(get_module(blocks[i], family.attn).register_forward_pre_hook(keep, with_kwargs=True))
    token = _ACTIVE.set(rec)
    cfg._attn_implementation = _register(impl)
    try:
        yield rec
    finally:
        cfg._attn_implementation = impl
        _ACTIVE.reset(token)
        for h in hooks:
            h.remove()
