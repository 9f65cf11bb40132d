"""Batched activation capture at named hook sites (TransformerLens-style names).

Sites, per layer l:
  blocks.{l}.resid_post   output of block l; for the last block, after the final norm, exactly as HF
                          `hidden_states[l+1]` (METRICS.md)
  blocks.{l}.attn.out     attention output after the output projection, before the residual add
  blocks.{l}.attn.scores  pre-softmax, pre-mask scores q·k·scale of the captured query position, per
                          query head (GQA: each head uses its KV group), over all non-padding keys
  blocks.{l}.mlp.out      MLP output before the residual add
Only the sites asked for are kept, at the last token (or at every position), detached, on CPU.
"""

from iclft.capture.core import Capture, capture, site_names

__all__ = ["Capture", "capture", "site_names"]
