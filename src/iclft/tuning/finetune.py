"""Full and LoRA fine-tuning on N task examples, never touching the loaded model.

`finetune(model, family, examples, spec, seed, pad_id, evaluate)` trains a deep copy of `model` (full:
every weight; LoRA: PEFT adapters on the copy, merged into it afterwards, so the result is a plain model of
the same architecture that every hook and capture path understands) with AdamW and a constant-with-warmup
schedule, on minibatches drawn epoch by epoch in a seeded order, for `spec.steps_for(N)` steps (a fixed
budget, or with `epochs` at least that many passes over the N examples). Loss on the answer tokens (default)
or on all tokens. Every `eval_every` steps (default: 8 records per run; also at step 0 and the last step)
`evaluate(model)` is called and its dict is recorded together with the mean training loss since the last
record.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from iclft.capture.prefix import takes_logits_to_keep
from iclft.models.families import Family
from iclft.tuning.lora import LoraSpec, add_lora, init_lora
from iclft.tuning.loss import lm_batch, lm_loss, prefix_lm_batch, shared_prefix


class FinetuneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["full", "lora"] = Field("full", description="full fine-tuning or LoRA")
    steps: int = Field(24, ge=1, description="optimizer steps; with `epochs`, the minimum number of steps")
    epochs: float | None = Field(None, gt=0, description="train for at least this many passes over the N examples "
                                 "(None: exactly `steps` steps whatever N is)")
    batch_size: int = Field(8, ge=1, description="examples per step (all of them when N is smaller)")
    lr: float = Field(3e-4, gt=0, description="AdamW peak learning rate")
    warmup_steps: int = Field(4, ge=0, description="linear warmup, then constant")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float | None = Field(1.0, description="max gradient norm (None: no clipping)")
    loss_on: Literal["answer", "all"] = Field("answer", description="loss on the answer tokens or all tokens")
    eval_every: int | None = Field(None, ge=1, description="record loss and accuracy every this many steps "
                                   "(None: 8 records per run)")
    adapter: LoraSpec = Field(default_factory=LoraSpec, description="the LoRA adapter (method lora)")

    def steps_for(self, n: int) -> int:
        """Optimizer steps for N training examples."""
        if self.epochs is None:
            return self.steps
        return max(self.steps, math.ceil(self.epochs * n / min(self.batch_size, n)))

    def eval_every_for(self, n: int) -> int:
        return self.eval_every or max(1, self.steps_for(n) // 8)


@dataclass
class FinetuneResult:
    model: torch.nn.Module  # the tuned copy (eval mode, no grad)
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", **evaluate(model)}
    losses: list[float] = field(default_factory=list)  # per step, before that step's update
    lrs: list[float] = field(default_factory=list)  # per step


def make_optimizer(params, spec: FinetuneSpec):
    """AdamW + transformers' constant-with-warmup schedule."""
    from transformers import get_constant_schedule_with_warmup

    params = list(params)
    try:  # one fused kernel per step (torch >= 2.4 on CPU): ~3x faster than the per-tensor loop, same update
        # up to float rounding (1 ulp per step, tests/test_speed_equivalence.py)
        opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return opt, get_constant_schedule_with_warmup(opt, num_warmup_steps=spec.warmup_steps)


def finetune(
    model,
    family: Family,
    examples: list[tuple[list[int], list[int]]],
    spec: FinetuneSpec,
    seed: int,
    pad_id: int,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
) -> FinetuneResult:
    """Train a copy of `model` on `examples` ((ids, answer_mask) pairs); `model` is left bit-identical."""
    if not examples:
        raise ValueError("no training examples")
    work = copy.deepcopy(model)
    work.eval()  # no dropout: runs are reproducible; eval mode does not stop gradients
    work.requires_grad_(False)
    if spec.method == "full":
        net, params = work, list(work.parameters())
        for p in params:
            p.requires_grad_(True)
    else:
        net, params = add_lora(work, family, spec.adapter)
        init_lora(net, seed)
        for p in params:
            p.requires_grad_(True)
    opt, sched = make_optimizer(params, spec)
    keep = takes_logits_to_keep(work)  # the HF model under PEFT's wrapper, which passes the argument on
    device = params[0].device
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    bs = min(spec.batch_size, len(examples))
    result = FinetuneResult(model=work)

    def record(step: int, since: list[float]):
        row = {"step": step, "loss": float(sum(since) / len(since)) if since else float("nan"),
               "lr": float(sched.get_last_lr()[0])}
        if evaluate is not None:
            with torch.no_grad():
                row.update(evaluate(net))
        result.history.append(row)

    record(0, [])
    since: list[float] = []
    total, every = spec.steps_for(len(examples)), spec.eval_every_for(len(examples))
    for step in range(1, total + 1):
        if len(order) < bs:  # a fresh seeded permutation each epoch
            order += torch.randperm(len(examples), generator=g).tolist()
        idx, order = order[:bs], order[bs:]
        cut = shared_prefix(examples, idx, spec.loss_on)
        if cut:  # e.g. the instruction: computed once per step, not once per example
            prefix, ids, mask, pos, labels = prefix_lm_batch(examples, idx, cut, pad_id, device)
            loss = lm_loss(net, ids, mask, pos, labels, keep, prefix=prefix)
        else:
            ids, mask, pos, labels = lm_batch(examples, idx, pad_id, spec.loss_on, device)
            loss = lm_loss(net, ids, mask, pos, labels, keep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        result.lrs.append(float(sched.get_last_lr()[0]))
        opt.step()
        sched.step()
        result.losses.append(float(loss.item()))
        since.append(result.losses[-1])
        if step % every == 0 or step == total:
            record(step, since)
            since = []
    for p in params:
        p.requires_grad_(False)
    if spec.method == "lora":
        result.model = net.merge_and_unload()
    result.model.eval()
    result.model.requires_grad_(False)
    return result


__all__ = ["FinetuneResult", "FinetuneSpec", "finetune", "make_optimizer"]
