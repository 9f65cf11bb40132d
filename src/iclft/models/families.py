"""One declarative row per architecture family: where things live, never guessed.

Paths are relative to the HF *ForCausalLM model (`blocks`, `final_norm`) or to one block (the rest).
`qkv_layout` says how Q, K and V are stored:
  "separate"  three Linear modules (`q`, `k`, `v`);
  "concat"    one fused module whose output features are [Q | K | V] (GPT-2 Conv1D `c_attn`);
  "per_head"  one fused Linear whose output features are, per head, [q_h | k_h | v_h] (GPT-NeoX).
"""

from __future__ import annotations

from dataclasses import dataclass

from iclft import UserError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF `config.model_type` values this row describes
    blocks: str
    final_norm: str
    attn: str
    o_proj: str
    mlp: str  # module whose output is the MLP's contribution to the residual stream
    qkv_layout: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused projection, for "concat" / "per_head"
    lora_targets: tuple[str, ...] = ()  # PEFT `target_modules` (module-name suffixes)
    kv_heads_attr: str | None = None  # config attribute holding the number of KV groups (GQA)
    conv1d: bool = False  # projections are GPT-2 Conv1D, weight (in, out) (PEFT's `fan_in_fan_out`)
    # Module whose output attention adds to the residual stream, where that is not `attn` itself (Gemma2
    # normalises attention's output first; its `mlp` row is likewise the post-feed-forward norm).
    attn_resid: str | None = None
    eager_only: bool = False  # attention runs only in the eager implementation (Gemma2's logit soft-capping)

    @property
    def attn_out(self) -> str:
        return self.attn_resid or self.attn


_LLAMA_LIKE = dict(
    blocks="model.layers",
    final_norm="model.norm",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    mlp="mlp",
    qkv_layout="separate",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    lora_targets=("q_proj", "v_proj"),
    kv_heads_attr="num_key_value_heads",
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(name="llama", model_types=("llama", "qwen2", "mistral"), **_LLAMA_LIKE),
        Family(name="gemma", model_types=("gemma",), **_LLAMA_LIKE),
        Family(name="gemma2", model_types=("gemma2",), **{**_LLAMA_LIKE, "mlp": "post_feedforward_layernorm"},
               attn_resid="post_attention_layernorm", eager_only=True),
        Family(
            name="gpt2",
            model_types=("gpt2",),
            blocks="transformer.h",
            final_norm="transformer.ln_f",
            attn="attn",
            o_proj="attn.c_proj",
            mlp="mlp",
            qkv_layout="concat",
            qkv="attn.c_attn",
            lora_targets=("c_attn",),
            conv1d=True,
        ),
        Family(
            name="gpt_neox",
            model_types=("gpt_neox",),
            blocks="gpt_neox.layers",
            final_norm="gpt_neox.final_layer_norm",
            attn="attention",
            o_proj="attention.dense",
            mlp="mlp",
            qkv_layout="per_head",
            qkv="attention.query_key_value",
            lora_targets=("query_key_value",),
        ),
        Family(
            name="opt",
            model_types=("opt",),
            blocks="model.decoder.layers",
            final_norm="model.decoder.final_layer_norm",
            attn="self_attn",
            o_proj="self_attn.out_proj",
            mlp="fc2",
            qkv_layout="separate",
            q="self_attn.q_proj",
            k="self_attn.k_proj",
            v="self_attn.v_proj",
            lora_targets=("q_proj", "v_proj"),
        ),
    ]
}


def family_for(config) -> Family:
    """The family row for an HF config; an unknown `model_type` is an error, never a guess."""
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise UserError(f"unsupported model family {model_type!r}; supported model_type values: {', '.join(known)}")


def get_module(root, path: str):
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def blocks_of(model, fam: Family) -> list:
    return list(get_module(model, fam.blocks))


def n_heads(config) -> int:
    for attr in ("num_attention_heads", "n_head"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    raise UserError(f"cannot read the number of attention heads from {type(config).__name__}")
