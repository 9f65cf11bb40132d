"""Many independent LoRA adapters trained at once: one per trial, stacked along a leading trial axis.

The sequential `LoraSession` trains one adapter per trial: 30 forward/backward passes over k short rows
each, per trial. Here each step runs the rows of all trials in a few length-sorted passes, every row
through its own trial's adapter (a batched matmul in a forward hook on each LoRA target module): far
fewer, larger passes with little padding. Where small passes underuse the hardware (a GPU, a many-core
CPU) that is most of the gain; on one CPU thread the small model is already compute-bound, and what is
saved is the per-call overhead and padding (benchmarks/bench_adapters.py).

Equivalence with B sequential trainings (tests/test_stacked_lora.py):
  - init: per trial the same generator draws, in the same module order, as `init_lora(peft, seed)`;
  - loss: the SUM over trials of each trial's own mean cross-entropy (over that trial's label tokens).
    Rows never interact and trial i's loss depends only on adapter i, so adapter i's gradient is
    exactly its sequential gradient; AdamW is elementwise, so one AdamW over the stacked tensors takes
    each trial's sequential step.
The model's weights are never touched; leaving the context removes the hooks and restores the
parameters' `requires_grad` flags.

    with StackedLora(model, family, spec) as s:
        losses = s.train(trials, seeds, pad_id)   # trials[i]: list of (ids, answer_mask); adapter i
        c = s.capture(prompts, adapters, sites, pad_id=pad_id, logits=True)  # prompt j via adapter adapters[j]
"""

from __future__ import annotations

import collections

import torch

from iclft.capture import Cache, capture
from iclft.capture.prefix import takes_logits_to_keep
from iclft.models.families import Family
from iclft.tuning.lora import LoraConfigSpec, kaiming_a, target_modules
from iclft.tuning.loss import lm_batch


