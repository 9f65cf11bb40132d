"""Left padding and length-sorted batches of token-id prompts, shared by capture, tuning and circuits.

Prompts of a batch are left-padded so that the last column is every prompt's last token, with position
ids taken from the mask, so a padded prompt sees exactly the positions it would alone. With a shared
prefix (run once, given as a KV cache) the padding goes *between* prefix and suffix:
[prefix | pad .. pad | suffix], position ids continuing from the prefix.
"""

from __future__ import annotations

import torch


def pad_after_prefix(seqs: list[list[int]], n_prefix: int, pad_id: int, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, pos) for suffixes `seqs` after a common prefix of `n_prefix` tokens: ids and pos are
    (b, width) for the suffixes only, the attention mask (b, n_prefix + width) covers prefix and suffixes."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    smask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        smask[i, width - len(s):] = 1
    pos = n_prefix + (smask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((len(seqs), n_prefix), dtype=torch.long), smask], dim=1) if n_prefix else smask
    return (ids, mask, pos) if device is None else (ids.to(device), mask.to(device), pos.to(device))


def pad_left(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, mask, pos) of left-padded prompts, each (b, width)."""
    return pad_after_prefix(seqs, 0, pad_id, device)


def length_batches(seqs: list, batch_size: int) -> list[list[int]]:
    """Indices of `seqs` sorted by length (stable), in chunks of `batch_size`: less padding per batch."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
