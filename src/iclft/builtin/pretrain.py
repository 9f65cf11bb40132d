"""Pretrain the built-in model: `python -m iclft.builtin.pretrain --out DIR [--seed S] [--minutes M]`.

The result is a plain Hugging Face directory, `DIR/final` (LlamaForCausalLM, safetensors, a
word-level fast tokenizer), loadable with `AutoModelForCausalLM` / `AutoTokenizer` and no iclft code.

Schedule. The run is a list of stages (`STAGES`), each a number of optimizer steps with its own
episode mix; a stage that sets `lr` starts a new learning-rate cycle (linear warm-up, cosine decay to
`min_lr_ratio` over that stage and the following ones that do not set `lr`). Batch `i` is a pure
function of `(seed, i)` (see `corpus.Corpus.batch`). `--minutes M` is a wall-clock cap on each
invocation: when one exceeds it, it saves a checkpoint and the current weights to `DIR/final`
(marked `"complete": false` in `pretrain_meta.json`) and stops; rerunning the same command continues.
Checkpoints (`DIR/checkpoint.safetensors`: weights and optimizer state as tensors, step, token count and the
resolved config as JSON in the file's header; see `save_checkpoint`) are written atomically every `ckpt_every_s`
seconds, so a killed run also resumes by rerunning the same command; the final weights do not depend on where it
was interrupted. Nothing is unpickled: an old `DIR/checkpoint.pt` (a pickle, which can run code when loaded) is
refused, not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from iclft import UserError

# The shipped model's curriculum (the card's notes say what each stage was for and what did not work).
# Stages 1-2 (one LR cycle): general features, then more induction food. Stages 3-6 supervise heads
# (`iclft.builtin.supervision`) on an ICL-heavy mix with fewer default labels, so that the demonstrations
# rather than the label word decide: a previous-token and an induction head (`aux`), the induction head's
# OV copying (`copy`, from stage 4), and a layer-3 head attending to the demonstrations with the query's
# answer (`label`, from stage 5). Stage boundaries 2, 4 and 5 fall where the shipped run was split.
_MIX_1 = {"sentiment": 0.5, "mapping": 0.25, "implicit": 0.1, "text": 0.05, "repeat": 0.1}
_MIX_2 = {"sentiment": 0.3, "mapping": 0.3, "implicit": 0.05, "text": 0.0, "repeat": 0.35}
_MIX_3 = {"sentiment": 0.4, "lexicon": 0.25, "mapping": 0.15, "implicit": 0.05, "repeat": 0.15}
STAGES: tuple[dict, ...] = (
    {"steps": 1459, "mix": _MIX_1, "lr": 2e-3, "warmup_steps": 100, "p_default": 0.25, "p_flipped": 0.10},
    {"steps": 1207, "mix": _MIX_2, "p_default": 0.25, "p_flipped": 0.10},
    {"steps": 665, "mix": _MIX_3, "lr": 2e-3, "warmup_steps": 50, "p_default": 0.2, "p_flipped": 0.12,
     "aux": 0.5},
    {"steps": 578, "mix": _MIX_3, "p_default": 0.2, "p_flipped": 0.12, "aux": 0.5, "copy": 0.5},
    {"steps": 557, "mix": _MIX_3, "p_default": 0.2, "p_flipped": 0.12, "aux": 0.5, "copy": 0.5, "label": 1.0},
    {"steps": 700, "mix": _MIX_3, "lr": 1e-3, "warmup_steps": 30, "p_default": 0.2, "p_flipped": 0.12, "aux": 0.5,
     "copy": 0.5, "label": 1.0},
)


@dataclass
class PretrainConfig:
    seed: int = 0
    minutes: float = 90.0  # wall-clock cap per invocation (rerun to resume)
    stages: list = dataclasses.field(default_factory=lambda: [dict(s) for s in STAGES])
    seq_len: int = 1024
    batch_size: int = 4
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_layers: int = 4
    num_heads: int = 8
    max_position_embeddings: int = 2048
    max_vocab: int = 5000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    label_weight: float = 8.0  # loss weight of answer tokens relative to other tokens
    max_shots: int = 40
    ckpt_every_s: float = 180.0
    threads: int = 2
    # autocast matmuls to bfloat16 (weights and optimizer stay fp32); the shipped run had native bf16. On an
    # AVX2-only CPU (no AVX512-BF16/AMX) bf16 is emulated: one step took 52 s there vs ~3 s in float32
    bf16: bool = True
    stop_after_steps: int | None = None  # stop (with checkpoint) after this many steps this call; tests

    @property
    def steps(self) -> int:
        return sum(int(st["steps"]) for st in self.stages)


def stage_of(cfg: PretrainConfig, step: int) -> dict:
    start = 0
    for st in cfg.stages:
        start += int(st["steps"])
        if step < start:
            return st
    return cfg.stages[-1]


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Warm-up then cosine within the LR cycle containing `step` (a cycle starts at a stage with `lr`)."""
    cycles, start = [], 0
    for st in cfg.stages:
        if "lr" in st or not cycles:
            cycles.append([start, 0, st["lr"], st.get("warmup_steps", 0)])
        cycles[-1][1] += int(st["steps"])
        start += int(st["steps"])
    c0, length, lr, warmup = [c for c in cycles if c[0] <= step][-1]
    s = step - c0
    if s < warmup:
        return lr * (s + 1) / warmup
    frac = (s - warmup) / max(1, length - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_model(cfg: PretrainConfig, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    mc = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.token_to_id("<bos>"),
        eos_token_id=tokenizer.token_to_id("<eos>"),
        pad_token_id=tokenizer.token_to_id("<pad>"),
        initializer_range=0.02,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):  # HF draws the init from torch's global RNG: seed it, then restore it
        torch.manual_seed(cfg.seed)
        return LlamaForCausalLM(mc)


CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # what earlier iclft versions wrote: a torch.save pickle


def save_checkpoint(path: Path, model, opt, param_names: list[str], state: dict) -> None:
    """Write the resumable state to `path` atomically, as safetensors only (loading it runs no code).

    Tensors: `model/<parameter name>` (the weights) and `optimizer/<parameter name>/<key>` (AdamW's `step`,
    `exp_avg`, `exp_avg_sq`). The header's metadata `iclft` is JSON: `state` (step, tokens, config, elapsed_s),
    the optimizer's param groups (hyper-parameters; `params` as indices) and any non-tensor optimizer state.
    No RNG state is needed: batch i is a pure function of (seed, i) and the model has no dropout.
    """
    from safetensors.torch import save_file

    # clone: the tied embedding and LM head share storage, which safetensors refuses to write twice
    tensors = {f"model/{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"optimizer/{param_names[idx]}/{key}"] = v.detach().clone().contiguous()
            else:
                scalars.setdefault(param_names[idx], {})[key] = v
    header = {"format": 1, "state": state, "param_groups": sd["param_groups"], "optimizer_scalars": scalars}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"iclft": json.dumps(header)})
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(header, tensors) of a checkpoint written by `save_checkpoint`; a bad file is a UserError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = json.loads((f.metadata() or {})["iclft"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"cannot read the checkpoint {str(path)!r} ({type(exc).__name__}: {first}); delete it to "
                        "start this run afresh") from None
    return header, tensors


def load_checkpoint(header: dict, tensors: dict, model, opt, param_names: list[str]) -> None:
    """Restore the weights and the optimizer from `read_checkpoint`'s result (exactly: same dtypes, same values)."""
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    index = {name: i for i, name in enumerate(param_names)}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer/"):
            name, key = k[len("optimizer/"):].rsplit("/", 1)
            state.setdefault(index[name], {})[key] = v
    for name, extra in header.get("optimizer_scalars", {}).items():
        state.setdefault(index[name], {}).update(extra)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in header["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _refuse_legacy(out: Path) -> None:
    legacy = out / LEGACY_CHECKPOINT
    if legacy.exists():
        # torch.load(weights_only=False) would unpickle it, and unpickling runs whatever code the file names
        raise UserError(f"{str(legacy)!r} is an old pickle checkpoint, which iclft no longer loads (loading a "
                        "pickle can run code); delete it to start this run afresh, or pass another --out")


def export(model, out_dir: Path, tokenizer_dir: Path, meta: dict) -> Path:
    """Write a standalone HF directory (fp32 safetensors + tokenizer) atomically-ish to `out_dir`."""
    import shutil

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, tmp / f.name)
    (tmp / "pretrain_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def weighted_loss(logits, ids, is_label, label_weight: float):
    import torch.nn.functional as F

    tgt = ids[:, 1:]
    w = 1.0 + (label_weight - 1.0) * is_label[:, 1:].float()
    flat = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    nll = F.cross_entropy(flat, tgt.reshape(-1), reduction="none")
    nll = nll.view_as(w)
    return (nll * w).sum() / w.sum(), nll.detach(), w


def pretrain(out: Path, seed: int = 0, minutes: float = 90.0, progress: bool = True, **overrides) -> Path:
    """Pretrain (or resume) into `out`; returns `out/final`, the HF model directory.

    `overrides` are `PretrainConfig` fields. A checkpoint in `out` is resumed with *its* config
    (only `minutes`, `ckpt_every_s` and `stop_after_steps` may change on resumption).
    """
    import torch
    from tqdm import tqdm

    from iclft.builtin.corpus import Corpus, build_tokenizer, save_tokenizer
    from iclft.builtin.supervision import HeadSupervisor

    out = Path(out)
    _refuse_legacy(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    tok_dir = out / "tokenizer"
    cfg = PretrainConfig(seed=seed, minutes=minutes, **overrides)
    header = tensors = None
    if ckpt_path.exists():
        header, tensors = read_checkpoint(ckpt_path)
        saved = dict(header["state"]["config"])
        for k in ("minutes", "ckpt_every_s", "stop_after_steps", "threads"):
            saved[k] = getattr(cfg, k)
        cfg = PretrainConfig(**saved)
    torch.set_num_threads(cfg.threads)
    total = cfg.steps

    tok = build_tokenizer(max_vocab=cfg.max_vocab)
    if not (tok_dir / "tokenizer.json").exists():
        save_tokenizer(tok, tok_dir)
    corpus = Corpus(tok, cfg.stages, seq_len=cfg.seq_len, max_shots=cfg.max_shots)
    model = build_model(cfg, tok)
    decay = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [(n, p) for n, p in model.named_parameters() if p.ndim < 2]
    param_names = [n for n, _ in decay + no_decay]  # the optimizer's parameter indices, by name
    opt = torch.optim.AdamW(
        [{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
         {"params": [p for _, p in no_decay], "weight_decay": 0.0}],
        lr=lr_at(cfg, 0), betas=(0.9, 0.95), eps=1e-8,
    )
    step, tokens, elapsed_prev = 0, 0, 0.0
    if header is not None:
        load_checkpoint(header, tensors, model, opt, param_names)
        st = header["state"]
        step, tokens, elapsed_prev = st["step"], st["tokens"], st.get("elapsed_s", 0.0)
    n_params = sum(p.numel() for p in model.parameters())

    def meta(done: bool) -> dict:
        return {
            "config": dataclasses.asdict(cfg), "step": step, "tokens": tokens, "params": n_params,
            "train_seconds": round(elapsed_prev + time.time() - t0, 1), "complete": done,
            "tokens_per_s": round(tokens_this / max(1e-9, time.time() - t0), 1),
        }

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, model, opt, param_names, {
            "step": step, "tokens": tokens, "config": dataclasses.asdict(cfg),
            "elapsed_s": elapsed_prev + time.time() - t0,
        })

    t0 = time.time()
    last_ckpt = t0
    tokens_this = 0
    steps_this = 0
    model.train()
    bar = tqdm(total=total, initial=step, disable=not progress, desc="pretrain", unit="step",
               dynamic_ncols=True, mininterval=5.0)
    ema = None
    stopped = False
    sup = HeadSupervisor(model, tok.token_to_id("<bos>"))
    while step < total:
        stage = stage_of(cfg, step)
        ids, is_label = corpus.batch(cfg.seed, step, int(stage.get("batch_size", cfg.batch_size)))
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(input_ids=ids).logits
            sup.attend(stage)
        loss, nll, w = weighted_loss(logits, ids, is_label, cfg.label_weight)
        loss = sup.loss(loss, ids, is_label, stage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        steps_this += 1
        tokens += ids.numel()
        tokens_this += ids.numel()
        lab = is_label[:, 1:]
        lab_loss = float(nll[lab].mean()) if lab.any() else float("nan")
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", label_nll=f"{lab_loss:.3f}",
                        **{f"sup_{k}": f"{v:.2f}" for k, v in sup.last.items()},
                        tok_s=f"{tokens_this / (time.time() - t0):.0f}",
                        lr=f"{lr_at(cfg, step - 1):.2e}")
        now = time.time()
        over_time = now - t0 > cfg.minutes * 60 if cfg.minutes else False  # this invocation's budget
        stop_here = cfg.stop_after_steps is not None and steps_this >= cfg.stop_after_steps
        if now - last_ckpt > cfg.ckpt_every_s or step == total or over_time or stop_here:
            checkpoint()
            last_ckpt = now
        if (over_time or stop_here) and step < total:
            stopped = True
            break
    bar.close()
    final = out / "final"
    if not stopped or over_time:
        export(model, final, tok_dir, meta(done=step >= total))
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=90.0, help="wall-clock cap per invocation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PretrainConfig field (JSON value), e.g. --set lr=0.001")
    a = p.parse_args(argv)
    overrides = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    try:
        final = pretrain(a.out, seed=a.seed, minutes=a.minutes, **overrides)
    except UserError as exc:  # one line and exit code 2, as the iclft CLI does
        p.exit(2, f"error: {exc}\n")
    print(final)


if __name__ == "__main__":
    main()
