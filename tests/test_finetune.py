"""Full and LoRA fine-tuning: the loss goes down, the base model is untouched, the schedule is constant
after warmup, records come every few steps, and runs are reproducible."""

from __future__ import annotations

import pytest
import torch

from iclft.models.families import family_for
from iclft.models.toy import tiny_model
from iclft.tuning.finetune import FinetuneSpec, finetune, make_optimizer

VOCAB = 40


def _examples(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        q = torch.randint(4, VOCAB, (5 + i % 3,), generator=g).tolist()
        ans = [4 + (q[0] % 5), 3]  # the answer is a function of the first token
        out.append((q + ans, [0] * len(q) + [1] * len(ans)))
    return out


@pytest.fixture(scope="module")
def model():
    m = tiny_model("llama", VOCAB, seed=0)
    m.requires_grad_(False)
    return m


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("method,lr", [("full", 3e-3), ("lora", 3e-2)])
def test_loss_decreases_and_base_is_untouched(model, method, lr):
    before = _snapshot(model)
    spec = FinetuneSpec(method=method, lr=lr, steps=30, batch_size=12, warmup_steps=3, eval_every=10)
    calls = []
    res = finetune(model, family_for(model.config), _examples(), spec, seed=0, pad_id=0,
                   evaluate=lambda m: calls.append(1) or {"acc": 0.5})
    assert sum(res.losses[-5:]) / 5 < 0.85 * sum(res.losses[:5]) / 5
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.parameters())
    # the tuned copy is a plain model with the same parameter names, and it changed
    tuned = res.model.state_dict()
    assert set(tuned) == set(before)
    assert any(not torch.equal(before[k], tuned[k]) for k in before)
    assert [h["step"] for h in res.history] == [0, 10, 20, 30] and len(calls) == 4
    assert all(h["acc"] == 0.5 for h in res.history)


def test_constant_schedule_after_warmup(model):
    spec = FinetuneSpec(lr=1e-3, steps=10, warmup_steps=4, batch_size=4)
    res = finetune(model, family_for(model.config), _examples(), spec, seed=1, pad_id=0)
    assert res.lrs[:4] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])
    assert res.lrs[4:] == pytest.approx([1e-3] * 6)
    opt, sched = make_optimizer([torch.nn.Parameter(torch.zeros(1))], FinetuneSpec(lr=0.1, warmup_steps=0))
    for _ in range(5):
        opt.step()
        sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(0.1)


def test_reproducible_and_loss_on_all_tokens(model):
    fam = family_for(model.config)
    spec = FinetuneSpec(lr=1e-3, steps=5, batch_size=4)
    a = finetune(model, fam, _examples(), spec, seed=3, pad_id=0)
    b = finetune(model, fam, _examples(), spec, seed=3, pad_id=0)
    assert a.losses == b.losses
    c = finetune(model, fam, _examples(), spec.model_copy(update={"loss_on": "all"}), seed=3, pad_id=0)
    assert c.losses[0] != a.losses[0]  # a different target set
    with pytest.raises(ValueError):
        finetune(model, fam, [], spec, seed=0, pad_id=0)


def test_epochs_set_the_number_of_steps(model):
    spec = FinetuneSpec(lr=1e-3, steps=3, epochs=2, batch_size=4)
    assert spec.steps_for(2) == 3  # the minimum wins for tiny N (2 examples per batch -> 2 steps)
    assert spec.steps_for(10) == 5  # ceil(2 * 10 / 4)
    assert FinetuneSpec(steps=7, batch_size=4).steps_for(1000) == 7  # no epochs: a fixed budget
    exs = _examples()
    res = finetune(model, family_for(model.config), exs, spec, seed=0, pad_id=0, evaluate=lambda m: {})
    total = spec.steps_for(len(exs))
    assert len(res.losses) == total and res.history[-1]["step"] == total
    # default records: every max(1, total // 8) steps, plus step 0 and the last step
    every = max(1, total // 8)
    assert [h["step"] for h in res.history] == sorted({0, *range(every, total + 1, every), total})
