"""Implicit-pattern generators: labels agree with independent oracles written here, shortcuts hold on
clean items and fail on misleading ones, and the splits are deterministic and disjoint."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import re
from collections import Counter
from fractions import Fraction

import pytest

from iclft.tasks.base import Example, Task
from iclft.tasks.implicit import (
    DEFAULT_RULE,
    FAMILIES,
    HELDOUT_RULES,
    RULES,
    TRAIN_RULES,
    evaluate,
    generate,
    implicit_task,
    normalise_answer,
    shortcut_answer,
)

N = 500  # items per family and variant for the default rule
N_OTHER = 100  # items per family, variant and non-default rule
VARIANTS = ("clean", "misleading")
# The pretraining tokenizer's view: words, single digits, single punctuation marks, newlines.
TOKEN = re.compile(r"\n|\d|[A-Za-z_]+|[^\sA-Za-z0-9_]")


@functools.cache
def items(family: str, variant: str, rule: str | None = None, n: int = N, seed: int = 0) -> tuple[Example, ...]:
    return tuple(generate(family, n, seed, variant, rule))


def all_items(family: str, variant: str):
    """(rule, example) for the default rule (N items) and every other rule (N_OTHER items)."""
    for rule in RULES[family]:
        n = N if rule == DEFAULT_RULE[family] else N_OTHER
        for ex in items(family, variant, rule, n):
            yield rule, ex


# ------------------------------------------------------------------ independent oracles (test-side)


def numeric(value: Fraction | int, rule: str) -> str:
    value = Fraction(value)
    assert value.denominator == 1, value
    v = int(value)
    return {"value": str(v), "negate": str(-v), "last_digit": str(abs(v) % 10)}[rule]


def oracle_expression(text: str) -> int:
    assert text.endswith("=") and set(text) <= set("0123456789+-*()=")
    return eval(text[:-1])  # the charset check above makes plain eval harmless here


def oracle_code(text: str) -> int:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(text, {})  # real print, real builtins: a different route from the module's sandbox
    return int(buf.getvalue())


def oracle_boolean(text: str) -> bool:
    head, body = text.split(";")
    env = {name: value == "True" for name, value in re.findall(r"(\w+)=(True|False)", head)}
    assert set(re.findall(r"\w+", body)) <= set(env) | {"and", "or", "not", "True", "False"}
    return eval(body, {}, env)


def oracle_relation(text: str, rule: str) -> bool:
    edges = re.findall(r"(\w+) is connected to (\w+)\.", text)
    (p, q), = re.findall(r"Is (\w+) connected to (\w+)\?$", text)
    # Transitive closure by fixed-point iteration (not BFS).
    rel = set()
    for u, v in edges:
        if rule in ("undirected", "forward"):
            rel.add((u, v))
        if rule in ("undirected", "backward"):
            rel.add((v, u))
    while True:
        more = {(a, d) for (a, b) in rel for (c, d) in rel if b == c} - rel
        if not more:
            return (p, q) in rel
        rel |= more


def det(m: list[list[Fraction]]) -> Fraction:
    n = len(m)
    total = Fraction(0)
    for perm in itertools.permutations(range(n)):
        sign = (-1) ** sum(1 for i in range(n) for j in range(i + 1, n) if perm[i] > perm[j])
        prod = Fraction(sign)
        for i in range(n):
            prod *= m[i][perm[i]]
        total += prod
    return total


def linear(side: str) -> dict[str, int]:
    out = {}
    for sign, coef, var in re.findall(r"([+-]?)(\d*)([a-z])", side):
        out[var] = (-1 if sign == "-" else 1) * (int(coef) if coef else 1)
    return out


def oracle_algebra(text: str) -> Fraction:
    system, query = text.split(". ")
    eqs = [(linear(lhs), int(rhs)) for lhs, rhs in (e.split("=") for e in system.split(", "))]
    names = sorted({v for c, _ in eqs for v in c})
    a = [[Fraction(c.get(v, 0)) for v in names] for c, _ in eqs]
    b = [Fraction(r) for _, r in eqs]
    d = det(a)
    assert d != 0
    # Cramer's rule.
    sol = {v: det([row[:j] + [b[i]] + row[j + 1 :] for i, row in enumerate(a)]) / d for j, v in enumerate(names)}
    q = linear(query.removesuffix("=?"))
    return sum((Fraction(c) * sol[v] for v, c in q.items()), Fraction(0))


def oracle_parity(text: str, rule: str) -> str:
    count = text.count("1" if rule.startswith("ones") else "0") % 2
    return str(count) if rule.endswith("digit") else ("odd" if count else "even")


def oracle(family: str, text: str, rule: str) -> str:
    if family == "expression":
        return numeric(oracle_expression(text), rule)
    if family == "code":
        return numeric(oracle_code(text), rule)
    if family == "algebra":
        return numeric(oracle_algebra(text), rule)
    if family == "boolean":
        value = oracle_boolean(text) != rule.startswith("negate")
        return ("yes" if value else "no") if rule.endswith("yes_no") else str(value)
    if family == "relation":
        return "yes" if oracle_relation(text, rule) else "no"
    return oracle_parity(text, rule)


# Surface forms shared by both variants: misleading items must look like clean ones.
SURFACE = {
    "expression": re.compile(r"[-+*()0-9]+="),
    "code": re.compile(r"(def [a-z]\(x\): return [-+*x0-9]+\n){2}[a-z] = [a-z](\(\d\))?\nprint\([a-z]\(\d\)\)"),
    "boolean": re.compile(r"([a-z]=(True|False), )+[a-z]=(True|False); [A-Za-z()\s]+"),
    "relation": re.compile(r"([A-Z] is connected to [A-Z]\. )+Is [A-Z] connected to [A-Z]\?"),
    "algebra": re.compile(r"[-+0-9a-z]+=-?\d+(, [-+0-9a-z]+=-?\d+)+\. [-+0-9a-z]+=\?"),
    "parity": re.compile(r"[01]+ \| [01]{2}(,[01]{2})*"),
}


# ------------------------------------------------------------------ tests


def test_rule_tables():
    assert FAMILIES == ("expression", "code", "boolean", "relation", "algebra", "parity")
    for family in FAMILIES:
        assert HELDOUT_RULES[family], family
        assert set(TRAIN_RULES[family]) | set(HELDOUT_RULES[family]) == set(RULES[family])
        assert not set(TRAIN_RULES[family]) & set(HELDOUT_RULES[family])
        assert len(TRAIN_RULES[family]) >= 2  # the rule must vary across pretraining sequences
        assert DEFAULT_RULE[family] in RULES[family]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_labels_match_independent_oracle(family, variant):
    count = 0
    for rule, ex in all_items(family, variant):
        assert ex.label == oracle(family, ex.input, rule), (rule, ex)
        assert ex.label == evaluate(family, ex.input, rule), (rule, ex)
        count += 1
    assert count >= N


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_shortcut_holds_on_clean_fails_on_misleading(family, variant):
    for rule, ex in all_items(family, variant):
        shortcut = shortcut_answer(family, ex.input, rule)
        assert ex.meta == {"family": family, "variant": variant, "rule": rule, "shortcut": shortcut}
        if variant == "clean":
            assert shortcut == ex.label, (rule, ex)
        else:
            assert shortcut != ex.label, (rule, ex)


@pytest.mark.parametrize("family", FAMILIES)
def test_format_short_ascii_and_alike_across_variants(family):
    for variant in VARIANTS:
        for _, ex in all_items(family, variant):
            assert ex.input.isascii() and ex.label.isascii()
            assert len(TOKEN.findall(ex.input)) <= 60, ex.input
            assert len(TOKEN.findall(ex.label)) <= 4, ex.label  # e.g. "-", "1", "0", "8"
            assert SURFACE[family].fullmatch(ex.input), (variant, ex.input)
            assert normalise_answer(ex.label) == normalise_answer(" " + ex.label + ". ")
    lengths = {v: sum(len(TOKEN.findall(ex.input)) for ex in items(family, v)) / N for v in VARIANTS}
    assert abs(lengths["clean"] - lengths["misleading"]) <= 3, lengths


@pytest.mark.parametrize("family", ["boolean", "relation", "parity"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_label_sets_are_balanced(family, variant):
    for rule in RULES[family]:
        n = N if rule == DEFAULT_RULE[family] else N_OTHER
        counts = Counter(ex.label for ex in items(family, variant, rule, n))
        assert len(counts) == 2, counts
        assert all(0.35 <= c / n <= 0.65 for c in counts.values()), (rule, counts)


@pytest.mark.parametrize("family", FAMILIES)
def test_rule_changes_the_answer(family):
    inputs = [ex.input for ex in items(family, "clean")]
    answers = {rule: [evaluate(family, x, rule) for x in inputs] for rule in RULES[family]}
    for r1, r2 in itertools.combinations(RULES[family], 2):
        differ = sum(a != b for a, b in zip(answers[r1], answers[r2], strict=True)) / len(inputs)
        assert differ >= 0.1, (r1, r2, differ)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_and_seed_sensitive(family):
    a = generate(family, 50, seed=3, variant="misleading")
    b = generate(family, 50, seed=3, variant="misleading")
    c = generate(family, 50, seed=4, variant="misleading")
    assert [(x.input, x.label, x.meta) for x in a] == [(x.input, x.label, x.meta) for x in b]
    assert len({x.input for x in a} & {x.input for x in c}) < 10
    assert len({x.input for x in a}) == 50  # distinct within a call


@pytest.mark.parametrize("family", FAMILIES)
def test_implicit_task_splits(family):
    task = implicit_task(family, seed=1, n_train=300, n_test=100, test_variant="misleading")
    assert isinstance(task, Task) and task.name == f"implicit/{family}"
    assert len(task.train) == 300 and len(task.test) == 100
    assert not {ex.input for ex in task.train} & {ex.input for ex in task.test}
    assert all(ex.meta["variant"] == "clean" for ex in task.train)
    assert all(ex.meta["variant"] == "misleading" for ex in task.test)
    assert all(ex.meta["rule"] == DEFAULT_RULE[family] for ex in task.train + task.test)
    assert task.instruction.endswith(".") and "\n" not in task.instruction
    ex = task.test[0]
    assert task.demo_text(ex) == f"Q: {ex.input}\nA: {ex.label}"
    if task.label_words is not None:
        assert task.answer_type == "label"
        assert {e.label for e in task.train + task.test} <= set(task.label_words)
    else:
        assert task.answer_type == "text"
    again = implicit_task(family, seed=1, n_train=300, n_test=100, test_variant="misleading")
    assert [e.input for e in again.train] == [e.input for e in task.train]


def test_implicit_task_no_overlap_in_a_small_space():
    # 2-3 head bits and two pairs: 48 clean inputs in all, so train must route around the test inputs.
    task = implicit_task("parity", seed=0, n_train=28, n_test=20, head_len=3, n_pairs=2)
    train, test = {e.input for e in task.train}, {e.input for e in task.test}
    assert len(train) == 28 and len(test) == 20 and not train & test
    with pytest.raises(RuntimeError, match="distinct"):
        generate("parity", 49, 0, head_len=3, n_pairs=2)


def test_handmade_items():
    yin = "(1+6)+(-3+3)*(-1-3+9-5)="
    assert evaluate("expression", yin, "value") == "7" == shortcut_answer("expression", yin, "value")
    off = "(1+6)+(-3+4)*(2+3)="
    assert evaluate("expression", off, "value") == "12"
    assert shortcut_answer("expression", off, "value") == "7"
    assert evaluate("expression", off, "negate") == "-12"
    assert evaluate("expression", off, "last_digit") == "2"

    clean = "def f(x): return x+4\ndef g(x): return x*3\nh = g\nprint(f(5))"
    mislead = clean.replace("h = g", "f = g")
    assert evaluate("code", clean, "value") == "9" == shortcut_answer("code", clean, "value")
    assert evaluate("code", mislead, "value") == "15"
    assert shortcut_answer("code", mislead, "value") == "9"

    clean = "a=True, b=False; a and (b or True)"
    mislead = "a=True, b=False; a and (b or False)"
    assert evaluate("boolean", clean, "value") == "True" == shortcut_answer("boolean", clean, "value")
    assert evaluate("boolean", mislead, "value") == "False"
    assert shortcut_answer("boolean", mislead, "value") == "True"
    assert evaluate("boolean", mislead, "negate_yes_no") == "yes"

    text = "B is connected to C. D is connected to F. C is connected to G. Is B connected to G?"
    assert evaluate("relation", text, "undirected") == "yes"
    assert evaluate("relation", text, "forward") == "yes"
    assert evaluate("relation", text, "backward") == "no"
    assert shortcut_answer("relation", text, "undirected") == "no"  # B and G are two statements apart
    text = "B is connected to C. D is connected to F. Is C connected to D?"
    assert evaluate("relation", text, "undirected") == "no"
    assert shortcut_answer("relation", text, "undirected") == "yes"  # adjacent statements

    clean = "x+2y=5, 3x-y=1. 2x+4y=?"
    mislead = "x+2y=5, 3x-y=1. 2x+5y=?"  # x=1, y=2
    assert evaluate("algebra", clean, "value") == "10" == shortcut_answer("algebra", clean, "value")
    assert evaluate("algebra", mislead, "value") == "12"
    assert shortcut_answer("algebra", mislead, "value") == "10"

    assert evaluate("parity", "1011 | 11,00", "ones_word") == "odd"
    assert evaluate("parity", "1011 | 11,00", "zeros_digit") == "1"
    assert evaluate("parity", "1011 | 10,00", "ones_word") == "even"
    assert shortcut_answer("parity", "1011 | 10,00", "ones_word") == "odd"


def test_evaluators_reject_unsafe_or_malformed_input():
    for family, text in [
        ("expression", "__import__('os').system('true')="),
        ("expression", "2**100="),
        ("code", "import os\nprint(1)"),
        ("code", "def f(x): return x.real\nprint(f(1))"),
        ("boolean", "a=True; a.__class__"),
        ("relation", "B likes C. Is B connected to C?"),
        ("algebra", "x+y=2, 2x+2y=4. x=?"),  # singular
        ("parity", "10x1 | 11"),
    ]:
        with pytest.raises(ValueError):
            evaluate(family, text, RULES[family][0])


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown implicit-pattern family"):
        generate("poetry", 3, 0)
    with pytest.raises(ValueError, match="unknown implicit-pattern family"):
        implicit_task("poetry")
    with pytest.raises(ValueError, match="unknown implicit-pattern family"):
        evaluate("poetry", "1=")
    with pytest.raises(ValueError, match="unknown variant"):
        generate("parity", 3, 0, variant="tricky")
    with pytest.raises(ValueError, match="unknown rule"):
        generate("parity", 3, 0, rule="negate")
    with pytest.raises(ValueError, match="unknown size"):
        generate("parity", 3, 0, chain_length=4)
    with pytest.raises(ValueError, match="head_len"):
        generate("parity", 3, 0, head_len=0)


def test_sizes_are_honoured():
    for ex in generate("parity", 20, 0, head_len=12, n_pairs=6):
        head, tail = ex.input.split(" | ")
        assert len(head) in (11, 12) and len(tail.split(",")) == 6
    for ex in generate("relation", 20, 0, "misleading", "undirected", n_edges=7, n_chains=3):
        assert ex.input.count("is connected to") == 7
    for ex in generate("algebra", 20, 0, "misleading", "value", n_vars=3):
        assert ex.input.count("=") == 4 and "z" in ex.input
        assert ex.label == numeric(oracle_algebra(ex.input), "value")
    for ex in generate("expression", 20, 0, "clean", "value", factor_terms=6):
        groups = re.findall(r"\(([^()]*)\)", ex.input)
        assert sorted(len(re.findall(r"\d+", g)) for g in groups) == [2, 2, 6]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", "7"),
        (" - 7 ", "-7"),
        ("1 2", "12"),
        ("- 1 2 .", "-12"),
        ("+5", "5"),
        ("-0", "0"),
        ("True", "true"),
        ("TRUE.", "true"),
        (" false ", "false"),
        ("Yes.", "yes"),
        ("odd", "odd"),
        ("  even \n", "even"),
        ("3 / 4", "3/4"),
        ("a  b", "a b"),
    ],
)
def test_normalise_answer(raw, expected):
    assert normalise_answer(raw) == expected


def test_normalise_answer_keeps_distinct_answers_distinct():
    assert normalise_answer("12") != normalise_answer("-12")
    assert normalise_answer("True") != normalise_answer("False")
    assert normalise_answer("yes") != normalise_answer("no")
