"""`iclft.capture(model, prompts, sites=[...], positions="last") -> Cache`: the capture core on any supported model.

A fast, low-memory alternative to TransformerLens' `run_with_cache` (and to HF's `output_hidden_states`): the
model's own forward pass in length-sorted, left-padded batches, with hooks only on the asked-for sites, the LM
head only at the last position, and only the kept positions copied to the CPU, so nothing else is held
(benchmarks/bench_capture.py measures time and peak memory against a plain HF forward).
"""

from __future__ import annotations

import os

import torch

from iclft import UserError, quietly
from iclft.capture import sites as S
from iclft.capture.core import Cache
from iclft.capture.core import capture as capture_ids
from iclft.models.families import blocks_of, family_for
from iclft.models.load import Loaded, load

POSITIONS = ("last", "all")


def capture(model, prompts, sites=("resid_post",), *, positions: str = "last", prefix=None, tokenizer=None,
            batch_size: int = 16, logits: bool = False) -> Cache:
    """Activations of `prompts` at `sites`: `cache[site]` a tensor, `cache.stack("resid_post")` (n, layers, d).

    model:     a model name or local path (loaded by `iclft.models.load`; "builtin" works offline), a `Loaded`,
               or a loaded HF causal LM of a supported family (`tokenizer=` its tokenizer, needed for text).
    prompts:   strings (tokenised as `tokenizer(text)` tokenises them, special tokens included) or token id lists;
               one string is one prompt.
    sites:     names of the registry (`iclft.capture.sites.SITES`), `blocks.{l}.{kind}` (e.g. "blocks.3.attn.out"),
               or a bare kind (e.g. "resid_post") for that kind at every layer. resid_post[l] is HF's
               hidden_states[l + 1], the last one after the final norm.
    positions: "last" (the last token: tensors (n, ...)) or "all" (every position: one (len_i, ...) tensor each).
    prefix:    text or token ids every prompt starts with, run once and reused from its KV cache (last token
               only); the prompts are then what follows it, tokenised without special tokens.
    logits:    also keep the next-token logits at the last token, `cache.logits` (n, vocab).

    Bad input (an unknown site or model, text without a tokenizer) raises `iclft.UserError`.
    """
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, not {positions!r}")
    with quietly():  # no unlabelled "Loading weights" bars or notices about transformers' own internals
        return _capture(model, prompts, sites, positions, prefix, tokenizer, batch_size, logits)


def _capture(model, prompts, sites, positions, prefix, tokenizer, batch_size, logits) -> Cache:
    loaded = _resolve(model, tokenizer)
    net, tok = loaded.model, loaded.tokenizer
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = [_ids(p, tok, special=prefix is None) for p in prompts]
    head = _ids(prefix, tok, special=True) if prefix is not None else None
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:  # padding is masked out: any token id will do
        pad = getattr(net.config, "pad_token_id", None) or 0
    n_layers = len(blocks_of(net, loaded.family))
    names = S.expand([sites] if isinstance(sites, str) else list(sites), n_layers)
    try:
        S.parse(names, n_layers)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if not ids or not all(ids):
        raise UserError("capture needs at least one prompt, each with at least one token")
    return capture_ids(net, loaded.family, ids, names, pad_id=pad, batch_size=batch_size,
                       last=positions == "last", logits=logits, prefix=head)


def _resolve(model, tokenizer) -> Loaded:
    if isinstance(model, Loaded):
        return model
    if isinstance(model, str | os.PathLike):
        return load(os.fspath(model))
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return Loaded(model, tokenizer, family_for(model.config), type(model).__name__)
    raise UserError(f"model must be a name, a path, an iclft Loaded or an HF causal LM, not {type(model).__name__}")


def _ids(prompt, tok, special: bool) -> list[int]:
    if isinstance(prompt, str):
        if tok is None:
            raise UserError("text prompts need the model's tokenizer: pass tokenizer=")
        return list(tok(prompt, add_special_tokens=special)["input_ids"])
    return [int(t) for t in prompt]


__all__ = ["POSITIONS", "capture"]
