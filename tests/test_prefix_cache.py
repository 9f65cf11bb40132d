import random

import pytest
import torch

from iclft.capture import capture, site_names
from iclft.capture.attention import record_attention
from iclft.models.families import blocks_of, family_for
from iclft.models.toy import TINY_CONFIGS
from iclft.prompts import PromptBuilder
from iclft.tasks.base import Example, Task
from tests.conftest import WORDS

SITES = ("resid_post", "attn.out", "attn.scores", "mlp.out")


def _prefix_and_suffixes(vocab, seed=0, n=7, p_len=40):
    rng = random.Random(seed)
    prefix = [rng.randrange(4, vocab) for _ in range(p_len)]
    return prefix, [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 12))] for _ in range(n)]


@pytest.mark.parametrize("kind", list(TINY_CONFIGS))
def test_prefix_reuse_equals_full_recomputation(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    n_layers = len(blocks_of(model, fam))
    prefix, suffixes = _prefix_and_suffixes(len(tok), seed=1)
    sites = site_names(n_layers, SITES)
    full = capture(model, fam, [prefix + s for s in suffixes], sites, pad_id=tok.pad_token_id, batch_size=3,
                   logits=True)
    got = capture(model, fam, suffixes, sites, prefix=prefix, pad_id=tok.pad_token_id, batch_size=3, logits=True)
    torch.testing.assert_close(got.logits, full.logits, atol=1e-4, rtol=0)
    for s in sites:
        if s.endswith("attn.scores"):
            for i, suf in enumerate(suffixes):
                assert got.acts[s][i].shape == (model.config.num_attention_heads, len(prefix) + len(suf))
                torch.testing.assert_close(got.acts[s][i], full.acts[s][i], atol=1e-4, rtol=0)
        else:
            torch.testing.assert_close(got.acts[s], full.acts[s], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_last_token_query_equals_full_recomputation(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    prefix, suffixes = _prefix_and_suffixes(len(tok), seed=2, n=5)
    sites = ["blocks.0.attn.q", "blocks.1.attn.q"]
    got = capture(model, fam, suffixes, sites, prefix=prefix, pad_id=tok.pad_token_id, batch_size=2)
    for i, suf in enumerate(suffixes):
        with torch.no_grad(), record_attention(model, fam, [0, 1]) as rec:
            model(torch.tensor([prefix + suf]))
        for layer in (0, 1):
            torch.testing.assert_close(got.acts[f"blocks.{layer}.attn.q"][i], rec.queries[layer][0, :, -1],
                                       atol=1e-4, rtol=0)


def test_empty_prefix_and_batch_order(tiny_models, tok):
    model = tiny_models["llama"]
    fam = family_for(model.config)
    _, suffixes = _prefix_and_suffixes(len(tok), seed=3)
    sites = ["blocks.2.resid_post"]
    a = capture(model, fam, suffixes, sites, prefix=[], pad_id=tok.pad_token_id, batch_size=4, logits=True)
    b = capture(model, fam, suffixes, sites, pad_id=tok.pad_token_id, batch_size=1, logits=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.acts[sites[0]], b.acts[sites[0]], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown hook site"):
        capture(model, fam, [[6]], ["blocks.0.attn"], prefix=[5], pad_id=0)
    with pytest.raises(ValueError, match="last token only"):
        capture(model, fam, [[6]], sites, prefix=[5], pad_id=0, last=False)
    with pytest.raises(ValueError, match="at least one token"):
        capture(model, fam, [[6], []], sites, prefix=[5], pad_id=0)
    assert model.config._attn_implementation == "sdpa"


def _toy_task():
    ex = [Example("the movie was good", "positive"), Example("the film was awful", "negative"),
          Example("i loved this plot", "positive"), Example("really not very great", "negative")]
    return Task(name="toy", train=ex, test=ex, instruction="i really loved it", template="{input} movie",
                label_words=["negative", "positive"])


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_captured_position_is_the_token_before_the_label(kind, tiny_models, tok):
    """The logits read out are those at index len(prompt) - 1 of prompt + label; the label sits at len(prompt)."""
    assert "movie" in WORDS
    model = tiny_models[kind]
    fam = family_for(model.config)
    task = _toy_task()
    b = PromptBuilder(tok, task)
    query, demos = task.test[0], task.train[1:]
    prompt = b.build(query, demos)
    label_ids = list(b._enc(task.answer_prefix + query.label))
    full = prompt.ids + label_ids
    assert full[len(prompt)] == b.label_token_ids[task.label_words.index(query.label)]
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0]
    want = logits[len(prompt) - 1]
    cap = capture(model, fam, [prompt.ids], [], pad_id=tok.pad_token_id, logits=True)
    torch.testing.assert_close(cap.logits[0], want, atol=1e-4, rtol=0)
    start = prompt.query_span[0]
    pre = capture(model, fam, [prompt.ids[start:]], [], prefix=prompt.ids[:start], pad_id=tok.pad_token_id,
                  logits=True)
    torch.testing.assert_close(pre.logits[0], want, atol=1e-4, rtol=0)
    assert not torch.allclose(pre.logits[0], logits[len(prompt)], atol=1e-3)  # not the first label token
