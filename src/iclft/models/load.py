"""load(name) -> Loaded: the model, its tokenizer and its family row.

"builtin" is the model shipped inside the package (see builtin/card.md). A hub id or a local path goes
through `from_pretrained` with safetensors only and `trust_remote_code` off unless asked for.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from iclft import UserError
from iclft.models.families import Family, family_for
from iclft.rundir import sha256_file

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).parent / "builtin"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    family: Family
    name: str
    info: dict = field(default_factory=dict)  # goes into the run manifest

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_len(self) -> int:
        """The longest prompt every layer attends over whole: the position limit, or a sliding attention window
        if shorter (Mistral, Gemma2): past it a token no longer sees the demonstrations the metrics attribute
        to it, and a cached prefix no longer holds every key."""
        cfg = self.model.config
        n = next((int(getattr(cfg, a)) for a in ("max_position_embeddings", "n_positions") if getattr(cfg, a, None)),
                 2048)
        window = getattr(cfg, "sliding_window", None)
        if window and getattr(cfg, "use_sliding_window", True):  # Qwen2 declares a window it does not use
            n = min(n, int(window))
        return n


def builtin_available() -> bool:
    return (BUILTIN_DIR / "config.json").is_file() and (BUILTIN_DIR / "model.safetensors").is_file()


def load(
    name: str = "builtin",
    *,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    pad_token: str | None = None,
    trust_remote_code: bool = False,
) -> Loaded:
    """Load a causal LM for analysis (eval mode, no grad on its own weights).

    pad_token: None keeps the tokenizer's; "eos" uses its EOS token; any other string is used as is.
    A tokenizer with no pad token and no `pad_token` is an input error: silently padding with EOS
    changes what some models attend to, so the user must say so.
    """
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but this machine has no MPS backend")
    if name == "builtin" and not builtin_available():
        loaded = _fallback_builtin(attn_implementation)
    else:
        path = str(BUILTIN_DIR) if name == "builtin" else name
        loaded = _from_pretrained(name, path, attn_implementation, trust_remote_code)
    tok = loaded.tokenizer
    if pad_token is not None:
        tok.pad_token = tok.eos_token if pad_token == "eos" else pad_token
    if tok.pad_token_id is None:
        raise UserError(
            f"the tokenizer of {name!r} has no pad token; pass --pad-token eos (or a token) to choose one"
        )
    tok.padding_side = "left"
    loaded.model.to(device=device, dtype=DTYPES[dtype]).eval()
    loaded.model.requires_grad_(False)
    loaded.info.update(
        model=name,
        family=loaded.family.name,
        dtype=dtype,
        device=device,
        attn_implementation=loaded.model.config._attn_implementation,
        n_layers=len(list(_blocks(loaded))),
        n_params=sum(p.numel() for p in loaded.model.parameters()),
    )
    return loaded


def _blocks(loaded: Loaded):
    from iclft.models.families import blocks_of

    return blocks_of(loaded.model, loaded.family)


def _from_pretrained(name: str, path: str, attn_implementation: str, trust_remote_code: bool) -> Loaded:
    local = Path(path).exists()
    if not local and (path.startswith((".", "/", "~")) or path.count("/") > 1 or not path.strip("/")):
        # A filesystem path that is not there (hub ids are "name" or "org/name", e.g. gpt2): no network needed.
        raise UserError(f"unknown model {name!r}: not 'builtin', not an existing local directory, not a hub id")
    if not local and not _hub_reachable():
        raise UserError(f"cannot load model {name!r}: not a local directory and the model hub is unreachable (offline)")
    try:
        # The config first: an unsupported family is refused before any weights are read.
        fam = family_for(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
        if fam.eager_only and attn_implementation != "eager":
            log.warning("%s: %s attention needs the eager implementation; using it", name, fam.name)
            attn_implementation = "eager"
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or garbage weights file
        where = "local path" if local else "hub id (is the network or HF cache available?)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {name!r} as a {where}: {first}") from None
    info = {"model_path": str(Path(path).resolve()) if local else path, "builtin_stand_in": False}
    info["model_sha256"] = weights_hash(Path(path)) if local else _hub_revision(model)
    return Loaded(model, tok, fam, name, info)


def weights_hash(path: Path) -> str | None:
    """SHA-256 over every weight file of a local checkpoint: one file, or a sharded one's index and all its
    shards (name and hash each), so that changed weights never resume a run made with others."""
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.safetensors.index.json"))
    if not files:
        return None
    if len(files) == 1:
        return _sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{_sha256(f)}\n".encode())
    return h.hexdigest()


def _hub_revision(model) -> str | None:
    """A hub model is identified by the commit its files came from (HF records it on the config)."""
    commit = getattr(model.config, "_commit_hash", None)
    return f"hub-commit:{commit}" if commit else None


def _hub_reachable() -> bool:
    # huggingface_hub retries unreachable hosts for ~40 s; one quick probe gives the user the answer at once.
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # offline mode reads the local cache, which may hold the model
    host = constants.ENDPOINT.split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


_sha256 = functools.lru_cache(maxsize=4)(sha256_file)  # weights are hashed once per process


def _fallback_builtin(attn_implementation: str) -> Loaded:
    """A small randomly initialised Llama with the built-in model's tokenizer, used only while the built-in
    model's weights are missing from the install.

    Reports say so in their header (info["builtin_stand_in"]), since its numbers mean nothing about ICL.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (BUILTIN_DIR / "tokenizer.json").is_file():
        raise UserError(f"the built-in model is missing from this install ({BUILTIN_DIR}); pass --model")
    log.warning("no pretrained built-in model shipped; using a randomly initialised stand-in")
    tok = AutoTokenizer.from_pretrained(str(BUILTIN_DIR))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # HF draws the init from torch's global RNG: seed it, then restore it
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.config._attn_implementation = attn_implementation
    return Loaded(model, tok, family_for(cfg), "builtin", {"builtin_stand_in": True})
