import pytest
import torch

from iclft.capture import capture
from iclft.models.families import family_for
from iclft.tuning import LoraConfigSpec, LoraSession
from tests.conftest import random_prompts


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_lora_trains_and_never_mutates_base(kind, tiny_models, tok):
    model = tiny_models[kind]
    fam = family_for(model.config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m).__name__ for m in model.modules()]
    prompts = random_prompts(3, len(tok), seed=2)
    site = ["blocks.1.resid_post"]
    base = capture(model, fam, prompts, site, pad_id=0).acts[site[0]]
    examples = [(p, [0] * (len(p) - 1) + [1]) for p in prompts]
    with LoraSession(model, fam, LoraConfigSpec(steps=15, lr=1e-2)) as s:
        losses = s.train(examples, seed=0, pad_id=0)
        tuned = capture(model, fam, prompts, site, pad_id=0).acts[site[0]]
        losses_again = s.train(examples, seed=0, pad_id=0)
    assert losses[-1] < losses[0]  # it learns
    assert losses == pytest.approx(losses_again)  # re-seeding makes trials reproducible
    assert not torch.allclose(tuned, base, atol=1e-4)  # the adapter changes states
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m).__name__ for m in model.modules()] == types_before
    torch.testing.assert_close(capture(model, fam, prompts, site, pad_id=0).acts[site[0]], base)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox", "opt"])
def test_family_row_says_which_lora_targets_are_conv1d(kind, tiny_models):
    from transformers.pytorch_utils import Conv1D

    from iclft.tuning.lora import target_modules

    model = tiny_models[kind]
    fam = family_for(model.config)
    mods = target_modules(model, fam.lora_targets)
    assert mods and all(isinstance(m, Conv1D) == fam.conv1d for _, m in mods)


def test_one_init_for_sessions_and_finetuning(tiny_models):
    """`finetune` (method lora) and `LoraSession` start from the same adapters for the same seed."""
    import copy

    from iclft.tuning.lora import LoraSpec, add_lora, init_lora

    model = tiny_models["gpt2"]
    fam = family_for(model.config)
    with LoraSession(model, fam, LoraConfigSpec()) as s:
        s.reset(7)
        session = {n: p.detach().clone() for n, p in s.peft.named_parameters() if "lora_" in n}
    peft, _ = add_lora(copy.deepcopy(model), fam, LoraSpec())
    init_lora(peft, 7)
    fresh = {n: p.detach() for n, p in peft.named_parameters() if "lora_" in n}
    assert session.keys() == fresh.keys() and all(torch.equal(session[n], fresh[n]) for n in session)


def test_lora_specs_reject_unknown_fields():
    from pydantic import ValidationError

    from iclft.tuning.finetune import FinetuneSpec

    with pytest.raises(ValidationError):
        LoraConfigSpec(dropout=0.1)  # PEFT's dropout never acted: the model stays in eval mode
    with pytest.raises(ValidationError):
        FinetuneSpec(method="lora", lora_r=4)  # the adapter is `adapter: LoraSpec`
    assert FinetuneSpec(method="lora", adapter={"r": 4}).adapter.r == 4
