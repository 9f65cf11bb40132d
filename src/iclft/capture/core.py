from __future__ import annotations

import contextlib
import inspect
import re
from dataclasses import dataclass, field

import torch

from iclft.models.families import Family, blocks_of, get_module

_SITE = re.compile(r"^blocks\.(\d+)\.(resid_post|attn\.out|attn\.scores|mlp\.out)$")


def site_names(n_layers: int, kinds=("resid_post",)) -> list[str]:
    return [f"blocks.{layer}.{kind}" for kind in kinds for layer in range(n_layers)]


@dataclass
class Capture:
    """Captured activations for n prompts, in the order given.

    last=True:  acts[site] is a tensor (n, d) — or (n, heads, keys) for attn.scores, where keys are
                the prompt's non-padding positions (a list of (heads, len_i) tensors, lengths differ).
    last=False: acts[site] is a list of (len_i, d) tensors (attn.scores: (len_i, heads, len_i)).
    logits:     (n, vocab) next-token logits at the last token, float32, if asked for.
    """

    acts: dict[str, object] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def stack(self, kind: str, n_layers: int) -> torch.Tensor:
        """(n, n_layers, d) for a last-token site kind, e.g. "resid_post"."""
        return torch.stack([self.acts[f"blocks.{layer}.{kind}"] for layer in range(n_layers)], dim=1)


def site_module(model, family: Family, blocks: list, layer: int, kind: str):
    """The module whose forward output is the site `blocks.{layer}.{kind}` (not attn.scores)."""
    if kind == "resid_post":
        # HF's last hidden state is after the final norm (METRICS.md: resid_post[l] = hidden_states[l+1]).
        return get_module(model, family.final_norm) if layer == len(blocks) - 1 else blocks[layer]
    return get_module(blocks[layer], family.attn if kind == "attn.out" else family.mlp)


def pad_left(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left padding; position ids come from the mask so a padded prompt sees the positions it would alone."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


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
    parsed = []
    for site in sites:
        m = _SITE.match(site)
        if not m:
            raise ValueError(f"unknown hook site {site!r} (expected e.g. 'blocks.0.resid_post')")
        parsed.append((site, int(m.group(1)), m.group(2)))
    blocks = blocks_of(model, family)
    n_layers = len(blocks)
    for site, layer, _ in parsed:
        if layer >= n_layers:
            raise ValueError(f"site {site!r}: the model has {n_layers} blocks")

    device = next(model.parameters()).device
    head_kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
    per_batch: dict[str, list] = {s: [] for s, _, _ in parsed}
    batch_logits = []
    want_scores = {layer for _, layer, kind in parsed if kind == "attn.scores"}

    hooks = []
    current: dict[str, torch.Tensor] = {}
    current_shape: list[int] = []

    def keep(site):
        def hook(_mod, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            if t.dim() == 2:  # OPT runs its MLP on (batch*seq, d)
                t = t.view(*current_shape, -1)
            current[site] = (t[:, -1] if last else t).detach()

        return hook

    for site, layer, kind in parsed:
        if kind != "attn.scores":
            hooks.append(site_module(model, family, blocks, layer, kind).register_forward_hook(keep(site)))

    from iclft.capture.attention import record_attention

    ctx = (record_attention(model, family, want_scores, last_only=last, keys=True) if want_scores
           else contextlib.nullcontext())
    try:
        with ctx as rec:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
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
                for site, layer, kind in parsed:
                    t = _scores(rec, layer) if kind == "attn.scores" else current[site]
                    per_batch[site].append(_split(t, kind, lens, width, last))
    finally:
        for h in hooks:
            h.remove()

    inverse = [0] * len(order)
    for pos_, i in enumerate(order):
        inverse[i] = pos_
    result = Capture()
    for site, _, kind in parsed:
        flat = [x for chunk in per_batch[site] for x in chunk]
        flat = [flat[inverse[i]] for i in range(len(prompts))]
        if last and kind != "attn.scores":
            result.acts[site] = torch.stack(flat)
        else:
            result.acts[site] = flat
    if logits:
        result.logits = torch.cat(batch_logits)[inverse]
    return result


def _scores(rec, layer: int) -> torch.Tensor:
    """q·k·scale from the recorded attention queries and keys: (batch, heads, q_len, keys), float32."""
    q, k = rec.queries[layer].float(), rec.keys[layer].float()
    return torch.matmul(q, k.transpose(-1, -2)) * rec.scaling[layer]


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
