"""LoRA: the one adapter spec (`LoraSpec`), PEFT wrapping and the one initialisation, shared by the in-context
tuning of the convergence study (`LoraSession`, `StackedLora`) and by fine-tuning (`finetune`, method lora)."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from iclft.capture.prefix import takes_logits_to_keep
from iclft.models.families import Family
from iclft.tuning.loss import lm_batch, lm_loss


class LoraSpec(BaseModel):
    """The adapter: rank, scale and the modules it adapts."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    targets: list[str] | None = Field(None, description="module-name suffixes; default: the family's LoRA targets")


class LoraConfigSpec(BaseModel):
    """LoRA trained full-batch on a prompt's demonstrations (the convergence study's IT and SL)."""

    model_config = ConfigDict(extra="forbid")

    adapter: LoraSpec = Field(default_factory=LoraSpec, description="the adapter")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    steps: int = Field(30, ge=1, description="full-batch optimisation steps over the demonstrations")
    loss_on: Literal["answer", "all"] = Field("answer", description="loss on the label tokens or on all tokens")


def target_modules(model, targets) -> list[tuple[str, torch.nn.Module]]:
    """The modules PEFT adapts for `target_modules=targets` (name equal to, or ending in ".<target>"), in
    model order: the order of PEFT's LoRA parameters, hence of the init draws in `init_lora`."""
    return [(n, m) for n, m in model.named_modules()
            if any(n == t or n.endswith("." + t) for t in targets) and hasattr(m, "weight")]


def kaiming_a(shape, g: torch.Generator) -> torch.Tensor:
    """PEFT's init of a LoRA A matrix (kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))) from `g`."""
    bound = 1.0 / math.sqrt(shape[-1])
    return torch.rand(shape, generator=g, dtype=torch.float32).mul_(2 * bound).sub_(bound)


def init_lora(peft, seed: int) -> None:
    """Re-initialise every adapter of a PEFT model from a local generator: A as PEFT draws it, B zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_A" in name:
                p.copy_(kaiming_a(p.shape, g))
            elif "lora_B" in name:
                p.zero_()


def add_lora(model, family: Family, spec: LoraSpec):
    """(PEFT model wrapping `model`, its LoRA parameters); PEFT's own init, to be replaced by `init_lora`."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0, bias="none",
                     target_modules=list(spec.targets or family.lora_targets), fan_in_fan_out=family.conv1d)
    with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in v5; nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        peft = get_peft_model(model, cfg)
    params = [p for n, p in peft.named_parameters() if "lora_" in n]
    if not params:
        raise ValueError("LoRA found no target modules to adapt")
    return peft, params


class LoraSession:
    """Inject LoRA once, re-initialise + train per trial, remove on exit.

    with LoraSession(model, family, spec) as s:
        s.train(examples, seed)   # examples: list of (ids, answer_mask)
        ... run `model` as usual: the adapter is active ...
    # here `model` has its original modules and weights again
    """

    def __init__(self, model, family: Family, spec: LoraConfigSpec):
        self.model, self.family, self.spec = model, family, spec
        self.peft = None

    def __enter__(self):
        self.peft, self.params = add_lora(self.model, self.family, self.spec.adapter)
        self.peft.eval()
        return self

    def __exit__(self, *exc):
        self.peft.unload()  # drop adapter layers without merging: the base weights were never touched
        self.model.requires_grad_(False)
        self.peft = None

    def reset(self, seed: int) -> None:
        """The adapters' init from `seed` (`init_lora`), so trials are independent."""
        init_lora(self.peft, seed)

    def train(self, examples: list[tuple[list[int], list[int]]], seed: int, pad_id: int) -> list[float]:
        """Full-batch AdamW on the demonstrations; returns the loss per step."""
        self.reset(seed)
        ids, mask, pos, labels = lm_batch(examples, range(len(examples)), pad_id, self.spec.loss_on,
                                          self.params[0].device)
        for p in self.params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(self.params, lr=self.spec.lr, weight_decay=0.0)
        keep = takes_logits_to_keep(self.model)  # the LM head only where a label is predicted: same loss
        losses = []
        # The model stays in eval mode: base-model dropout (GPT-2 has it) would make trials irreproducible.
        try:
            for _ in range(self.spec.steps):
                loss = lm_loss(self.model, ids, mask, pos, labels, keep)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
        finally:
            for p in self.params:
                p.requires_grad_(False)
        return losses
