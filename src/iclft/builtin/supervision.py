"""Attention supervision used in the built-in model's pretraining (stages that set `aux`, `copy`, `label`).

Induction heads -- a previous-token head feeding a head that attends to the token after an earlier
occurrence of the current token (Olsson et al. 2022) -- are what lets a model copy from its context, and
they form only after a long loss plateau: the built-in model did not get past it in ~3.6k CPU steps, even
on copy-heavy data. So three heads are told what to attend to, with the cross-entropy of their attention
against a target set added to the LM loss, and two of them what to output:

  `aux`    PREV_HEAD attends to the previous token; INDUCTION_HEAD to the token after every earlier
           occurrence of the current token (`induction_targets`).
  `copy`   INDUCTION_HEAD's direct logits (its output times the unembedding) predict the next token where
           copying is right (`copy_aux_loss`): its OV learns to copy.
  `label`  before every answer, LABEL_HEAD attends to the earlier answers of the same episode that equal it
           (`label_targets`) -- the demonstrations the query shares a label with -- and its direct logits
           predict the answer. It cannot see the answer, so it has to match the query to demonstrations by
           content (sentiment, key, rule): this is the in-context classification circuit, taught directly.

Only where the heads attend and what one head writes is supervised; everything else, and what the rest
of the network does with the heads' outputs, is learned from the LM loss. The model stays a plain
LlamaForCausalLM: nothing here is needed at inference.
"""

from __future__ import annotations

import torch

PREV_HEAD = (0, 0)  # (layer, head) supervised to attend to the previous token
INDUCTION_HEAD = (1, 0)  # (layer, head) supervised to attend to the token after an earlier occurrence
LABEL_HEAD = (3, 0)  # (layer, head) supervised, before an answer, to attend to earlier answers that equal it
EPS = 1e-6


def head_attention(attn_module, hidden_states, position_embeddings, head: int) -> torch.Tensor:
    """Causal attention probabilities of one head of a Llama attention block: (B, T, T), float32."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    d = attn_module.head_dim
    sl = slice(head * d, (head + 1) * d)
    q = (hidden_states @ attn_module.q_proj.weight[sl].T).unsqueeze(1)
    k = (hidden_states @ attn_module.k_proj.weight[sl].T).unsqueeze(1)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = (q[:, 0].float() @ k[:, 0].float().transpose(-1, -2)) * attn_module.scaling
    t = scores.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=scores.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _next(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    out[:, :-1] = x[:, 1:]
    return out


def induction_targets(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool: position t should attend to j+1 for every j < t with ids[j] == ids[t] (and j+1 < t)."""
    t = ids.shape[1]
    eq = ids[:, :, None] == ids[:, None, :]
    earlier = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril(-2)  # j <= t - 2, so j + 1 < t
    eq = eq & earlier
    tgt = torch.zeros_like(eq)
    tgt[:, :, 1:] = eq[:, :, :-1]
    return tgt


