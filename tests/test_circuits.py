"""Activation / attribution patching on tiny models: boundary cases, the effect formula, exactness of
attribution where the model is linear in the patched activation, circuit shift, and implicit-task pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from iclft.circuits.pairs import build_pairs, clean_counterpart, pair_ids
from iclft.circuits.patching import (
    Component,
    PatchResult,
    activation_patching,
    attribution_patching,
    circuit_shift,
    components,
    effect,
    make_pairs,
    patch_together,
    top_k,
)
from iclft.models.families import family_for
from iclft.models.toy import tiny_model
from iclft.tasks.implicit import DEFAULT_RULE, evaluate, generate, shortcut_answer
from tests.conftest import icl_pairs

VOCAB = 50


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a = torch.randint(4, VOCAB, (8 + i,), generator=g).tolist()
        b = list(a)
        b[2] = (b[2] + 7) % (VOCAB - 4) + 4  # one token differs, never the last
        out.append((a, b, 5, 6))
    return out


@pytest.fixture(scope="module")
def llama():
    m = tiny_model("llama", VOCAB, seed=1)
    return m, family_for(m.config)


def test_effect_formula_by_hand():
    assert effect(1.5, 2.0, 1.0) == pytest.approx(0.5)
    assert effect(-1.0, -3.0, 1.0) == pytest.approx(0.5)
    # Two pairs: deltas 1 and -1 of gaps 2 and -4 -> (1*1 + (-1)*(-1)) / (2 + 4) = 1/3; per pair 0.5 and 0.25.
    r = PatchResult([Component("mlp", 0)], np.array([3.0, -3.0]), np.array([1.0, 1.0]), np.array([[1.0, -1.0]]))
    assert r.per_pair()[0].tolist() == pytest.approx([0.5, 0.25])
    assert r.effects()[0] == pytest.approx(1 / 3)


def test_patching_all_restores_clean_and_none_changes_nothing(llama):
    model, fam = llama
    batch = make_pairs(_pairs(), pad_id=0)
    res = activation_patching(model, fam, batch)
    assert len(res.components) == 3 * (4 + 1)
    assert np.abs(res.ld_clean - res.ld_corrupt).min() > 1e-4
    everything = patch_together(model, fam, batch, components(model, fam))
    np.testing.assert_allclose(everything, res.ld_clean, atol=1e-5)  # effect 1
    np.testing.assert_allclose(patch_together(model, fam, batch, []), res.ld_corrupt, atol=1e-6)  # effect 0
    # One component patched alone gives the same LD as the exhaustive sweep's row for it.
    c = res.components[5]
    alone = patch_together(model, fam, batch, [c])
    np.testing.assert_allclose(alone - res.ld_corrupt, res.delta[5], atol=1e-5)


def test_batched_patching_equals_single_pairs(llama):
    model, fam = llama
    pairs = _pairs(4)
    together = activation_patching(model, fam, make_pairs(pairs, 0), batch_size=4)
    single = [activation_patching(model, fam, make_pairs([p], 0)) for p in pairs]
    np.testing.assert_allclose(together.delta, np.concatenate([s.delta for s in single], axis=1), atol=1e-5)


def test_attribution_exact_where_the_model_is_linear(llama):
    model, fam = llama
    batch = make_pairs(_pairs(), 0)
    last_mlp = [Component("mlp", 2)]
    # With the final norm removed, LD is linear in the last MLP's output: the first-order estimate is exact.
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()
    try:
        ex = activation_patching(model, fam, batch, last_mlp)
        at = attribution_patching(model, fam, batch, last_mlp)
    finally:
        model.model.norm = norm
    np.testing.assert_allclose(at.delta, ex.delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(at.ld_corrupt, ex.ld_corrupt, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_attribution_agrees_in_rank(kind):
    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    batch = make_pairs(_pairs(), 0)
    ex = activation_patching(model, fam, batch).effects()
    at = attribution_patching(model, fam, batch).effects()
    assert spearmanr(ex, at).statistic > 0.8
    # per-position mode: rows line up between the two methods
    exp = activation_patching(model, fam, batch, per_position=True)
    atp = attribution_patching(model, fam, batch, per_position=True)
    assert exp.positions == atp.positions and exp.delta.shape == atp.delta.shape
    assert spearmanr(exp.effects(), atp.effects()).statistic > 0.8


def test_make_pairs_checks_lengths_and_tokens():
    with pytest.raises(ValueError, match="same length"):
        make_pairs([([1, 2, 3], [1, 2], 5, 6)], 0)
    with pytest.raises(ValueError, match="differ"):
        make_pairs([([1, 2, 3], [1, 4, 3], 5, 5)], 0)


def test_circuit_shift_and_top_k():
    e = np.array([0.1, -0.9, 0.5, 0.0])
    assert top_k(e, 2) == {1, 2}
    assert circuit_shift(e, e, 2) == pytest.approx({"cosine": 0.0, "jaccard": 0.0})
    s = circuit_shift(np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0, 0]), 1)
    assert s == pytest.approx({"cosine": 1.0, "jaccard": 1.0})
    s = circuit_shift(np.array([3.0, 2.0, 1.0, 0]), np.array([3.0, 0, 2.0, 1.0]), 2)
    assert s["jaccard"] == pytest.approx(1 - 1 / 3)


@pytest.mark.parametrize("family", ["expression", "code", "boolean", "relation", "algebra", "parity"])
def test_clean_counterparts_are_minimal_clean_pairs(family):
    rule = DEFAULT_RULE[family]
    found = 0
    for item in generate(family, 10, 7, "misleading"):
        clean = clean_counterpart(family, item, rule)
        if clean is None:
            continue
        found += 1
        assert evaluate(family, clean.input, rule) == shortcut_answer(family, clean.input, rule) == clean.label
        assert clean.label == item.meta["shortcut"] != item.label
        assert len(clean.input) <= len(item.input) + 1
    assert found >= 5


def test_build_pairs_gives_equal_lengths_and_differing_tokens(tok):
    from iclft.models.toy import word_tokenizer
    from iclft.prompts import PromptBuilder
    from iclft.tasks.implicit import implicit_task

    task = implicit_task("algebra", seed=0, n_train=8, n_test=2)
    wt = word_tokenizer([task.instruction, "q a x y z is"], max_vocab=200)
    b = PromptBuilder(wt, task)
    pairs = build_pairs(b, "algebra", DEFAULT_RULE["algebra"], generate("algebra", 20, 3, "misleading"), 4)
    assert len(pairs) == 4
    for p in pairs:
        c, x, right, wrong = pair_ids(b, p, task.train[:2])
        assert len(c) == len(x) and c != x and right != wrong
        assert c[-len(p["prefix"]):] == p["prefix"] if p["prefix"] else True


@pytest.mark.parametrize("method", [activation_patching, attribution_patching])
def test_per_position_rows_do_not_depend_on_batch_size(method):
    # Pairs whose first differing token sits at different positions: with several batches, every batch
    # must still produce the same (component, position) rows as one batch over all pairs.
    model = tiny_model("llama", VOCAB, seed=1)
    fam = family_for(model.config)
    pairs = _pairs()
    batch = make_pairs(pairs, 0)
    assert len(set(batch.first_diff)) > 1, "fixture must have pairs that differ at different positions"
    one = method(model, fam, batch, batch_size=len(pairs), per_position=True)
    many = method(model, fam, batch, batch_size=1, per_position=True)
    assert one.positions == many.positions
    np.testing.assert_allclose(many.delta, one.delta, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_default_batches_components_and_equals_one_per_pass(kind):
    # The default budget puts several components in one forward pass on every device (CPU included); the deltas
    # are those of one pass per component, for heads, MLPs and a whole site, with and without a shared prefix.
    model = tiny_model(kind, VOCAB, seed=1)
    fam = family_for(model.config)
    comps = components(model, fam) + [Component("resid_post", 0), Component("attn.out", 1)]
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        for pairs in (_pairs(4), icl_pairs(4, VOCAB, seed=3, prefix_len=10)):
            batch = make_pairs(pairs, 0)
            calls.clear()
            batched = activation_patching(model, fam, batch, comps)
            n_batched = len(calls)
            calls.clear()
            single = activation_patching(model, fam, batch, comps, max_tokens=1)
            assert len(calls) == 3 + len(comps) > n_batched  # prefix + clean + corrupt, then one per component
            np.testing.assert_allclose(batched.delta, single.delta, atol=1e-5)
            np.testing.assert_allclose(single.ld_corrupt, patch_together(model, fam, batch, []), atol=1e-5)
            for c, row in zip(comps, single.delta, strict=True):  # a full corrupted run with c patched
                np.testing.assert_allclose(row, patch_together(model, fam, batch, [c]) - single.ld_corrupt,
                                           atol=1e-5)
    finally:
        handle.remove()


def test_patched_runs_start_at_the_patched_layer(llama):
    # A patch at the last layer cannot change the blocks before it: they run only in the prefix, clean and
    # corrupted runs, never in the patched ones, and are left with their own forward afterwards.
    from iclft.models.families import blocks_of

    model, fam = llama
    blocks = blocks_of(model, fam)
    last = len(blocks) - 1
    calls = [0] * len(blocks)
    handles = [b.get_submodule(fam.mlp).register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(blocks)]  # a block's MLP runs when the block computes, not when replayed
    try:
        comps = [c for c in components(model, fam) if c.layer == last]
        activation_patching(model, fam, make_pairs(icl_pairs(4, VOCAB, seed=3, prefix_len=10), 0), comps, max_tokens=1)
    finally:
        for h in handles:
            h.remove()
    assert calls[:last] == [3] * last and calls[last] == 3 + len(comps)
    assert all("forward" not in b.__dict__ for b in blocks)


def test_agreement_counts_only_real_effects_as_rankable():
    # The implicit study's attribution-vs-exhaustive agreement: over all units, and over the units whose largest
    # exhaustive effect reaches RANK_MIN_EFFECT of the clean − corrupt LD difference (the others: noise).
    import pandas as pd

    from iclft.studies import implicit_patterns as IP

    spec = IP.ImplicitSpec(families=("expression", "boolean"))
    rng = np.random.default_rng(0)
    rows = []
    for fam, scale in (("expression", 0.5), ("boolean", 0.01)):  # real effects vs effects too small to rank
        for seed in (0, 1):
            for setting in IP.CIRCUIT_SETTINGS:
                ex = scale * rng.standard_normal(9)
                at = ex + 0.1 * scale * rng.standard_normal(9) if fam == "expression" else rng.permutation(ex)
                rows += [{"family": fam, "seed": seed, "setting": setting, "layer": i // 3, "head": i % 3,
                          "effect": ex[i], "effect_attr": at[i], "seconds_exh": 2.0, "seconds_attr": 1.0,
                          "n_pairs": 4} for i in range(9)]
    _, ag, _ = IP._circuits(pd.DataFrame(rows), spec)
    assert (ag["n_units"], ag["n_rankable"], ag["min_effect"]) == (4, 2, IP.RANK_MIN_EFFECT)
    assert ag["rankable"]["spearman"]["mean"] > 0.8 and ag["rankable"]["spearman_abs"]["mean"] > 0.5
    assert ag["spearman"]["mean"] < ag["rankable"]["spearman"]["mean"]  # the noise units pull the overall down
    assert ag["speedup"]["mean"] == pytest.approx(2.0)
