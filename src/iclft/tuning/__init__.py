"""Tuning the model on demonstrations without ever changing the caller's model for good.

LoraSpec: the one LoRA adapter spec (rank, alpha, targets; default targets and the Conv1D layout from the
family row), used by the sessions below and by `finetune` (method lora), all initialised by `init_lora`.

LoraSession: LoRA adapters via PEFT (IT = with the instruction, SL = without), re-initialised from a
seed per trial; leaving the session removes every adapter layer, restoring the original modules.
StackedLora: B such trials trained at once (one adapter per trial, stacked), the same numbers up to float
noise; and a batched capture with each prompt through its own adapter.
"""

from iclft.tuning.lora import LoraConfigSpec, LoraSession, LoraSpec
from iclft.tuning.stacked import StackedLora

__all__ = ["LoraConfigSpec", "LoraSession", "LoraSpec", "StackedLora"]
