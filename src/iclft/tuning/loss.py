"""The causal-LM loss on demonstrations, shared by fine-tuning (`finetune`) and in-context tuning (`LoraSession`,
`StackedLora`): left-padded batches with labels where the loss is taken (`lm_batch`), the prefix every row of a
batch shares run once (`shared_prefix`, `prefix_lm_batch`), and the loss with the LM head only where a label is
predicted (`lm_loss`)."""

from __future__ import annotations

import torch

from iclft.capture.prefix import cache_of
from iclft.prompts.batching import pad_after_prefix, pad_left


def lm_loss(net, ids, mask, pos, labels, keep: bool = True, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not -100, the LM head applied only
    where some row of the batch has a label (`logits_to_keep` with those positions; `keep=False`: the
    full logits, then those positions). Equal to the cross-entropy of the full logits: the skipped
    positions carry no loss, so they add nothing to the loss or to any gradient (tied embeddings too).

    prefix: (1, P) tokens every row starts with (see `prefix_lm_batch`; `ids` etc. are then the rows after
    it): run once, with gradients, and its KV cache shared by all rows instead of being recomputed per row."""
    target = labels[:, 1:]
    cols = (target != -100).any(0).nonzero()[:, 0]  # positions t whose next token is a label in some row
    kw: dict = {"use_cache": False}
    if prefix is not None:
        out = net(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True,
                  **({"logits_to_keep": 1} if keep else {}))
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        kw = {"use_cache": True, "past_key_values": cache_of(net, kv, ids.shape[0])}  # rows: views of the prefix
    if keep:
        logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=cols, **kw).logits
    else:
        logits = net(input_ids=ids, attention_mask=mask, position_ids=pos, **kw).logits[:, cols]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             target[:, cols].reshape(-1))


def shared_prefix(examples, idx, loss_on: str) -> int:
    """How many leading tokens every example of the batch shares (e.g. the instruction) and no loss needs:
    the hidden state at position t predicts token t + 1, so the prefix ends before the position that
    predicts the first answer token. 0 for loss on all tokens or a single example."""
    if loss_on != "answer" or len(idx) < 2:
        return 0
    seqs = [examples[i][0] for i in idx]
    n = min(len(s) for s in seqs)
    p = 0
    while p < n and all(s[p] == seqs[0][p] for s in seqs):
        p += 1
    first_answer = min((m.index(1) if 1 in m else len(m)) for m in (examples[i][1] for i in idx))
    return max(0, min(p, first_answer - 1, n - 1))


def prefix_lm_batch(examples, idx, cut: int, pad_id, device):
    """`lm_batch` (loss on the answer tokens) for rows that share their first `cut` tokens: returns the
    (1, cut) prefix and the rows after it, laid out [prefix | pad .. pad | rest of row r] (the padding masked
    out, position ids continuing from the prefix), so each row sees exactly the positions it would alone."""
    seqs = [examples[i][0][cut:] for i in idx]
    ids, mask, pos = pad_after_prefix(seqs, cut, pad_id)
    width = ids.shape[1]
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for r, i in enumerate(idx):
        target[r, width - len(seqs[r]):] = torch.tensor(examples[i][1][cut:], dtype=torch.bool)
    labels = ids.masked_fill(~target, -100)
    prefix = torch.tensor([examples[idx[0]][0][:cut]], dtype=torch.long)
    return tuple(t.to(device) for t in (prefix, ids, mask, pos, labels))


def lm_batch(examples, idx, pad_id, loss_on, device):
    """Left-padded causal-LM batch of (ids, answer_mask) examples; labels are -100 where no loss is taken."""
    seqs = [examples[i][0] for i in idx]
    ids, mask, pos = pad_left(seqs, pad_id, device)
    target = torch.zeros_like(ids, dtype=torch.bool)
    width = ids.shape[1]
    for r, i in enumerate(idx):
        seq, ans = examples[i]
        # "all": every token but the first, which has nothing before it to be predicted from
        m = ans if loss_on == "answer" else [0] + [1] * (len(seq) - 1)
        target[r, width - len(seq):] = torch.tensor(m, dtype=torch.bool)
    labels = ids.masked_fill(~target, -100)
    return ids, mask, pos, labels


__all__ = ["lm_batch", "lm_loss", "prefix_lm_batch", "shared_prefix"]
