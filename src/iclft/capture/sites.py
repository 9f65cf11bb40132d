"""The one registry of hook sites: `blocks.{l}.{kind}` names (TransformerLens-style) and where they live.

Each row of SITES says, declaratively, which module of block l carries the site (a path attribute of the
family's row in `iclft.models.families`, so the module is never guessed), whether the site is that
module's output or its (first positional) input, and whether the last dimension splits into heads; a site
kept by the attention recorder (`iclft.capture.attention`) carries its own extractor (`read`) and what the
recorder must keep for it (`record`). Capture, patching and head supervision all resolve sites here and
nowhere else: a new site is one new row.

Unlike TransformerLens, the last layer's `resid_post` is after the final norm: it is HF's last hidden
state, `hidden_states[L]` (METRICS.md: resid_post[l] = hidden_states[l+1] for every l).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iclft.capture.attention import AttentionRecord
from iclft.models.families import Family, blocks_of, get_module


@dataclass(frozen=True)
class Site:
    kind: str  # the name after `blocks.{l}.`
    path: str | None  # Family attribute holding the module path within a block; None: the block itself
    hook: str  # "output" | "input" (of the module) | "attention" (kept by capture.attention's recorder)
    heads: bool = False  # captured as (..., heads, d_head)
    last_layer: str | None = None  # Family attribute of the model-level module used instead at the last layer
    doc: str = ""
    # hook "attention" only: the site from the recorder after a forward pass, (batch, positions, ...) over the
    # positions the recorder kept (the last one, or all), and what the recorder must keep for it
    read: Callable[[AttentionRecord, int], torch.Tensor] | None = None
    record: tuple[str, ...] = ()  # keyword flags of `record_attention`: "keys", "pre_rope"
    over_keys: bool = False  # the last dimension runs over key positions (padding dropped per prompt)

    def __post_init__(self):
        if (self.hook == "attention") != (self.read is not None):
            raise ValueError(f"site row {self.kind!r}: a site kept by the attention recorder needs `read`, a "
                             "module hook site has none")


SITES: dict[str, Site] = {
    s.kind: s
    for s in [
        Site("resid_post", None, "output", last_layer="final_norm",
             doc="output of block l; for the last block, after the final norm (HF's last hidden state)"),
        Site("attn.out", "attn_out", "output",
             doc="what attention adds to the residual stream: its output after the output projection (Gemma2: "
                 "after the post-attention norm)"),
        Site("attn.z", "o_proj", "input", heads=True,
             doc="per-head input of the attention output projection: (heads, d_head); o_proj of it is attn.out "
                 "(Gemma2: before the post-attention norm)"),
        Site("mlp.out", "mlp", "output", doc="what the MLP adds to the residual stream (Gemma2: after its norm)"),
        Site("attn.scores", "attn", "attention",
             doc="pre-softmax, pre-mask q·k·scale (Gemma2: soft-capped) per query head (GQA: each head uses its "
                 "KV group), over all non-padding keys",
             read=lambda rec, layer: rec.scores(layer).transpose(1, 2), record=("keys",), over_keys=True),
        Site("attn.q", "attn", "attention", heads=True, doc="attention query after RoPE, as attention sees it",
             read=lambda rec, layer: rec.queries[layer].transpose(1, 2)),
        Site("attn.q_pre", "attn", "attention", heads=True,
             doc="attention query before RoPE: a function of the layer input alone (at layer 0, of the token), "
                 "computed where the model produces it, by its query projection (and query norm, where there is one), "
                 "one token at a time, so equal inputs give bitwise-equal queries (= attn.q without RoPE)",
             read=lambda rec, layer: rec.queries_pre[layer].transpose(1, 2), record=("pre_rope",)),
    ]
}

_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")


def site_names(n_layers: int, kinds=("resid_post",)) -> list[str]:
    return [f"blocks.{layer}.{kind}" for kind in kinds for layer in range(n_layers)]


def expand(names, n_layers: int) -> list[str]:
    """Site names, a bare kind (e.g. "resid_post") standing for that kind at every layer, in layer order."""
    return [n for name in names for n in (site_names(n_layers, (name,)) if name in SITES else [name])]


def parse(names: list[str], n_layers: int) -> list[tuple[str, int, Site]]:
    """(name, layer, row) per site name; an unknown name or a layer past the model's is an error."""
    out = []
    for name in names:
        m = _NAME.match(name)
        if not m or m.group(2) not in SITES:
            raise ValueError(f"unknown hook site {name!r} (expected e.g. 'blocks.0.resid_post'; kinds: "
                             f"{', '.join(SITES)})")
        layer = int(m.group(1))
        if layer >= n_layers:
            raise ValueError(f"site {name!r}: the model has {n_layers} blocks")
        out.append((name, layer, SITES[m.group(2)]))
    return out


def module(model, family: Family, layer: int, site: Site, blocks: list | None = None):
    """The module whose output (or input) is `site` at `layer`."""
    blocks = blocks if blocks is not None else blocks_of(model, family)
    if site.last_layer and layer == len(blocks) - 1:
        return get_module(model, getattr(family, site.last_layer))
    return blocks[layer] if site.path is None else get_module(blocks[layer], getattr(family, site.path))


def hook(model, family: Family, layer: int, site: Site, fn, blocks: list | None = None):
    """Register `fn(tensor) -> tensor | None` on the site: a returned tensor replaces the activation.
    Returns the hook handle (`.remove()` it)."""
    mod = module(model, family, layer, site, blocks)
    if site.hook == "output":
        def post(_mod, _inp, out):
            t = fn(out[0] if isinstance(out, tuple) else out)
            if t is None:
                return None
            return (t, *out[1:]) if isinstance(out, tuple) else t

        return mod.register_forward_hook(post)
    if site.hook == "input":
        def pre(_mod, args):
            t = fn(args[0])
            return None if t is None else (t, *args[1:])

        return mod.register_forward_pre_hook(pre)
    raise ValueError(f"site kind {site.kind!r} is kept by the attention recorder, not by a module hook")


def split_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., heads * d_head) -> (..., heads, d_head)."""
    return t.view(*t.shape[:-1], n_heads, -1)
