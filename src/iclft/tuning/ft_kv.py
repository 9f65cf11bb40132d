"""FT-KV (Dai et al. 2023): plain SGD on the attention key and value projections only.

Batch 1, one step per demonstration, one epoch, demonstrations in the ICL order, causal-LM loss over
every token of each templated demonstration (mean over its predicted tokens, i.e. every token after the
first). The model stays in eval mode (no dropout), as in the LoRA session.

Fused projections are handled by updating only their K and V slices:
  "concat"   (GPT-2 Conv1D `c_attn`, weight (d_in, 3d), outputs [Q | K | V]): columns d..3d and bias d..3d;
  "per_head" (GPT-NeoX `query_key_value`, weight (3d, d_in), outputs per head [q_h | k_h | v_h]): the
             k_h and v_h rows of every head and their bias entries.
The Q slice is left bit-for-bit unchanged (the update is applied through `torch.where` on a mask).

`FtKvSession` never changes the caller's model for good: it saves the K/V tensors on entry, restores
them before every `train` and on exit (exact copies, so the base model is bit-identical afterwards).

    with FtKvSession(model, family) as s:
        result = s.train(examples, lr)      # examples: token id lists, one per demonstration
        ... run `model`: it is the FT-KV model ...
    # here `model` has its original weights again
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from iclft.capture.attention import record_attention
from iclft.models.families import Family, blocks_of, get_module, n_heads


@dataclass
class FtKvResult:
    lr: float
    steps: int  # optimizer steps taken (= number of demonstrations)
    losses: list[float]  # loss of each step, before its update
    # layer -> (heads, n_tokens, d_head): attention queries of the recorded tokens of every demonstration,
    # concatenated in demonstration order, as seen in the FT-KV pass (weights before that step's update).
    demo_queries: dict[int, torch.Tensor] = field(default_factory=dict)


def kv_parameters(model, family: Family) -> list[tuple[str, torch.nn.Parameter, torch.Tensor | None]]:
    """(name, parameter, mask) of every tensor FT-KV updates; mask None = the whole tensor, else a bool
    tensor of the parameter's shape, True on the K and V entries."""
    out = []
    for i, block in enumerate(blocks_of(model, family)):
        if family.qkv_layout == "separate":
            for which, path in (("k", family.k), ("v", family.v)):
                mod = get_module(block, path)
                out.append((f"{i}.{which}.weight", mod.weight, None))
                if getattr(mod, "bias", None) is not None:
                    out.append((f"{i}.{which}.bias", mod.bias, None))
            continue
        mod = get_module(block, family.qkv)
        w, b = mod.weight, getattr(mod, "bias", None)
        if family.qkv_layout == "concat":
            d = w.shape[1] // 3  # Conv1D: (d_in, 3d)
            feat = torch.zeros(3 * d, dtype=torch.bool)
            feat[d:] = True
            wmask = feat[None, :].expand_as(w).clone()
        elif family.qkv_layout == "per_head":
            h = n_heads(model.config)
            hd = w.shape[0] // (3 * h)  # Linear: (3d, d_in)
            feat = torch.zeros(h, 3, hd, dtype=torch.bool)
            feat[:, 1:] = True
            feat = feat.reshape(-1)
            wmask = feat[:, None].expand_as(w).clone()
        else:
            raise ValueError(f"unknown qkv_layout {family.qkv_layout!r}")
        out.append((f"{i}.qkv.weight", w, wmask.to(w.device)))
        if b is not None:
            out.append((f"{i}.qkv.bias", b, feat.to(b.device)))
    return out


def lm_loss(model, ids: list[int]) -> torch.Tensor:
    """Mean next-token cross-entropy over every token of `ids` after the first (batch 1, no padding)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits = model(input_ids=x, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:])


class FtKvSession:
    def __init__(self, model, family: Family):
        self.model, self.family = model, family
        self.params = kv_parameters(model, family)
        self.saved: list[torch.Tensor] | None = None

    def __enter__(self):
        self.saved = [p.detach().clone() for _, p, _ in self.params]
        # Only K/V tensors may receive gradients while training; every flag comes back on exit.
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        self.restore()
        for _, p, _ in self.params:
            p.grad = None
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.saved = None

    @torch.no_grad()
    def restore(self) -> None:
        for (_, p, _), orig in zip(self.params, self.saved, strict=True):
            p.copy_(orig)

    def train(self, examples: list[list[int]], lr: float, record_from: int | list[int] | None = None,
              pre_rope: bool = False) -> FtKvResult:
        """One epoch of batch-1 SGD from the original weights, one step per example, in the given order.

        record_from: if set, keep the attention queries of every layer for tokens `ids[record_from:]` of
        each example during its pass (for the Kendall metric); e.g. 1 skips a BOS token. A list gives one
        start per example. pre_rope: keep the queries before the rotary position embedding (position-free).
        """
        if self.saved is None:
            raise RuntimeError("use FtKvSession as a context manager")
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        self.restore()
        model = self.model
        n_layers = len(blocks_of(model, self.family))
        result = FtKvResult(lr=float(lr), steps=0, losses=[])
        per_layer: dict[int, list[torch.Tensor]] = {layer: [] for layer in range(n_layers)}
        for _, p, _ in self.params:
            p.requires_grad_(True)
        try:
            starts = [record_from] * len(examples) if isinstance(record_from, int) else record_from
            if starts is not None and len(starts) != len(examples):
                raise ValueError("record_from needs one start per example")
            for n, ids in enumerate(examples):
                if len(ids) < 2:
                    raise ValueError("a training example needs at least two tokens")
                if record_from is not None:
                    with record_attention(model, self.family, range(n_layers), pre_rope=pre_rope) as rec:
                        loss = lm_loss(model, ids)
                    qs = rec.queries_pre if pre_rope else rec.queries
                    for layer in range(n_layers):
                        per_layer[layer].append(qs[layer][0, :, starts[n]:].float().cpu())
                else:
                    loss = lm_loss(model, ids)
                for _, p, _ in self.params:
                    p.grad = None
                loss.backward()
                with torch.no_grad():
                    for _, p, mask in self.params:
                        if p.grad is None:
                            continue
                        if mask is None:
                            p.add_(p.grad, alpha=-lr)
                        else:
                            p.copy_(torch.where(mask, p - lr * p.grad, p))
                result.steps += 1
                result.losses.append(float(loss.detach()))
        finally:
            for _, p, _ in self.params:
                p.requires_grad_(False)
                p.grad = None
        if record_from is not None:
            result.demo_queries = {layer: torch.cat(qs, dim=1) for layer, qs in per_layer.items() if qs}
        return result
