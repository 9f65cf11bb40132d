"""`iclft.capture(model, prompts, sites=..., positions=...)`: the public capture function on any supported model."""

import pytest
import torch

import iclft
import iclft.capture
from iclft import UserError
from iclft.capture import Cache
from iclft.capture import core as capture_core
from iclft.models.families import blocks_of, family_for
from iclft.models.load import load
from tests.conftest import random_prompts

TEXTS = ["the movie was good", "i really hated this awful film", "great plot"]


def _hidden(model, ids: list[int]) -> tuple:
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2", "opt"])
def test_module_is_the_function_and_matches_hf_hidden_states(kind, tiny_models, tok):
    model = tiny_models[kind]
    L = len(blocks_of(model, family_for(model.config)))
    prompts = random_prompts(5, len(tok), seed=21)
    cache = iclft.capture(model, prompts, sites=["resid_post"], tokenizer=tok, batch_size=2)
    assert isinstance(cache, Cache) and callable(iclft.capture)
    assert list(cache.keys()) == [f"blocks.{layer}.resid_post" for layer in range(L)]
    stacked = cache.stack("resid_post")
    assert stacked.shape == (5, L, model.config.hidden_size)
    full = iclft.capture(model, prompts, sites="resid_post", positions="all", tokenizer=tok)
    for i, p in enumerate(prompts):
        hs = _hidden(model, p)
        for layer in range(L):
            torch.testing.assert_close(cache[f"blocks.{layer}.resid_post"][i], hs[layer + 1][0, -1], atol=1e-5, rtol=0)
            torch.testing.assert_close(full[f"blocks.{layer}.resid_post"][i], hs[layer + 1][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(stacked[i], torch.stack([h[0, -1] for h in hs[1:]]), atol=1e-5, rtol=0)


def test_text_prompts_batched_equal_one_at_a_time(tiny_models, tok):
    model = tiny_models["llama"]
    sites = ["blocks.1.attn.out", "blocks.2.attn.z", "blocks.0.attn.scores"]
    batched = iclft.capture(model, TEXTS, sites=sites, tokenizer=tok, logits=True)
    for i, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        one = iclft.capture(model, [ids], sites=sites, tokenizer=tok, logits=True)
        for s in sites:
            torch.testing.assert_close(batched[s][i], one[s][0], atol=1e-5, rtol=0)
        with torch.no_grad():
            want = model(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(batched.logits[i], want, atol=1e-4, rtol=0)
        assert batched["blocks.0.attn.scores"][i].shape == (model.config.num_attention_heads, len(ids))
    # one string is one prompt
    torch.testing.assert_close(iclft.capture(model, TEXTS[1], sites=sites[:1], tokenizer=tok)[sites[0]],
                               batched[sites[0]][1:2], atol=1e-5, rtol=0)


def test_prefix_equals_full_prompts(tiny_models, tok):
    model = tiny_models["gpt2"]
    prefix = tok("i loved this plot . the film was great .")["input_ids"]
    suffixes = [[7, 8], [9], [10, 11, 12]]
    got = iclft.capture(model, suffixes, sites=["resid_post", "attn.scores"], prefix=prefix, tokenizer=tok,
                        logits=True)
    full = iclft.capture(model, [prefix + s for s in suffixes], sites=["resid_post", "attn.scores"], tokenizer=tok,
                         logits=True)
    assert set(got.keys()) == set(full.keys())
    torch.testing.assert_close(got.stack("resid_post"), full.stack("resid_post"), atol=1e-4, rtol=0)
    torch.testing.assert_close(got.logits, full.logits, atol=1e-4, rtol=0)
    for a, b in zip(got["blocks.1.attn.scores"], full["blocks.1.attn.scores"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_builtin_by_name_offline_and_quiet(capfd):
    loaded = load("builtin")
    L = len(blocks_of(loaded.model, loaded.family))
    capfd.readouterr()
    cache = iclft.capture("builtin", ["The movie was great.", "A dull film."], sites=["resid_post"])
    assert "Loading weights" not in capfd.readouterr().err  # no unlabelled progress bars from the API
    same = iclft.capture(loaded, ["The movie was great.", "A dull film."], sites=["resid_post"])
    torch.testing.assert_close(cache.stack("resid_post"), same.stack("resid_post"), atol=0, rtol=0)
    ids = loaded.tokenizer("A dull film.")["input_ids"]
    hs = _hidden(loaded.model, ids)
    torch.testing.assert_close(cache.stack("resid_post")[1], torch.stack([h[0, -1] for h in hs[1:]]),
                               atol=1e-5, rtol=0)
    assert cache.stack("resid_post").shape == (2, L, loaded.model.config.hidden_size)


def test_core_stays_reachable(tiny_models, tok):
    model = tiny_models["llama"]
    fam = family_for(model.config)
    assert iclft.capture.capture is capture_core.capture  # the token-level core the studies run
    a = capture_core.capture(model, fam, [[5, 6, 7]], ["blocks.0.resid_post"], pad_id=tok.pad_token_id)
    b = iclft.capture(model, [[5, 6, 7]], sites=["blocks.0.resid_post"], tokenizer=tok)
    torch.testing.assert_close(a["blocks.0.resid_post"], b["blocks.0.resid_post"], atol=0, rtol=0)


def test_bad_input_is_a_user_error(tiny_models, tok):
    model = tiny_models["llama"]
    with pytest.raises(UserError, match="positions"):
        iclft.capture(model, [[5, 6]], positions="first", tokenizer=tok)
    with pytest.raises(UserError, match="unknown hook site"):
        iclft.capture(model, [[5, 6]], sites=["blocks.0.resid"], tokenizer=tok)
    with pytest.raises(UserError, match="blocks"):
        iclft.capture(model, [[5, 6]], sites=["blocks.99.resid_post"], tokenizer=tok)
    with pytest.raises(UserError, match="tokenizer"):
        iclft.capture(model, ["no tokenizer given"])
    with pytest.raises(UserError, match="at least one"):
        iclft.capture(model, [[5], []], tokenizer=tok)
    with pytest.raises(UserError, match="model must be"):
        iclft.capture(42, [[5]])
    with pytest.raises(UserError, match="unknown model"):
        iclft.capture("/no/such/model", [[5]])
    with pytest.raises(KeyError, match="layers 0"):
        iclft.capture(model, [[5, 6]], sites=["blocks.1.resid_post"], tokenizer=tok).stack("resid_post")
