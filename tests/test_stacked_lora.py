"""StackedLora == B sequential LoraSession trainings (losses and tuned hidden states), base model untouched."""

import random

import pytest
import torch

from iclft.capture import capture
from iclft.models.families import family_for
from iclft.tuning import LoraConfigSpec, LoraSession, StackedLora
from tests.conftest import random_prompts

SPEC = LoraConfigSpec(steps=8, lr=1e-2)
SEEDS = [11, 12, 12]  # trials may share a seed (the convergence study's IT and SL of a query do)


def _trials(vocab):
    """Three trials with different numbers of examples, ragged lengths and answer lengths."""
    rng = random.Random(5)
    out = []
    for t, n in enumerate((2, 4, 3)):
        ex = []
        for p in random_prompts(n, vocab, seed=20 + t, lo=4, hi=14):
            n_ans = rng.randint(1, 2)
            ex.append((p, [0] * (len(p) - n_ans) + [1] * n_ans))
        out.append(ex)
    return out


def _snapshot(model):
    # hooks are compared with what was there before: HF's output_hidden_states (used by other tests on these
    # shared models) leaves hooks of its own
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [type(m).__name__ for m in model.modules()],
            _hooks(model))


def _hooks(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _assert_untouched(model, snap):
    state, flags, types, hooks = snap
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(state[k], after[k]) for k in state)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [type(m).__name__ for m in model.modules()] == types
    assert _hooks(model) == hooks
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_stacked_equals_sequential(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    trials = _trials(len(tok))
    prompts = random_prompts(3, len(tok), seed=9, lo=3, hi=12)  # trial i's query: a ZSL-like prompt
    sites = [f"blocks.{layer}.resid_post" for layer in range(model.config.num_hidden_layers)]

    seq_losses, seq_states, seq_logits = [], [], []
    with LoraSession(model, fam, SPEC) as s:
        for ex, seed, p in zip(trials, SEEDS, prompts, strict=True):
            seq_losses.append(s.train(ex, seed=seed, pad_id=0))
            c = capture(model, fam, [p], sites, pad_id=0, logits=True)
            seq_states.append(c.stack("resid_post", len(sites))[0])
            seq_logits.append(c.logits[0])

    base = capture(model, fam, prompts, sites, pad_id=0, batch_size=1, logits=True)
    snap = _snapshot(model)
    with StackedLora(model, fam, SPEC) as st:
        losses = st.train(trials, SEEDS, pad_id=0)
        # each prompt through its own adapter, plus the base model (None) for the first one: one call
        c = st.capture(prompts + [prompts[0]], [0, 1, 2, None], sites, pad_id=0, logits=True)
    _assert_untouched(model, snap)

    assert seq_losses[0][-1] < seq_losses[0][0]  # it learns
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(seq_losses), atol=1e-5, rtol=0)
    states = c.stack("resid_post", len(sites))
    torch.testing.assert_close(states[:3], torch.stack(seq_states), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.logits[:3], torch.stack(seq_logits), atol=1e-5, rtol=0)
    torch.testing.assert_close(states[3], base.stack("resid_post", len(sites))[0], atol=1e-5, rtol=0)
    assert (states[:3] - torch.stack(seq_states)).abs().max() < (states[0] - states[3]).abs().max() / 100


def test_passes_duplicates_and_base_rows(tiny_models, tok):
    """Splitting the rows over passes changes nothing; identical prompts on different adapters stay
    apart; a prompt without an adapter gives the base model's states exactly."""
    model = tiny_models["llama"]
    fam = family_for(model.config)
    trials = _trials(len(tok))
    p = random_prompts(1, len(tok), seed=3)[0]
    short = random_prompts(1, len(tok), seed=4, lo=3, hi=3)[0]
    site = ["blocks.2.resid_post"]
    base = capture(model, fam, [p, short], site, pad_id=0, batch_size=1).acts[site[0]]
    with StackedLora(model, fam, SPEC) as st:
        one = st.train(trials, SEEDS, pad_id=0)
        a = st.capture([p, p, p], [2, 0, 1], site, pad_id=0).acts[site[0]]
        split = st.train(trials, SEEDS, pad_id=0, tokens_per_pass=1)  # one row per pass
        b = st.capture([p, short, p, p], [0, None, 1, 2], site, pad_id=0, batch_size=2).acts[site[0]]
        c = st.capture([p], [None], site, pad_id=0).acts[site[0]]
        with pytest.raises(ValueError):
            st.capture([p], [3], site, pad_id=0)  # only adapters 0..2 exist
    torch.testing.assert_close(torch.tensor(split), torch.tensor(one), atol=1e-5, rtol=0)
    torch.testing.assert_close(b[[3, 0, 2]], a, atol=1e-5, rtol=0)
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # different adapters
    assert torch.equal(c[0], base[0]) and torch.allclose(b[1], base[1], atol=1e-6)


def test_loss_on_all_tokens(tiny_models, tok):
    model = tiny_models["gpt2"]
    fam = family_for(model.config)
    spec = LoraConfigSpec(steps=5, lr=1e-2, loss_on="all")
    trials = _trials(len(tok))
    with LoraSession(model, fam, spec) as s:
        seq = [s.train(ex, seed=seed, pad_id=0) for ex, seed in zip(trials, SEEDS, strict=True)]
    with StackedLora(model, fam, spec) as st:
        stacked = st.train(trials, SEEDS, pad_id=0)
    torch.testing.assert_close(torch.tensor(stacked), torch.tensor(seq), atol=1e-5, rtol=0)
