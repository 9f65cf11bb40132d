from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import torch

from iclft.capture import sites as S
from iclft.models.families import Family, blocks_of, n_heads
from iclft.prompts.batching import length_batches, pad_left


@dataclass
class Capture:
    """Captured activations for n prompts, in the order given.

    last=True:  acts[site] is a tensor (n, d) — (n, heads, d_head) for a per-head site (attn.z, attn.q),
                or for attn.scores a list of (heads, keys_i) tensors over the prompt's non-padding positions.
    last=False: acts[site] is a list of (len_i, d) tensors ((len_i, heads, d_head) per head; attn.scores:
                (len_i, heads, len_i)).
    logits:     (n, vocab) next-token logits at the last token, float32, if asked for.
    """

    acts: dict[str, object] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def stack(self, kind: str, n_layers: int) -> torch.Tensor:
        """(n, n_layers, d) for a last-token site kind, e.g. "resid_post"."""
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
) -> Capture:
    """Run `prompts` (token id lists) through `model` in length-sorted, left-padded batches."""
    if not prompts:
        raise ValueError("no prompts to capture")
    blocks = blocks_of(model, family)
    parsed = S.parse(sites, len(blocks))
    heads = n_heads(model.config)

    device = next(model.parameters()).device
    head_kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    batches = length_batches(prompts, batch_size)
    order = [i for idx in batches for i in idx]
    per_batch: dict[str, list] = {s: [] for s, _, _ in parsed}
    batch_logits = []
    recorded = {layer for _, layer, site in parsed if site.hook == "attention"}
    want_keys = any(site.kind == "attn.scores" for _, _, site in parsed)

    hooks = []
    current: dict[str, torch.Tensor] = {}
    current_shape: list[int] = []

    def keep(name, site):
        def fn(t):
            if t.dim() == 2:  # OPT runs its MLP on (batch*seq, d)
                t = t.view(*current_shape, -1)
            if site.heads:
                t = S.split_heads(t, heads)
            current[name] = (t[:, -1] if last else t).detach()

        return fn

    from iclft.capture.attention import record_attention

    pre_rope = any(site.kind == "attn.q_pre" for _, _, site in parsed)
    ctx = (record_attention(model, family, recorded, last_only=last, keys=want_keys, pre_rope=pre_rope) if recorded
           else contextlib.nullcontext())
    try:
        for name, layer, site in parsed:
            if site.hook != "attention":
                hooks.append(S.hook(model, family, layer, site, keep(name, site), blocks))
        with ctx as rec:
            for idx in batches:
                seqs = [prompts[i] for i in idx]
                ids, mask, pos = pad_left(seqs, pad_id, device)
                current.clear()
                current_shape[:] = ids.shape
                # the LM head only at the last position: logits are only ever read there
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **head_kw)
                if logits:
                    batch_logits.append(out.logits[:, -1].float().cpu())
                lens = [len(s) for s in seqs]
                width = ids.shape[1]
                for name, layer, site in parsed:
                    if site.kind == "attn.scores":
                        t = _scores(rec, layer)
                    elif site.kind in ("attn.q", "attn.q_pre"):
                        q = (rec.queries if site.kind == "attn.q" else rec.queries_pre)[layer]  # (b, h, len, d)
                        t = q[:, :, -1] if last else q.transpose(1, 2)
                    else:
                        t = current[name]
                    per_batch[name].append(_split(t, site.kind, lens, width, last))
    finally:
        for h in hooks:
            h.remove()

    inverse = [0] * len(order)
    for pos_, i in enumerate(order):
        inverse[i] = pos_
    result = Capture()
    for name, _, site in parsed:
        flat = [x for chunk in per_batch[name] for x in chunk]
        flat = [flat[inverse[i]] for i in range(len(prompts))]
        if last and site.kind != "attn.scores":
            result.acts[name] = torch.stack(flat)
        else:
            result.acts[name] = flat
    if logits:
        result.logits = torch.cat(batch_logits)[inverse]
    return result


def _scores(rec, layer: int) -> torch.Tensor:
    """q·k·scale (soft-capped like the model) from the recorded queries and keys: (batch, heads, q_len, keys),
    float32."""
    q, k = rec.queries[layer].float(), rec.keys[layer].float()
    s = torch.matmul(q, k.transpose(-1, -2)) * rec.scaling[layer]
    cap = rec.softcap.get(layer)
    return s if cap is None else torch.tanh(s / cap) * cap


def _split(t: torch.Tensor, kind: str, lens: list[int], width: int, last: bool) -> list[torch.Tensor]:
    """Per-prompt CPU tensors with the left padding removed."""
    out = []
    for i, n in enumerate(lens):
        if kind == "attn.scores":
            s = t[i][:, :, width - n:]  # (h, q, keys)
            s = s[:, -1] if last else s[:, width - n:].permute(1, 0, 2)
            out.append(s.float().cpu())
        elif last:
            out.append(t[i].float().cpu())
        else:
            out.append(t[i, width - n:].float().cpu())
    return out
