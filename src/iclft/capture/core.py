"""The one capture path: token-id prompts through a model in length-sorted, left-padded batches, the asked-for
sites kept (at the last token or every position), detached, on the CPU.

With `prefix=` the tokens every prompt starts with run once (batch 1, `use_cache=True`) and each batch of
suffixes runs on top of a copy-free view of that KV cache, padded [prefix | pad .. pad | suffix] with the
padding masked out and position ids continuing from the prefix: each prompt sees exactly the positions it would
alone, and the result is laid out as for the full prompts `prefix + suffix` (attn.scores over the prompt's
non-padding keys, prefix keys first). The dual-view study shows every query of a seed after the same
demonstrations: the demonstrations are the prefix.

What a site is and how its tensor is read is its row in `iclft.capture.sites.SITES`; nothing here knows a site
by name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from iclft.capture import sites as S
from iclft.capture.attention import record_attention
from iclft.capture.prefix import cache_of, keep_last, prefix_cache
from iclft.models.families import Family, blocks_of, n_heads
from iclft.prompts.batching import length_batches, pad_after_prefix


@dataclass
class Cache:
    """Captured activations for n prompts, in the order given: `cache[site]`, `cache.keys()`, `cache.stack(kind)`.

    Last token: cache[site] is a tensor (n, d) — (n, heads, d_head) for a per-head site (attn.z, attn.q),
                or for attn.scores a list of (heads, keys_i) tensors over the prompt's non-padding positions.
    All positions: cache[site] is a list of (len_i, d) tensors ((len_i, heads, d_head) per head; attn.scores:
                (len_i, heads, len_i)).
    logits:     (n, vocab) next-token logits at the last token, float32, if asked for.
    """

    acts: dict[str, object] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def __getitem__(self, site: str):
        return self.acts[site]

    def __contains__(self, site: str) -> bool:
        return site in self.acts

    def keys(self):
        return self.acts.keys()

    def stack(self, kind: str, n_layers: int | None = None) -> torch.Tensor:
        """(n, layers, ...) of a last-token site kind, e.g. "resid_post", over layers 0 .. n_layers - 1 (default:
        every layer captured for that kind, which must then be 0 .. L - 1)."""
        if n_layers is None:
            layers = sorted(int(name.split(".")[1]) for name in self.acts
                            if name.startswith("blocks.") and name.split(".", 2)[2] == kind)
            if not layers or layers != list(range(len(layers))):
                raise KeyError(f"stack({kind!r}) needs {kind} captured at layers 0 .. L - 1; have {layers}")
            n_layers = len(layers)
        return torch.stack([self.acts[f"blocks.{layer}.{kind}"] for layer in range(n_layers)], dim=1)


@torch.no_grad()
def capture(
    model,
    family: Family,
    prompts: list[list[int]],
    sites: list[str],
    *,
    pad_id: int,
    batch_size: int = 16,
    last: bool = True,
    logits: bool = False,
    prefix: list[int] | None = None,
) -> Cache:
    """Run `prefix + p` for p in `prompts` (token id lists) through `model` and keep `sites` (`blocks.{l}.{kind}`).

    prefix: tokens every prompt starts with, run once (last token only); `prompts` are then what follows it.
    """
    if not prompts:
        raise ValueError("no prompts to capture")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token after the prefix (the prompt's last token)")
    prefix = list(prefix or [])
    if prefix and not last:
        raise ValueError("a shared prefix is captured at the last token only")
    blocks = blocks_of(model, family)
    parsed = S.parse(sites, len(blocks))
    heads = n_heads(model.config)
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
            current[name] = (t[:, -1:] if last else t).detach()

        return fn

    kv = prefix_cache(model, prefix)  # before any hook or recorder: the prefix needs no recording
    recorded = {layer for _, layer, site in parsed if site.hook == "attention"}
    flags = {flag: True for _, _, site in parsed for flag in site.record}
    ctx = (record_attention(model, family, recorded, last_only=last, **flags) if recorded
           else contextlib.nullcontext())
    got: dict[str, list] = {name: [None] * len(prompts) for name, _, _ in parsed}
    all_logits: list = [None] * len(prompts)
    hooks = []
    try:
        for name, layer, site in parsed:
            if site.hook != "attention":
                hooks.append(S.hook(model, family, layer, site, keep(name, site), blocks))
        with ctx as rec:
            for idx in length_batches(prompts, batch_size):
                seqs = [prompts[i] for i in idx]
                ids, mask, pos = pad_after_prefix(seqs, n_prefix, pad_id, device)
                width = ids.shape[1]
                current.clear()
                shape[:] = ids.shape
                if rec is not None:
                    rec.clear()
                # the LM head only at the last position: logits are only ever read there
                kw = (dict(past_key_values=cache_of(model, kv, len(idx)), use_cache=True) if kv is not None
                      else dict(use_cache=False))
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw, **keep_last(model))
                if logits:
                    for j, row in zip(idx, out.logits[:, -1].float().cpu(), strict=True):
                        all_logits[j] = row
                lens = [len(s) for s in seqs]
                for name, layer, site in parsed:
                    # (batch, positions, ...): the kept positions of the padded suffixes
                    t = site.read(rec, layer) if site.hook == "attention" else current[name]
                    for j, x in zip(idx, _per_prompt(t.float().cpu(), lens, width, n_prefix, site.over_keys, last),
                                    strict=True):
                        got[name][j] = x
    finally:
        for h in hooks:
            h.remove()

    result = Cache()
    for name, _, site in parsed:
        result.acts[name] = torch.stack(got[name]) if last and not site.over_keys else got[name]
    if logits:
        result.logits = torch.stack(all_logits)
    return result


def _per_prompt(t: torch.Tensor, lens: list[int], width: int, n_prefix: int, over_keys: bool,
                last: bool) -> list[torch.Tensor]:
    """Per prompt, the left padding removed: from positions (all) and, for a site over key positions, from the
    keys (which are [prefix | pad .. pad | suffix])."""
    out = []
    for i, n in enumerate(lens):
        x = t[i, -1] if last else t[i, width - n:]
        if over_keys:
            x = torch.cat([x[..., :n_prefix], x[..., n_prefix + width - n:]], dim=-1) if n_prefix \
                else x[..., width - n:]
        out.append(x)
    return out


__all__ = ["Cache", "capture"]
