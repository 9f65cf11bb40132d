"""Tiny models and a word-level tokenizer built from configs, for tests. Nothing here is downloaded."""

from __future__ import annotations

import collections
import re

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
)

from iclft.models.families import FAMILIES

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def word_tokenizer(texts, max_vocab: int = 4000, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Lower-cased word-level tokenizer; "\\n", punctuation and single digits are tokens of their own."""
    split = Regex(r"\n|\d|[A-Za-z_']+|[^\sA-Za-z_'\d]")
    counts: collections.Counter = collections.Counter()
    for t in texts:
        counts.update(re.findall(r"\n|\d|[a-z_']+|[^\sa-z_'\d]", t.lower()))
    vocab = list(SPECIALS) + [str(d) for d in range(10)] + ["\n"]
    vocab += [w.lower() for w in extra if w.lower() not in vocab]
    for w, _ in counts.most_common():
        if len(vocab) >= max_vocab:
            break
        if w not in vocab:
            vocab.append(w)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[ \t\r]+"), behavior="removed"), pre_tokenizers.Split(split, behavior="isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


# Small but structurally faithful configs (GQA for Llama, fused QKV for GPT-2 / NeoX, learned positions
# for OPT) so that the family table and capture code are exercised on every layout.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    # Mistral: Llama's layout with a sliding attention window (longer than the tests' prompts)
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, sliding_window=256),
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024),
    # Gemma2: post-attention / post-MLP norms, soft-capped attention logits, alternating sliding-window layers
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                   sliding_window=512, query_pre_attn_scalar=16, attn_logit_softcapping=50.0),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=3, n_head=4, n_positions=1024),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=1024),
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=1024, word_embed_proj_dim=64),
}


def tiny_model(kind: str, vocab_size: int, seed: int = 0, attn_implementation: str = "sdpa"):
    cfg = dict(TINY_CONFIGS[kind])
    model_type = cfg.pop("model_type")
    if any(f.eager_only for f in FAMILIES.values() if model_type in f.model_types):
        attn_implementation = "eager"
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, pad_token_id=0, bos_token_id=2,
                                  eos_token_id=3, **cfg)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.eval()
