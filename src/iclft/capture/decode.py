"""Next-token logits, greedy decoding and answer scoring for batches of prompts (token ids).

Batches are length-sorted and left-padded with position ids that continue each prompt's own positions; the
tokens every prompt of a batch starts with (e.g. the instruction) run once and come as a KV cache, so each
prompt sees exactly what it would alone (tests/test_speed_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from iclft.capture.prefix import cache_of, keep_last, prefix_cache
from iclft.prompts.batching import length_batches, pad_after_prefix, pad_left


def batch_inputs(model, seqs: list[list[int]], pad_id: int, device, cache: bool = False):
    """Forward-pass inputs for one batch of prompts. The tokens every prompt of the batch starts with (the
    instruction) run once and come as a KV cache; the rest is laid out [prefix | pad .. | rest of prompt r],
    the padding masked out and position ids continuing from the prefix, so each prompt sees exactly the
    positions it would alone. Without a shared prefix (or one prompt): plain left padding.
    Returns (kwargs, attention mask, position ids)."""
    n = min(len(q) for q in seqs)
    cut = 0
    if len(seqs) > 1:
        while cut < n - 1 and all(q[cut] == seqs[0][cut] for q in seqs):
            cut += 1
    if cut == 0:
        ids, mask, pos = pad_left(seqs, pad_id, device)
        return dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=cache), mask, pos
    ids, mask, pos = pad_after_prefix([q[cut:] for q in seqs], cut, pad_id, device)
    past = cache_of(model, prefix_cache(model, seqs[0][:cut]), len(seqs))
    return dict(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True), mask, pos


@torch.no_grad()
def last_logits(model, prompts: list[list[int]], pad_id: int, batch_size: int = 16) -> torch.Tensor:
    """(n, vocab) next-token logits after each prompt (length-sorted, left-padded batches; the prefix the
    prompts of a batch share is computed once)."""
    device = next(model.parameters()).device
    out = [None] * len(prompts)
    for idx in length_batches(prompts, batch_size):
        kwargs, _, _ = batch_inputs(model, [prompts[i] for i in idx], pad_id, device)
        logits = model(**kwargs, **keep_last(model)).logits[:, -1].float().cpu()
        for r, i in enumerate(idx):
            out[i] = logits[r]
    return torch.stack(out)


@torch.no_grad()
def greedy_decode(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, stop_ids: set[int],
                  batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations (without the stop token) of each prompt; batched with left padding, a KV cache
    and position ids that continue each prompt's own positions (the prefix the prompts of a batch share is
    computed once)."""
    device = next(model.parameters()).device
    result: list[list[int]] = [[] for _ in prompts]
    for idx in length_batches(prompts, batch_size):
        kwargs, mask, pos = batch_inputs(model, [prompts[i] for i in idx], pad_id, device, cache=True)
        out = model(**kwargs, **keep_last(model))
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        done = [False] * len(idx)
        for step in range(max_new_tokens):
            for r, tokid in enumerate(nxt.tolist()):
                if not done[r]:
                    if tokid in stop_ids:
                        done[r] = True
                    else:
                        result[idx[r]].append(tokid)
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=past,
                        use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
    return result


class Scorer:
    """Correctness of prompts for one task: label scoring (first-token argmax over the label words) for closed
    answer sets, else greedy decoding up to the separator, compared after `normalise`.

    builder: the task's `iclft.prompts.PromptBuilder` (its label token ids, tokenizer and task)."""

    def __init__(self, builder, pad_id: int, batch_size: int, max_new_tokens: int,
                 normalise: Callable[[str], str]):
        self.builder, self.pad_id, self.batch_size, self.normalise = builder, pad_id, batch_size, normalise
        tok = builder.tok
        self.task = builder.task
        sep = list(builder._enc(self.task.separator))[:1] + list(builder._enc("\n"))[:1]
        self.stop = set(sep) | ({tok.eos_token_id} if tok.eos_token_id is not None else set())
        longest = max((len(builder._enc(self.task.answer_prefix + e.label)) for e in self.task.train), default=1)
        self.max_new = max(max_new_tokens, longest + 1)

    def __call__(self, model, prompts: list[list[int]], golds: list[str]) -> list[bool]:
        if self.builder.label_token_ids is not None:
            logits = last_logits(model, prompts, self.pad_id, self.batch_size)
            pred = logits[:, self.builder.label_token_ids].argmax(-1).tolist()
            return [self.task.label_words[p] == g for p, g in zip(pred, golds, strict=True)]
        # the budget also covers this call's gold answers (misleading test answers can outgrow training ones)
        need = max((len(self.builder._enc(self.task.answer_prefix + g)) + 1 for g in golds), default=1)
        gens = greedy_decode(model, prompts, self.pad_id, max(self.max_new, need), self.stop, self.batch_size)
        texts = [self.builder.tok.decode(g, skip_special_tokens=True) for g in gens]
        return [self.normalise(t) == self.normalise(g) for t, g in zip(texts, golds, strict=True)]
