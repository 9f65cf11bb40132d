"""One attention-function recorder shared by every capture path.

`record_attention` routes the model's attention through a wrapper (registered with transformers'
AttentionInterface under the model's own eager/sdpa implementation) that keeps the attention queries
(after RoPE, as attention sees them) and, if asked, the keys of chosen layers and the queries before RoPE,
then calls the model's own attention function, so outputs are unchanged. The implementation is restored
on exit.

Queries before RoPE are computed where the model produces them, not by un-rotating the rotated query (whose
rounding noise breaks ties): the input of the query projection is kept and each recorded position's query is
recomputed from it alone, through the model's own projection module (and query norm, where the attention has
one), one token at a time. A matrix product's rounding depends on where a row sits in the batch (CPU kernels
treat the rows of a partial block differently), so the model's own projection output can differ by an ulp
between two positions holding the same token; computed one row at a time, the pre-RoPE query is a function of
the layer input alone, and equal inputs (a repeated token at layer 0, in one sequence or in two) give
bitwise-equal queries. It stays within rounding of the model's own value.
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
                function of the token alone, read at the query projection's output (after any query norm);
                equal to queries for models without RoPE (GPT-2, OPT);
    scaling[l]: the scale attention multiplies q·k by.
    """

    layer_of_attn: dict[int, int]
    layers: set[int]
    last_only: bool
    want_keys: bool
    pre_rope: bool = False
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    queries_pre: dict[int, torch.Tensor] = field(default_factory=dict)
    rope: dict[int, bool] = field(default_factory=dict)  # layer -> RoPE applied in the current pass
    q_in: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> input of the query projection
    q_norm_shape: dict[int, tuple] = field(default_factory=dict)  # layer -> input shape of the query norm
    q_src: dict[int, tuple] = field(default_factory=dict)  # layer -> `query_source` of its block
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    scaling: dict[int, float] = field(default_factory=dict)
    softcap: dict[int, float | None] = field(default_factory=dict)  # Gemma2: scores are cap·tanh(s / cap)

    def clear(self) -> None:
        self.queries.clear()
        self.queries_pre.clear()
        self.keys.clear()
        self.scaling.clear()
        self.softcap.clear()
        self.q_in.clear()
        self.q_norm_shape.clear()

    def scores(self, layer: int) -> torch.Tensor:
        """Pre-softmax, pre-mask q·k·scale (soft-capped where the model caps it) of the recorded query positions:
        (batch, heads, q_len, n_keys), float32; one product for the whole batch."""
        s = torch.matmul(self.queries[layer].float(), self.keys[layer].float().transpose(-1, -2)) * self.scaling[layer]
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
                x = rec.q_in.pop(layer, None)
                if rec.rope.get(layer):
                    rec.queries_pre[layer] = _queries_pre(rec, layer, x, query)
                else:  # no RoPE: the query attention sees is already position-free
                    rec.queries_pre[layer] = (query[:, :, -1:] if rec.last_only else query).detach()
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


# Query norms applied after the projection and before RoPE (Qwen3, Gemma3: per head; OLMo2: over all heads).
QUERY_NORMS = ("q_norm", "query_layernorm")


def query_source(block, family: Family) -> tuple[torch.nn.Module, torch.nn.Module | None, str]:
    """(projection, query norm or None, layout): the modules that produce block's attention query before RoPE.
    The projection is the family's `q` (layout "separate") or its fused `qkv` ("concat": [Q | K | V]; "per_head":
    per head [q_h | k_h | v_h]); the norm is the attention module's `q_norm` / `query_layernorm` if it has one."""
    attn = get_module(block, family.attn)
    norm = next((m for m in (getattr(attn, n, None) for n in QUERY_NORMS) if isinstance(m, torch.nn.Module)), None)
    if family.qkv_layout == "separate":
        return get_module(block, family.q), norm, "separate"
    return get_module(block, family.qkv), norm, family.qkv_layout


def _query_of_row(x_row: torch.Tensor, proj, norm, norm_shape, layout: str, h: int, d: int) -> torch.Tensor:
    """The pre-RoPE query (h, d) of one token from its projection input (D,), by the model's own modules (their
    `forward`: hooks registered on them do not run again)."""
    out = proj.forward(x_row.reshape(1, 1, -1).clone())  # a fresh (1, 1, D) row: the same computation wherever
    out = out[0] if isinstance(out, tuple) else out
    if layout == "concat":  # [Q | K | V] along the features
        out = out[..., : h * d]
    elif layout == "per_head":  # per head [q_h | k_h | v_h]
        out = out.reshape(1, 1, h, -1)[..., :d]
    if norm is not None:
        out = norm.forward(out.reshape(1, 1, *norm_shape[2:]))
    return out.reshape(h, d)


@torch.no_grad()
def _queries_pre(rec: AttentionRecord, layer: int, x: torch.Tensor | None, query: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE queries (batch, heads, len or 1, d_head) of the recorded positions, one token at a time from the
    query projection's input x (batch, len, D)."""
    b, h, n, d = query.shape
    if x is None or x.shape[:2] != (b, n):
        raise RuntimeError(f"layer {layer}: the query projection's input {None if x is None else tuple(x.shape)} "
                           f"does not match the attention query {tuple(query.shape)}; cannot recompute the pre-RoPE "
                           "queries")
    proj, norm, layout = rec.q_src[layer]
    norm_shape = rec.q_norm_shape.get(layer)
    if norm is not None and norm_shape is None:
        raise RuntimeError(f"layer {layer}: the query norm did not run before attention")
    positions = [n - 1] if rec.last_only else range(n)
    rows = [[_query_of_row(x[i, j], proj, norm, norm_shape, layout, h, d) for j in positions] for i in range(b)]
    return torch.stack([torch.stack(r, dim=1) for r in rows]).to(query.dtype)


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
    if pre_rope:
        for i in rec.layers:
            # RoPE families pass (cos, sin) to their attention module as `position_embeddings`
            def keep(_mod, _args, kwargs, i=i):
                rec.rope[i] = kwargs.get("position_embeddings") is not None

            # what the query projection reads (and the shape the query norm reads), to recompute the query from
            def proj_input(_mod, args, i=i):
                rec.q_in[i] = args[0].detach()

            def norm_input(_mod, args, i=i):
                rec.q_norm_shape[i] = tuple(args[0].shape)

            rec.q_src[i] = proj, norm, _ = query_source(blocks[i], family)
            hooks.append(get_module(blocks[i], family.attn).register_forward_pre_hook(keep, with_kwargs=True))
            hooks.append(proj.register_forward_pre_hook(proj_input))
            if norm is not None:
                hooks.append(norm.register_forward_pre_hook(norm_input))
    token = _ACTIVE.set(rec)
    cfg._attn_implementation = _register(impl)
    try:
        yield rec
    finally:
        cfg._attn_implementation = impl
        _ACTIVE.reset(token)
        for h in hooks:
            h.remove()


@torch.no_grad()
def attention_scaling(model, family: Family) -> list[float]:
    """Per layer, the scale the model's attention multiplies q·k by, as the recorder sees it passed to the
    attention function (head_dim^-0.5 for most families; Gemma2: query_pre_attn_scalar^-0.5; OPT: 1, its
    query is scaled inside the projection; GPT-2 with layer-wise scaling: divided by layer + 1). Read from one
    forward pass of a single token."""
    n_layers = len(blocks_of(model, family))
    device = next(model.parameters()).device
    with record_attention(model, family, range(n_layers), last_only=True) as rec:
        ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return [rec.scaling[layer] for layer in range(n_layers)]
