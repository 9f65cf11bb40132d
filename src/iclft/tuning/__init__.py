"""Tuning the model on demonstrations without ever changing the caller's model for good.

LoraSession: LoRA adapters via PEFT (IT = with the instruction, SL = without), re-initialised from a
seed per trial; leaving the session removes every adapter layer, restoring the original modules.
"""

from iclft.tuning.lora import LoraConfigSpec, LoraSession

__all__ = ["LoraConfigSpec", "LoraSession"]