class StackedLora:
    def __init__(self, model, family: Family, spec: LoraConfigSpec):
        self.model, self.family, self.spec = model, family, spec
        self.scale = spec.adapter.alpha / spec.adapter.r
        self.A: list[torch.Tensor] = []  # per target module: (B, r, in)
        self.B: list[torch.Tensor] = []  # per target module: (B, out, r)
        self._rows: torch.Tensor | None = None  # adapter of each row of the running batch; -1: none
        self._hooks: list = []

    def __enter__(self):
        self.modules = target_modules(self.model, self.spec.adapter.targets or self.family.lora_targets)
        if not self.modules:
            raise ValueError("LoRA found no target modules to adapt")
        self._grad_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.requires_grad_(False)  # gradients for the adapters only
        self._hooks = [m.register_forward_hook(self._hook(j)) for j, (_, m) in enumerate(self.modules)]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks, self.A, self.B, self._rows = [], [], [], None
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)

    def _hook(self, j: int):
        def hook(_mod, args, out):
            if self._rows is None:
                return None
            a, b, rows = self.A[j], self.B[j], self._rows
            n = len(rows)
            x = args[0].reshape(n, -1, args[0].shape[-1]).to(a.dtype)  # OPT-style 2-D (batch*seq, d) inputs too
            # Row n uses adapter rows[n]; a row without one (-1) gathers the all-zero adapter: out + 0 = out.
            # PEFT computes out + lora_B(lora_A(x)) * scaling; scaling the rank-r factor instead is cheaper (and
            # exact for a power-of-two alpha / r), and baddbmm adds to out in the same kernel.
            xa = torch.bmm(x, a[rows].transpose(1, 2)) * self.scale
            y = torch.baddbmm(out.reshape(n, -1, out.shape[-1]).to(a.dtype), xa, b[rows].transpose(1, 2))
            return y.reshape(out.shape).to(out.dtype)

        return hook

    def _init(self, seeds: list[int], device) -> None:
        """`init_lora(seed)` per trial: Kaiming-uniform A from a per-trial generator, module by module in
        model order (the order PEFT's parameters come in), zero B. One extra all-zero slot at the end is the
        "no adapter" that index -1 selects."""
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        r = self.spec.adapter.r
        self.A, self.B = [], []
        for _, m in self.modules:
            w = m.weight
            in_f, out_f = w.shape if self.family.conv1d else w.shape[::-1]
            # PEFT keeps half-precision models' adapters in float32 (autocast_adapter_dtype)
            dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
            a = torch.stack([kaiming_a((r, in_f), g) for g in gens] + [torch.zeros(r, in_f)])
            self.A.append(a.to(device=w.device, dtype=dtype).requires_grad_(True))
            self.B.append(torch.zeros(len(seeds) + 1, out_f, r, device=w.device, dtype=dtype, requires_grad=True))

    def train(self, trials: list[list[tuple[list[int], list[int]]]], seeds: list[int], pad_id: int,
              tokens_per_pass: int = 1024) -> list[list[float]]:
        """Adapter i <- full-batch AdamW on trials[i] from seed seeds[i]; returns each trial's loss per step.

        Each step's gradient accumulates over passes of length-sorted rows from any trials (little padding),
        at most `tokens_per_pass` padded tokens each (at least one row): exact, since the loss is a sum over
        rows of (row's summed cross-entropy) / (its trial's number of label tokens). Moderate passes are also
        faster on CPU than one huge batch: their activations stay in cache."""
        if len(trials) != len(seeds) or not trials or not all(trials):
            raise ValueError("need one seed per trial and at least one example per trial")
        device = next(self.model.parameters()).device
        self._init(seeds, device)
        examples = [(ex, i) for i, t in enumerate(trials) for ex in t]  # (example, its trial)
        passes = []
        for chunk in _passes([len(ex[0]) for ex, _ in examples], tokens_per_pass):
            ids, mask, pos, labels = lm_batch([examples[r][0] for r in chunk], range(len(chunk)), pad_id,
                                              self.spec.loss_on, device)
            passes.append((ids, mask, pos, labels, torch.tensor([examples[r][1] for r in chunk], device=device)))
        counts = torch.zeros(len(trials), device=device)  # label tokens per trial
        for *_, labels, trial in passes:
            counts.index_add_(0, trial, (labels[:, 1:] != -100).sum(1).to(counts.dtype))
        params = self.A + self.B
        # The zero slot stays zero: its gradient is exactly zero, and so is AdamW's update from it.
        opt = torch.optim.AdamW(params, lr=self.spec.lr, weight_decay=0.0)
        keep = takes_logits_to_keep(self.model)
        losses = []
        # The model stays in eval mode, as in LoraSession: base-model dropout would make trials irreproducible.
        try:
            for _ in range(self.spec.steps):
                opt.zero_grad(set_to_none=True)
                step = torch.zeros(len(trials), device=device)
                for ids, mask, pos, labels, trial in passes:
                    per_row = self._row_losses(ids, mask, pos, labels, trial, keep) / counts[trial]
                    per_row.sum().backward()
                    step.index_add_(0, trial, per_row.detach())
                opt.step()
                losses.append(step)
        finally:
            self._rows = None
            for p in params:
                p.requires_grad_(False)
        return torch.stack(losses, 1).tolist() if losses else [[] for _ in trials]

    def _row_losses(self, ids, mask, pos, labels, trial, keep) -> torch.Tensor:
        """Summed next-token cross-entropy of each row over its label tokens, row r through adapter trial[r];
        the LM head only at the positions where some row has a label (the only logits the loss reads)."""
        target = labels[:, 1:]
        cols = (target != -100).any(0).nonzero()[:, 0]
        self._rows = trial
        try:
            if keep:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                    logits_to_keep=cols).logits
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    use_cache=False).logits[:, cols]
        finally:
            self._rows = None
        target = target[:, cols]
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                               reduction="none")  # 0 where the target is ignored
        return ce.view(target.shape).sum(1)

    def capture(self, prompts: list[list[int]], adapters: list[int | None], sites: list[str], *, pad_id: int,
                batch_size: int = 16, last: bool = True, logits: bool = False) -> Cache:
        """`iclft.capture.capture` of `prompts`, prompt j run through adapter `adapters[j]` (None: the base
        model), all in shared batches.

        capture() chooses its own batch order, so each batch's rows are matched back to the prompts by their
        tokens (identical prompts in the order given: capture's length sort is stable)."""
        if len(prompts) != len(adapters):
            raise ValueError("need one adapter (or None) per prompt")
        n = len(self.A[0]) - 1 if self.A else 0  # trained adapters (the last slot is the zero one)
        if any(a is not None and not 0 <= a < n for a in adapters):
            raise ValueError(f"adapters must be None or in 0..{n - 1} (train first)")
        pending = collections.defaultdict(collections.deque)
        for p, a in zip(prompts, adapters, strict=True):
            pending[tuple(p)].append(-1 if a is None else a)

        def route(_mod, _args, kwargs):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
            rows = [pending[tuple(ids[n][mask[n]].tolist())].popleft() for n in range(len(ids))]
            self._rows = torch.tensor(rows, device=ids.device)

        pre = self.model.register_forward_pre_hook(route, with_kwargs=True)
        try:
            return capture(self.model, self.family, prompts, sites, pad_id=pad_id, batch_size=batch_size,
                           last=last, logits=logits)
        finally:
            pre.remove()
            self._rows = None


def _passes(lengths: list[int], tokens_per_pass: int) -> list[list[int]]:
    """Row indices sorted by length, cut into runs of at most tokens_per_pass padded tokens (>= 1 row each)."""
    out: list[list[int]] = []
    for r in sorted(range(len(lengths)), key=lambda r: lengths[r]):
        if not out or (len(out[-1]) + 1) * lengths[r] > tokens_per_pass:
            out.append([])
        out[-1].append(r)
    return out


__all__ = ["StackedLora"]

