"""`iclft pretrain` resumes from safetensors + JSON only: a pickle in the output directory is never loaded."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

TINY = dict(stages=[{"steps": 2, "mix": {"sentiment": 1, "repeat": 1}, "lr": 1e-3, "warmup_steps": 1},
                    {"steps": 2, "mix": {"lexicon": 1, "sentiment": 1}, "aux": 0.5, "copy": 0.5, "label": 1.0}],
            seq_len=48, batch_size=2, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=2,
            max_vocab=600, max_shots=6, progress=False)


class _Payload:
    """Unpickling this runs `touch MARKER` (what a malicious checkpoint.pt would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_legacy_pickle_checkpoint_is_refused_not_executed(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    res = subprocess.run([sys.executable, "-m", "iclft", "pretrain", "--out", str(out), "--minutes", "0.01"],
                         capture_output=True, text=True, timeout=300)
    assert not marker.exists(), "the pickled payload ran"
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "old pickle checkpoint" in lines[0], res.stderr
    assert "delete it" in lines[0]
    assert not (out / "checkpoint.safetensors").exists() and not (out / "final").exists()  # nothing trained


def test_legacy_checkpoint_is_refused_by_the_module_entry_point_too(tmp_path):
    from iclft import UserError
    from iclft.builtin.pretrain import main, pretrain

    out, marker = tmp_path / "run", tmp_path / "pwned"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UserError, match="old pickle checkpoint"):
        pretrain(out, seed=0, minutes=0.01, **TINY)
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), "--minutes", "0.01"])
    assert exc.value.code == 2 and not marker.exists()


def test_checkpoint_is_safetensors_with_named_tensors_and_json_state(tmp_path):
    from safetensors import safe_open

    from iclft.builtin.pretrain import pretrain

    out = tmp_path / "run"
    pretrain(out, seed=1, minutes=5, stop_after_steps=1, **TINY)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["checkpoint.safetensors"]
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        keys, header = set(f.keys()), json.loads(f.metadata()["iclft"])
    assert "model/model.embed_tokens.weight" in keys and "model/lm_head.weight" in keys
    for moment in ("exp_avg", "exp_avg_sq", "step"):
        assert f"optimizer/model.layers.0.self_attn.q_proj.weight/{moment}" in keys
    assert header["state"]["step"] == 1 and header["state"]["config"]["seed"] == 1
    assert header["param_groups"][0]["betas"] == [0.9, 0.95]


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    from iclft import UserError
    from iclft.builtin.pretrain import pretrain

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        pretrain(out, seed=0, minutes=0.01, **TINY)


def test_resume_from_the_safetensors_checkpoint_is_exact(tmp_path):
    """Stopped after each step and resumed: the same weights and optimizer moments, bit for bit, as one run."""
    import torch
    from safetensors.torch import load_file

    from iclft.builtin.pretrain import pretrain

    whole = pretrain(tmp_path / "whole", seed=2, minutes=5, **TINY)
    parts = tmp_path / "parts"
    for _ in range(3):
        pretrain(parts, seed=2, minutes=5, stop_after_steps=1, **TINY)
    resumed = pretrain(parts, seed=2, minutes=5, **TINY)
    wa, wb = load_file(str(whole / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca = load_file(str(tmp_path / "whole" / "checkpoint.safetensors"))
    cb = load_file(str(parts / "checkpoint.safetensors"))
    assert ca.keys() == cb.keys() and all(torch.equal(ca[k], cb[k]) for k in ca)
