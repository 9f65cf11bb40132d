from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field

from iclft.models.families import Family


class LoraConfigSpec(BaseModel):
    r: int = Field(8, description="LoRA rank")
    alpha: int = Field(16, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, description="LoRA dropout (0 keeps training deterministic)")
    targets: list[str] | None = Field(None, description="module-name suffixes; default: the family's q/v")
    lr: float = Field(1e-3, description="AdamW learning rate")
    steps: int = Field(30, description="full-batch optimisation steps over the demonstrations")
    loss_on: str = Field("answer", description="'answer' (label tokens only) or 'all' tokens")


def weights_transposed(family: Family) -> bool:
    """Whether the family's LoRA targets store weights as (in, out): GPT-2's Conv1D does (PEFT's fan_in_fan_out)."""
    return family.name == "gpt2"


def target_modules(model, targets) -> list[tuple[str, torch.nn.Module]]:
    """The modules PEFT adapts for `target_modules=targets` (name equal to, or ending in ".<target>"), in
    model order: the order of PEFT's LoRA parameters, hence of the init draws in `LoraSession.reset`."""
    return [(n, m) for n, m in model.named_modules()
            if any(n == t or n.endswith("." + t) for t in targets) and hasattr(m, "weight")]


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
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(
            r=self.spec.r,
            lora_alpha=self.spec.alpha,
            lora_dropout=self.spec.dropout,
            target_modules=list(self.spec.targets or self.family.lora_targets),
            bias="none",
            fan_in_fan_out=weights_transposed(self.family),
        )
        self.peft = get_peft_model(self.model, cfg)
        self.peft.eval()
        self.params = [p for n, p in self.peft.named_parameters() if "lora_" in n]
        if not self.params:
            raise ValueError("LoRA found no target modules to adapt")
        return self

    def __exit__(self, *exc):
        self.peft.unload()  # drop adapter layers without merging: the base weights were never touched
        self.model.requires_grad_(False)
        self.peft = None

    def reset(self, seed: int) -> None:
        """PEFT's init (Kaiming-uniform A, zero B) drawn from a local generator, so trials are independent."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.peft.named_parameters():
                if "lora_A" in name:
                    bound = 1.0 / math.sqrt(p.shape[1])  # kaiming_uniform_(a=sqrt(5)) bound
                    p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float32).mul_(2 * bound).sub_(bound))
                elif "lora_B" in name:
                    p.zero_()

    def train(self, examples: list[tuple[list[int], list[int]]], seed: int, pad_id: int) -> list[float]:
        """Full-batch AdamW on the demonstrations; returns the loss per step."""
        self.reset(seed)
        from iclft.tuning.finetune import lm_batch, lm_loss, takes_logits_to_keep

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
