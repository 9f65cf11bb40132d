"""Batched activation capture at named hook sites (TransformerLens-style names, `blocks.{l}.{kind}`).

    import iclft.capture
    cache = iclft.capture("builtin", ["The movie was great."], sites=["resid_post"], positions="last")
    cache["blocks.0.resid_post"]        # (1, d)
    cache.stack("resid_post")           # (1, layers, d)

`iclft.capture(...)` is `iclft.capture.api.capture`: any supported model (a name, a path, a `Loaded` or a loaded
HF model), text or token ids. `iclft.capture.capture(model, family, prompts, sites, pad_id=...)` is the
token-level core it runs (and the studies run), with `prefix=` for prompts sharing their first tokens.

The sites and where they live are one registry, `iclft.capture.sites.SITES`: resid_post (for the last
block after the final norm, exactly as HF `hidden_states[l+1]`, METRICS.md), attn.out, attn.z (per head),
attn.scores, attn.q, attn.q_pre, mlp.out. Only the sites asked for are kept, at the last token (or at every
position), detached, on CPU.
"""

import sys
import types

from iclft.capture import api
from iclft.capture.core import Cache, capture
from iclft.capture.sites import SITES, site_names


class _CallableModule(types.ModuleType):
    """The package itself is the public function: `iclft.capture(model, prompts, ...)`."""

    def __call__(self, *args, **kwargs) -> Cache:
        return api.capture(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["SITES", "Cache", "api", "capture", "site_names"]