def label_targets(ids: torch.Tensor, is_label: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(B, T, T) bool: where t + 1 is an answer token, t should attend to the earlier answer tokens of the same
    episode that equal it (episodes start at `<bos>`)."""
    t = ids.shape[1]
    ep = (ids == bos_id).cumsum(-1)
    earlier = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
    return (earlier & (ep[:, :, None] == ep[:, None, :]) & is_label[:, None, :]
            & (ids[:, None, :] == _next(ids)[:, :, None]) & _next(is_label)[:, :, None])


def target_mass_loss(probs: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Mean -log attention mass on the target positions, over the rows that have targets."""
    has = tgt.any(-1)
    if not has.any():
        return probs.sum() * 0
    return -((probs * tgt).sum(-1)[has] + EPS).log().mean()


def attention_aux_loss(probs_prev: torch.Tensor, probs_ind: torch.Tensor, ids: torch.Tensor):
    """(previous-token loss, induction loss): mean -log attention mass on the target positions."""
    prev = torch.diagonal(probs_prev, offset=-1, dim1=-2, dim2=-1)  # (B, T-1): p[t, t-1]
    return -(prev + EPS).log().mean(), target_mass_loss(probs_ind, induction_targets(ids))


def copy_aux_loss(head_out: torch.Tensor, unembed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-log p(next token) under a head's direct logits (its output times the unembedding), at positions whose
    next token is one the induction targets point at (where copying is right)."""
    nxt = _next(ids)
    # t qualifies when some target position j' holds ids[t + 1]
    ok = (induction_targets(ids) & (ids[:, None, :] == nxt[:, :, None])).any(-1)
    ok[:, -1] = False
    if not ok.any():
        return head_out.sum() * 0
    logits = head_out[ok].float() @ unembed.float().T
    return torch.nn.functional.cross_entropy(logits, nxt[ok])


class HeadSupervisor:
    """Hooks on the supervised heads of a Llama-family model (module paths from `iclft.models.families`);
    `attend()` inside the forward's autocast, `loss()` after."""

    def __init__(self, model, bos_id: int):
        from iclft.capture import sites as S
        from iclft.models.families import blocks_of, family_for, get_module

        self.model, self.bos_id = model, bos_id
        fam = family_for(model.config)
        blocks = blocks_of(model, fam)
        self.attn = {layer: get_module(blocks[layer], fam.attn) for layer in range(len(blocks))}
        self.o_proj = {layer: get_module(blocks[layer], fam.o_proj) for layer in range(len(blocks))}
        self.acts: dict = {}
        # the attention block's input with its kwargs (hidden states and RoPE), which no capture site holds
        for layer in {PREV_HEAD[0], INDUCTION_HEAD[0], LABEL_HEAD[0]}:
            self.attn[layer].register_forward_pre_hook(self._grab_input(layer), with_kwargs=True)
        for name, (layer, _) in (("ind_out", INDUCTION_HEAD), ("label_out", LABEL_HEAD)):
            S.hook(model, fam, layer, S.SITES["attn.z"], self._grab_output(name), blocks)
        self.probs: dict = {}
        self.last: dict = {}  # the latest value of each part, for the progress bar

    def _grab_input(self, layer):
        def pre(_mod, args, kwargs):
            self.acts[layer] = (kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"])
        return pre

    def _grab_output(self, name):
        def keep(t):
            self.acts[name] = t
        return keep

    def _attn(self, spec):
        layer, head = spec
        return head_attention(self.attn[layer], *self.acts[layer], head)

    def _head_out(self, name, spec):
        o_proj = self.o_proj[spec[0]]
        d = self.attn[spec[0]].head_dim
        sl = slice(spec[1] * d, (spec[1] + 1) * d)
        return self.acts[name][..., sl].float() @ o_proj.weight[:, sl].T

    def attend(self, stage: dict) -> None:
        """Attention probabilities of the heads the stage supervises (call inside the forward's autocast)."""
        self.probs = {}
        if stage.get("aux"):
            self.probs["prev"], self.probs["ind"] = self._attn(PREV_HEAD), self._attn(INDUCTION_HEAD)
        if stage.get("label"):
            self.probs["label"] = self._attn(LABEL_HEAD)

    def loss(self, loss: torch.Tensor, ids: torch.Tensor, is_label: torch.Tensor, stage: dict) -> torch.Tensor:
        """`loss` plus the stage's weighted supervision terms (added one by one, in a fixed order)."""
        unembed = self.model.get_input_embeddings().weight
        if stage.get("aux"):
            lp, li = attention_aux_loss(self.probs["prev"], self.probs["ind"], ids)
            loss = loss + stage["aux"] * (lp + li)
            self.last.update(prev=float(lp.detach()), ind=float(li.detach()))
        if stage.get("copy"):
            lc = copy_aux_loss(self._head_out("ind_out", INDUCTION_HEAD), unembed, ids)
            loss = loss + stage["copy"] * lc
            self.last["copy"] = float(lc.detach())
        if stage.get("label"):
            tgt = label_targets(ids, is_label, self.bos_id)
            la = target_mass_loss(self.probs["label"], tgt)
            rows = tgt.any(-1)  # never the last position (its next token is not an answer)
            out = self._head_out("label_out", LABEL_HEAD)
            lo = torch.nn.functional.cross_entropy(out[rows] @ unembed.T, ids[:, 1:][rows[:, :-1]]) \
                if rows.any() else out.sum() * 0
            loss = loss + stage["label"] * (la + lo)
            self.last["label"] = float(la.detach())
        return loss
