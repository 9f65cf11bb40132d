"""Batched activation capture at named hook sites (TransformerLens-style names, `blocks.{l}.{kind}`).

The sites and where they live are one registry, `iclft.capture.sites.SITES`: resid_post (for the last
block after the final norm, exactly as HF `hidden_states[l+1]`, METRICS.md), attn.out, attn.z (per head),
attn.scores, attn.q, mlp.out. Only the sites asked for are kept, at the last token (or at every
position), detached, on CPU.
"""

from iclft.capture.core import Capture, capture
from iclft.capture.sites import SITES, site_names

__all__ = ["SITES", "Capture", "capture", "site_names"]
