"""Clean ↔ misleading minimal pairs of implicit-pattern items, tokenised for patching.

The generators draw clean and misleading items independently, so a pair is built from a misleading item x'
by the smallest edit that makes it clean: one token (a digit, a name, a boolean literal or operator)
replaced so that the edited item x is clean (its true answer equals its shortcut answer) AND its answer is
x''s shortcut answer. Then x and x' differ in one token, the clean run answers what the shortcut says and
the corrupted run must answer the true value: LD = logit[true answer of x'] − logit[shortcut answer of x'],
read at the first answer token where the two answers differ (their shared prefix, e.g. "-" of "-13" vs
"-10", is appended to both prompts). Labels always come from `evaluate`, never from the edit.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from iclft.tasks.base import Example
from iclft.tasks.implicit import evaluate, shortcut_answer

_TOKEN = re.compile(r"\d|[A-Za-z_]+|[^\sA-Za-z0-9_]")
_SWAPS = ({"True", "False"}, {"and", "or"})  # literals and operators swap within their group


def clean_counterpart(family: str, item: Example, rule: str) -> Example | None:
    """The first one-token edit of misleading `item` that is clean and answers item's shortcut, or None."""
    text = item.input
    target = shortcut_answer(family, text, rule)
    spans = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    words = sorted({t for _, _, t in spans if t[0].isalpha() or t[0] == "_"} - set().union(*_SWAPS))
    for start, end, tok in spans:
        group = next((g for g in _SWAPS if tok in g), None)
        if tok.isdigit():
            options = [str(d) for d in range(10)]
        elif group is not None:
            options = sorted(group)
        elif tok[0].isalpha() or tok[0] == "_":  # a name: another name of the same shape from the item
            options = [w for w in words if len(w) == len(tok) and w[0].isupper() == tok[0].isupper()]
        else:
            continue
        for rep in options:
            if rep == tok:
                continue
            new = text[:start] + rep + text[end:]
            try:
                label, short = evaluate(family, new, rule), shortcut_answer(family, new, rule)
            except Exception:  # noqa: BLE001 - an edit that breaks the item is simply not a candidate
                continue
            if label == short == target:
                meta = {**item.meta, "variant": "clean", "shortcut": short, "edited_from": text}
                return Example(input=new, label=label, meta=meta)
    return None


def build_pairs(
    builder,
    family: str,
    rule: str,
    items: list[Example],
    n_pairs: int,
    demos_for: Callable[[int], list[Example]] | None = None,
    instruction: bool = True,
) -> list[dict]:
    """Up to n_pairs pairs from misleading `items`: dicts with the two examples, and `ids(demos)` ready
    for `make_pairs` as (clean_ids, corrupt_ids, right_token, wrong_token).

    Items whose counterpart tokenises to a different length, or whose true and shortcut answers never
    differ token-wise, are skipped.
    """
    out = []
    for item in items:
        if len(out) >= n_pairs:
            break
        clean = clean_counterpart(family, item, rule)
        if clean is None:
            continue
        right = list(builder._enc(builder.task.answer_prefix + item.label))
        wrong = list(builder._enc(builder.task.answer_prefix + item.meta["shortcut"]))
        i = next((j for j, (a, b) in enumerate(zip(right, wrong, strict=False)) if a != b), None)
        if i is None:
            continue
        c = builder.build(clean, [], instruction=instruction).ids
        x = builder.build(item, [], instruction=instruction).ids
        if len(c) != len(x):
            continue
        out.append({"clean": clean, "corrupt": item, "prefix": right[:i], "right": right[i], "wrong": wrong[i]})
    return out


def pair_ids(builder, pair: dict, demos: list[Example] = (), instruction: bool = True):
    """(clean_ids, corrupt_ids, right, wrong) of one pair, with `demos` prepended to both prompts."""
    c = builder.build(pair["clean"], list(demos), instruction=instruction).ids + pair["prefix"]
    x = builder.build(pair["corrupt"], list(demos), instruction=instruction).ids + pair["prefix"]
    return c, x, pair["right"], pair["wrong"]


__all__ = ["build_pairs", "clean_counterpart", "pair_ids"]
