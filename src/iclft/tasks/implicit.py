"""Implicit-pattern tasks (after Yin et al. 2024, arXiv 2410.04691).

Six synthetic families. Every item has a *shortcut*: a cheap reading of its surface that gives the
right answer on the **clean** variant. The **misleading** variant looks the same (often it differs
by one token) but the shortcut's answer is wrong by construction.

| family     | clean (shortcut holds)                      | misleading (shortcut fails)                  |
|------------|---------------------------------------------|----------------------------------------------|
| expression | `(1+6)+(-3+3)*(-1-3+9-5)=`: a factor is 0,  | the zero-looking factor is `(-3+4)`; the     |
|            | shortcut = drop every product term          | product must be computed                     |
| code       | two one-line functions, one dead (aliased   | `f = g`: the dead-looking function replaces  |
|            | `h = g`, called with its result unused, or  | the printed one; shortcut = run only the     |
|            | `g = f`); shortcut = run only the printed   | printed name's `def`                         |
|            | name's `def`                                |                                              |
| boolean    | `A and (B or True)` / `A or (B and False)`: | `A and (B or False)` / `A or (B and True)`:  |
|            | shortcut = drop a bracket holding a literal | the bracket equals B and decides the answer  |
| relation   | query pair mentioned in the same or         | connected pairs far apart in the text, and   |
|            | adjacent statements iff connected;          | unconnected pairs side by side (distractor   |
|            | shortcut = that proximity                   | edges, or a wrong direction)                 |
| algebra    | the query is k times one equation:          | one query coefficient is off by one, so the  |
|            | shortcut = k times its right-hand side      | system must really be solved                 |
| parity     | head bits, then pairs `11`/`00` (even);     | one pair is `10`/`01`; shortcut = parity of  |
|            | shortcut = parity of the head only          | the head, now wrong                          |

Labels always come from an independent evaluator run on the item's text (`evaluate`): a
whitelisted-AST `eval` (expression, boolean), `exec` of the program in an empty namespace with
`print` captured (code), BFS over the parsed statements (relation), exact Gaussian elimination over
fractions (algebra), counting characters (parity). The generators only propose drafts; a draft is
kept when its evaluated answer agrees (clean) or disagrees (misleading) with `shortcut_answer`.

Rules. Pretraining shows few-shot episodes whose rule varies across sequences, so the rule can only
be inferred from the demonstrations. A rule changes the answer (or its surface form) for the same
input: numeric families answer the value, its negation or its last digit; boolean answers the value
or its negation, as True/False or yes/no; relation reads "X is connected to Y" as undirected, as
X->Y or as Y->X; parity counts ones or zeros, answering even/odd or 0/1. One rule per family is kept
out of pretraining (`HELDOUT_RULES`); each is familiar in parts from other families or rules (e.g.
`negate` is trained on code, held out on expression and algebra) so it can be induced in context.
`DEFAULT_RULE` -- the rule the implicit-patterns study uses -- is the held-out rule: zero-shot is
then a real baseline, and both ICL and fine-tuning must learn something absent from pretraining.
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections import deque
from collections.abc import Callable
from fractions import Fraction

from iclft.tasks.base import Example, Task
from iclft.tasks.config import TaskConfig, builtin_config

FAMILIES: tuple[str, ...] = ("expression", "code", "boolean", "relation", "algebra", "parity")
VARIANTS: tuple[str, ...] = ("clean", "misleading")

_NUMERIC_RULES = ("value", "negate", "last_digit")
RULES: dict[str, tuple[str, ...]] = {
    "expression": _NUMERIC_RULES,
    "code": _NUMERIC_RULES,
    "boolean": ("value", "negate", "yes_no", "negate_yes_no"),
    "relation": ("undirected", "forward", "backward"),
    "algebra": _NUMERIC_RULES,
    "parity": ("ones_word", "ones_digit", "zeros_word", "zeros_digit"),
}
HELDOUT_RULES: dict[str, tuple[str, ...]] = {
    "expression": ("negate",),
    "code": ("last_digit",),
    "boolean": ("negate_yes_no",),
    "relation": ("backward",),
    "algebra": ("negate",),
    "parity": ("zeros_digit",),
}
TRAIN_RULES: dict[str, tuple[str, ...]] = {
    f: tuple(r for r in RULES[f] if r not in HELDOUT_RULES[f]) for f in FAMILIES
}
DEFAULT_RULE: dict[str, str] = {f: HELDOUT_RULES[f][0] for f in FAMILIES}

# Size / difficulty knobs per family and their defaults (each item stays <= ~50 tokens).
SIZE_DEFAULTS: dict[str, dict[str, int]] = {
    "expression": {"first_terms": 2, "zero_terms": 2, "factor_terms": 4, "max_value": 9},
    "code": {"max_ops": 2, "max_value": 9},
    "boolean": {"n_vars": 3, "depth": 1},
    "relation": {"n_edges": 5, "n_chains": 2},
    "algebra": {"n_vars": 2, "max_coef": 5, "max_value": 5, "max_mult": 3},
    "parity": {"head_len": 8, "n_pairs": 4},
}
# The named small size (operands in [-3, 3], one operation, two variables, three edges, nine bits), for models
# of the built-in model's scale; still enough distinct items for N = 64 plus the test items of every variant.
# The implicit study's `size: small` uses it (default: SIZE_DEFAULTS).
SIZE_SMALL: dict[str, dict[str, int]] = {
    "expression": {"first_terms": 1, "zero_terms": 2, "factor_terms": 1, "max_value": 3},
    "code": {"max_ops": 1, "max_value": 3},
    "boolean": {"n_vars": 2, "depth": 0},
    "relation": {"n_edges": 3, "n_chains": 2},
    "algebra": {"n_vars": 2, "max_coef": 2, "max_value": 2, "max_mult": 2},
    "parity": {"head_len": 5, "n_pairs": 2},
}
SIZES: dict[str, dict[str, dict[str, int]]] = {"paper": SIZE_DEFAULTS, "small": SIZE_SMALL}
_SIZE_MIN: dict[str, dict[str, int]] = {
    "expression": {"first_terms": 1, "zero_terms": 2, "factor_terms": 1, "max_value": 2},
    "code": {"max_ops": 1, "max_value": 2},
    "boolean": {"n_vars": 2, "depth": 0},
    "relation": {"n_edges": 3, "n_chains": 2},
    "algebra": {"n_vars": 2, "max_coef": 2, "max_value": 1, "max_mult": 2},
    "parity": {"head_len": 1, "n_pairs": 1},
}

# ------------------------------------------------------------------------------------ checks


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown implicit-pattern family {family!r}; expected one of {FAMILIES}")
    return family


def _check_rule(family: str, rule: str | None) -> str:
    if rule is None:
        return DEFAULT_RULE[family]
    if rule not in RULES[family]:
        raise ValueError(f"unknown rule {rule!r} for family {family!r}; expected one of {RULES[family]}")
    return rule


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return variant


def _check_sizes(family: str, size: dict) -> dict[str, int]:
    unknown = set(size) - set(SIZE_DEFAULTS[family])
    if unknown:
        raise ValueError(
            f"unknown size argument(s) {sorted(unknown)} for family {family!r}; "
            f"expected some of {sorted(SIZE_DEFAULTS[family])}"
        )
    params = {**SIZE_DEFAULTS[family], **size}
    for key, value in params.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < _SIZE_MIN[family][key]:
            raise ValueError(f"{family}: {key} must be an int >= {_SIZE_MIN[family][key]}, got {value!r}")
    if family == "relation" and params["n_chains"] > params["n_edges"]:
        raise ValueError("relation: n_chains must be <= n_edges")
    if family == "relation" and params["n_edges"] + params["n_chains"] > len(_ENTITIES):
        raise ValueError(f"relation: n_edges + n_chains must be <= {len(_ENTITIES)}")
    if family == "boolean" and params["n_vars"] > len(_BOOL_VARS):
        raise ValueError(f"boolean: n_vars must be <= {len(_BOOL_VARS)}")
    if family == "algebra" and params["n_vars"] > len(_ALG_VARS):
        raise ValueError(f"algebra: n_vars must be <= {len(_ALG_VARS)}")
    return params


def _whitelist(tree: ast.AST, allowed: tuple[type, ...], const_type: type, text: str) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, allowed) or (isinstance(node, ast.Constant) and type(node.value) is not const_type):
            raise ValueError(f"disallowed syntax {type(node).__name__} in {text!r}")


def _parse(source: str, mode: str, text: str) -> ast.AST:
    try:
        return ast.parse(source, mode=mode)
    except SyntaxError as e:
        raise ValueError(f"cannot parse {text!r}: {e.msg}") from None


def _fmt_number(value: int | Fraction, rule: str) -> str:
    """Apply a numeric rule (value / negate / last_digit) and print the result."""
    v = Fraction(value)
    if rule == "negate":
        v = -v
    elif rule == "last_digit":
        if v.denominator != 1:
            raise ValueError(f"last_digit of a non-integer {v}")
        return str(abs(v.numerator) % 10)
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _signed_join(values: list[int]) -> str:
    """[-3, 3] -> '-3+3'."""
    out = str(values[0])
    for v in values[1:]:
        out += f"+{v}" if v >= 0 else f"-{-v}"
    return out


# ------------------------------------------------------------------------------------ expression

_ARITH_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.USub, ast.UAdd)


def _arith_tree(text: str) -> ast.Expression:
    body = text.strip()
    body = body[:-1] if body.endswith("=") else body
    tree = _parse(body, "eval", text)
    _whitelist(tree, _ARITH_NODES, int, text)
    return tree  # type: ignore[return-value]


def _eval_expression(text: str) -> int:
    # The AST is whitelisted (integer literals, + - *), so eval without builtins is safe.
    return eval(compile(_arith_tree(text), "<implicit>", "eval"), {"__builtins__": {}}, {})


def _arith_without_products(node: ast.AST) -> int:
    # The shortcut reader: "that product vanishes", applied to every product in sight.
    if isinstance(node, ast.Expression):
        return _arith_without_products(node.body)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        v = _arith_without_products(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    assert isinstance(node, ast.BinOp)
    if isinstance(node.op, ast.Mult):
        return 0
    left, right = _arith_without_products(node.left), _arith_without_products(node.right)
    return left + right if isinstance(node.op, ast.Add) else left - right


def _shortcut_expression(text: str) -> int:
    return _arith_without_products(_arith_tree(text))


def _terms(rng: random.Random, n: int, max_value: int) -> list[int]:
    return [rng.randint(1, max_value) * rng.choice((1, -1)) for _ in range(n)]


def _draft_expression(
    rng: random.Random, variant: str, first_terms: int, zero_terms: int, factor_terms: int, max_value: int
) -> str | None:
    zero = _terms(rng, zero_terms - 1, max_value)
    last = -sum(zero) + (rng.choice((1, -1)) if variant == "misleading" else 0)  # e.g. (-3+4) not (-3+3)
    if not 1 <= abs(last) <= max_value:
        return None
    factors = [f"({_signed_join(zero + [last])})", f"({_signed_join(_terms(rng, factor_terms, max_value))})"]
    rng.shuffle(factors)
    product = "*".join(factors)
    first = f"({_signed_join(_terms(rng, first_terms, max_value))})"
    op = rng.choice("+-")
    return f"{first}{op}{product}=" if rng.random() < 0.75 else f"{product}{op}{first}="


# ------------------------------------------------------------------------------------ code

_CODE_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.Expr, ast.Call, ast.Name,
    ast.Load, ast.Store, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.USub, ast.UAdd,
)
_FUNC_NAMES = ("f", "g", "h", "k")
_CODE_VARS = ("y", "z", "t")


def _code_tree(text: str) -> ast.Module:
    tree = _parse(text, "exec", text)
    _whitelist(tree, _CODE_NODES, int, text)
    return tree  # type: ignore[return-value]


def _run_program(tree: ast.Module, text: str) -> int:
    """Execute in an empty namespace (no builtins; the AST has no attributes, imports or loops)."""
    printed: list[tuple] = []
    env = {"__builtins__": {}, "print": lambda *args: printed.append(args)}
    try:
        exec(compile(tree, "<implicit>", "exec"), env)
    except (NameError, TypeError, RecursionError) as e:
        raise ValueError(f"program failed ({type(e).__name__}: {e}): {text!r}") from None
    if len(printed) != 1 or len(printed[0]) != 1 or type(printed[0][0]) is not int:
        raise ValueError(f"program must print exactly one integer: {text!r}")
    return printed[0][0]


def _eval_code(text: str) -> int:
    return _run_program(_code_tree(text), text)


def _shortcut_code(text: str) -> int:
    # The shortcut reader trusts the `def` of the printed name and skips every other line.
    tree = _code_tree(text)
    last = tree.body[-1] if tree.body else None
    call = last.value if isinstance(last, ast.Expr) else None
    ok = (
        isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print"
        and len(call.args) == 1 and isinstance(call.args[0], ast.Call) and isinstance(call.args[0].func, ast.Name)
    )
    if not ok:
        raise ValueError(f"program must end with print(name(...)): {text!r}")
    name = call.args[0].func.id
    defs = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == name]
    if not defs:
        raise ValueError(f"no def of {name!r} in {text!r}")
    return _run_program(ast.Module(body=[defs[0], last], type_ignores=[]), text)


def _code_body(rng: random.Random, max_ops: int, max_value: int) -> str:
    expr = "x"
    for _ in range(rng.randint(1, max_ops)):
        op = rng.choice("+-*")
        c = rng.randint(2 if op == "*" else 1, max_value)
        expr = f"{expr}{op}{c}" if rng.random() < 0.7 else f"{c}{op}{expr}"
    return expr


def _draft_code(rng: random.Random, variant: str, max_ops: int, max_value: int) -> str:
    main, dead, spare = rng.sample(_FUNC_NAMES, 3)
    defs = [f"def {name}(x): return {_code_body(rng, max_ops, max_value)}" for name in (main, dead)]
    rng.shuffle(defs)
    if variant == "misleading":
        extra = f"{main} = {dead}"  # the dead-looking function is what gets called
    else:
        extra = rng.choice(
            (f"{spare} = {dead}", f"{dead} = {main}", f"{rng.choice(_CODE_VARS)} = {dead}({rng.randint(0, max_value)})")
        )
    return "\n".join([*defs, extra, f"print({main}({rng.randint(0, max_value)}))"])


# ------------------------------------------------------------------------------------ boolean

_BOOL_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Name, ast.Load, ast.Constant)
_BOOL_VARS = ("a", "b", "c", "d", "e")
_ASSIGN = re.compile(r"\s*([a-z])\s*=\s*(True|False)\s*")


def _bool_parse(text: str) -> tuple[dict[str, bool], ast.Expression]:
    head, sep, body = text.partition(";")
    if not sep:
        raise ValueError(f"expected 'a=True, b=False; <expression>': {text!r}")
    env: dict[str, bool] = {}
    for part in head.split(","):
        m = _ASSIGN.fullmatch(part)
        if not m:
            raise ValueError(f"bad assignment {part!r} in {text!r}")
        env[m.group(1)] = m.group(2) == "True"
    tree = _parse(body.strip(), "eval", text)
    _whitelist(tree, _BOOL_NODES, bool, text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in env:
            raise ValueError(f"unassigned variable {node.id!r} in {text!r}")
    return env, tree  # type: ignore[return-value]


def _eval_boolean(text: str) -> bool:
    env, tree = _bool_parse(text)
    return bool(eval(compile(tree, "<implicit>", "eval"), {"__builtins__": {}}, dict(env)))


def _holds_literal(node: ast.AST) -> bool:
    return isinstance(node, ast.BoolOp) and any(isinstance(v, ast.Constant) for v in node.values)


def _bool_skim(node: ast.AST, env: dict[str, bool]) -> bool:
    # The shortcut reader drops any bracket holding a True/False literal, as if it were the identity.
    if isinstance(node, ast.Expression):
        return _bool_skim(node.body, env)
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.UnaryOp):
        return not _bool_skim(node.operand, env)
    assert isinstance(node, ast.BoolOp)
    kept = [v for v in node.values if not _holds_literal(v)] or node.values
    values = [_bool_skim(v, env) for v in kept]
    return all(values) if isinstance(node.op, ast.And) else any(values)


def _shortcut_boolean(text: str) -> bool:
    env, tree = _bool_parse(text)
    return _bool_skim(tree, env)


def _bool_leaf(rng: random.Random, names: tuple[str, ...]) -> str:
    name = rng.choice(names)
    return f"not {name}" if rng.random() < 0.3 else name


def _bool_expr(rng: random.Random, names: tuple[str, ...], depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return _bool_leaf(rng, names)
    op = rng.choice(("and", "or"))
    return f"({_bool_expr(rng, names, depth - 1)} {op} {_bool_expr(rng, names, depth - 1)})"


def _draft_boolean(rng: random.Random, variant: str, n_vars: int, depth: int) -> str:
    names = _BOOL_VARS[:n_vars]
    outer = rng.choice(("and", "or"))
    # Clean: the bracket's literal annihilates it into the identity of `outer` ((B or True) under and).
    # Misleading: the literal is flipped, so the bracket is just B and matters.
    inner, literal = ("or", True) if outer == "and" else ("and", False)
    if variant == "misleading":
        literal = not literal
    bracket = f"({_bool_leaf(rng, names)} {inner} {literal})"
    main = _bool_expr(rng, names, depth)
    expr = f"{main} {outer} {bracket}" if rng.random() < 0.7 else f"{bracket} {outer} {main}"
    if rng.random() < 0.5:  # so that the misleading answer is not fixed by `outer` alone
        expr = f"not ({expr})"
    assign = ", ".join(f"{n}={rng.choice((True, False))}" for n in names)
    return f"{assign}; {expr}"


# ------------------------------------------------------------------------------------ relation

# Single capital consonants: short, one token each, and never "A" (the template's answer marker) or "I".
_ENTITIES = tuple("BCDFGHJKLMNPRSTVWXZ")
_REL_TEXT = re.compile(r"\s*((?:[A-Z]\w* is connected to [A-Z]\w*\.\s*)*)Is ([A-Z]\w*) connected to ([A-Z]\w*)\?\s*")
_REL_EDGE = re.compile(r"([A-Z]\w*) is connected to ([A-Z]\w*)\.")


def _relation_parse(text: str) -> tuple[list[tuple[str, str]], str, str]:
    m = _REL_TEXT.fullmatch(text)
    if not m:
        raise ValueError(f"expected 'X is connected to Y. ... Is P connected to Q?': {text!r}")
    return _REL_EDGE.findall(m.group(1)), m.group(2), m.group(3)


def _reachable(edges: list[tuple[str, str]], src: str, rule: str) -> set[str]:
    """Nodes reachable from src (BFS); `forward` follows X->Y, `backward` Y->X, `undirected` both."""
    adj: dict[str, set[str]] = {}
    for u, v in edges:
        if rule in ("undirected", "forward"):
            adj.setdefault(u, set()).add(v)
        if rule in ("undirected", "backward"):
            adj.setdefault(v, set()).add(u)
    seen, queue = {src}, deque([src])
    while queue:
        for nxt in adj.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _near(edges: list[tuple[str, str]], p: str, q: str) -> bool:
    """Surface proximity: p and q are mentioned in the same or in consecutive statements."""
    at_p = [i for i, e in enumerate(edges) if p in e]
    at_q = [i for i, e in enumerate(edges) if q in e]
    return any(abs(i - j) <= 1 for i in at_p for j in at_q)


def _draft_relation(
    rng: random.Random, variant: str, rule: str, target: str | None, n_edges: int, n_chains: int
) -> str | None:
    cuts = sorted(rng.sample(range(1, n_edges), n_chains - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n_edges], strict=True)]
    names = rng.sample(_ENTITIES, n_edges + n_chains)
    edges, pos = [], 0
    for size in sizes:  # disjoint chains; the second one is the distractor component
        chain = names[pos : pos + size + 1]
        pos += size + 1
        for u, v in zip(chain, chain[1:], strict=False):
            edges.append((v, u) if rng.random() < 0.3 else (u, v))
    rng.shuffle(edges)
    # Pick a query whose truth is the target and whose proximity agrees (clean) or not (misleading).
    want_yes = target == "yes" if target is not None else rng.random() < 0.5
    want_near = want_yes if variant == "clean" else not want_yes
    candidates = [
        (p, q)
        for p in names
        for q in (_reachable(edges, p, rule) if want_yes else set(names) - _reachable(edges, p, rule))
        if p != q and _near(edges, p, q) == want_near
    ]
    if not candidates:
        return None
    p, q = rng.choice(sorted(candidates))
    return " ".join(f"{u} is connected to {v}." for u, v in edges) + f" Is {p} connected to {q}?"


# ------------------------------------------------------------------------------------ algebra

_ALG_VARS = ("x", "y", "z")
_LIN_TERM = re.compile(r"([+-]?)(\d*)([a-z])")


def _linear(side: str, text: str) -> dict[str, int]:
    s = side.replace(" ", "")
    coefs: dict[str, int] = {}
    pos = 0
    for m in _LIN_TERM.finditer(s):
        if m.start() != pos or (pos > 0 and not m.group(1)) or m.group(3) in coefs:
            raise ValueError(f"bad linear expression {side!r} in {text!r}")
        c = int(m.group(2)) if m.group(2) else 1
        coefs[m.group(3)] = -c if m.group(1) == "-" else c
        pos = m.end()
    if pos != len(s) or not coefs:
        raise ValueError(f"bad linear expression {side!r} in {text!r}")
    return coefs


def _alg_parse(text: str) -> tuple[list[str], list[list[int]], list[int], list[int]]:
    """-> (variables, coefficient rows, right-hand sides, query coefficients)."""
    system, sep, query = text.strip().partition(".")
    query = query.strip()
    if not sep or not query.endswith("=?"):
        raise ValueError(f"expected 'x+2y=5, 3x-y=4. 2x+4y=?': {text!r}")
    equations = []
    for eq in system.split(","):
        lhs, eq_sep, rhs = eq.partition("=")
        if not eq_sep or not re.fullmatch(r"\s*-?\d+\s*", rhs):
            raise ValueError(f"bad equation {eq!r} in {text!r}")
        equations.append((_linear(lhs, text), int(rhs)))
    q = _linear(query[:-2], text)
    names = sorted({v for coefs, _ in equations for v in coefs} | set(q))
    rows = [[coefs.get(v, 0) for v in names] for coefs, _ in equations]
    return names, rows, [rhs for _, rhs in equations], [q.get(v, 0) for v in names]


def _solve(rows: list[list[int]], rhs: list[int]) -> list[Fraction]:
    """Exact Gauss-Jordan elimination; raises ValueError unless the system has a unique solution."""
    n = len(rows)
    if any(len(r) != n for r in rows):
        raise ValueError(f"need a square system, got {n} equations in {len(rows[0])} unknowns")
    m = [[Fraction(c) for c in row] + [Fraction(b)] for row, b in zip(rows, rhs, strict=True)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col] != 0), None)
        if pivot is None:
            raise ValueError("singular system")
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def _eval_algebra(text: str) -> Fraction:
    _, rows, rhs, q = _alg_parse(text)
    return sum((Fraction(c) * v for c, v in zip(q, _solve(rows, rhs), strict=True)), Fraction(0))


def _shortcut_algebra(text: str) -> Fraction:
    # The shortcut reader takes the query as k times the equation it most resembles (k: the nearest
    # integer to the projection of the query on that equation) and answers k times its right-hand
    # side, without solving the system.
    _, rows, rhs, q = _alg_parse(text)
    best: tuple[int, int, int] | None = None  # (residual, index, k)
    for i, row in enumerate(rows):
        norm = sum(a * a for a in row)
        if norm == 0:
            continue
        k = math.floor(Fraction(sum(a * c for a, c in zip(row, q, strict=True)), norm) + Fraction(1, 2))
        residual = sum(abs(c - k * a) for a, c in zip(row, q, strict=True))
        if k != 0 and (best is None or residual < best[0]):
            best = (residual, i, k)
    if best is None:
        raise ValueError(f"no equation looks like a multiple of the query: {text!r}")
    return Fraction(best[2] * rhs[best[1]])


def _linear_text(coefs: list[int], names: tuple[str, ...]) -> str:
    out = ""
    for c, v in zip(coefs, names, strict=False):
        if c == 0:
            continue
        mag = "" if abs(c) == 1 else str(abs(c))
        out += ("-" if c < 0 else ("+" if out else "")) + mag + v
    return out


def _draft_algebra(
    rng: random.Random, variant: str, n_vars: int, max_coef: int, max_value: int, max_mult: int
) -> str | None:
    names = _ALG_VARS[:n_vars]
    sol = [rng.randint(-max_value, max_value) for _ in names]
    # Nonzero coefficients: an equation in one unknown would hand over its value directly.
    rows = [[rng.randint(1, max_coef) * rng.choice((1, -1)) for _ in names] for _ in names]
    try:
        _solve(rows, [0] * n_vars)  # a unique solution, so the answer is well defined
    except ValueError:
        return None
    i, k = rng.randrange(n_vars), rng.randint(2, max_mult)
    query = [k * a for a in rows[i]]  # clean: exactly k times equation i
    if variant == "misleading":
        j = rng.choice([j for j in range(n_vars) if rows[i][j]])
        query[j] += rng.choice((1, -1))  # off by one: no longer a multiple, so it must be solved
        if query[j] == 0:
            return None
    eqs = [f"{_linear_text(r, names)}={sum(a * s for a, s in zip(r, sol, strict=True))}" for r in rows]
    return f"{', '.join(eqs)}. {_linear_text(query, names)}=?"


# ------------------------------------------------------------------------------------ parity


def _parity_bits(text: str) -> tuple[str, str]:
    """-> (head bits, tail bits) of 'HEAD | p,p,p'."""
    if not re.fullmatch(r"[01\s|,]*", text) or text.count("|") != 1:
        raise ValueError(f"expected 'bits | pairs' of 0/1: {text!r}")
    head, _, tail = text.partition("|")
    return re.sub(r"[^01]", "", head), re.sub(r"[^01]", "", tail)


def _parity_word(bits: str, rule: str) -> str:
    odd = bits.count("1" if rule.startswith("ones") else "0") % 2 == 1
    if rule.endswith("digit"):
        return "1" if odd else "0"
    return "odd" if odd else "even"


def _draft_parity(rng: random.Random, variant: str, head_len: int, n_pairs: int) -> str:
    # Head length varies by one so that the parity of zeros is not tied to the parity of ones.
    head = "".join(rng.choice("01") for _ in range(rng.randint(max(1, head_len - 1), head_len)))
    pairs = [rng.choice(("00", "11")) for _ in range(n_pairs)]  # each pair adds an even count
    if variant == "misleading":
        pairs[rng.randrange(n_pairs)] = rng.choice(("01", "10"))  # one pair flips the parity
    return f"{head} | {','.join(pairs)}"


# ------------------------------------------------------------------------------------ public API


def _bool_word(value: bool, rule: str) -> str:
    if rule.startswith("negate"):
        value = not value
    if rule.endswith("yes_no"):
        return "yes" if value else "no"
    return "True" if value else "False"


def evaluate(family: str, item_input: str, rule: str | None = None) -> str:
    """The true answer of an item, computed from its text alone (independent of the generator)."""
    rule = _check_rule(_check_family(family), rule)
    if family == "expression":
        return _fmt_number(_eval_expression(item_input), rule)
    if family == "code":
        return _fmt_number(_eval_code(item_input), rule)
    if family == "boolean":
        return _bool_word(_eval_boolean(item_input), rule)
    if family == "relation":
        edges, p, q = _relation_parse(item_input)
        return "yes" if q in _reachable(edges, p, rule) else "no"
    if family == "algebra":
        return _fmt_number(_eval_algebra(item_input), rule)
    head, tail = _parity_bits(item_input)
    return _parity_word(head + tail, rule)


def shortcut_answer(family: str, item_input: str, rule: str | None = None) -> str:
    """What the family's shortcut reading answers (right on clean items, wrong on misleading ones)."""
    rule = _check_rule(_check_family(family), rule)
    if family == "expression":
        return _fmt_number(_shortcut_expression(item_input), rule)
    if family == "code":
        return _fmt_number(_shortcut_code(item_input), rule)
    if family == "boolean":
        return _bool_word(_shortcut_boolean(item_input), rule)
    if family == "relation":
        edges, p, q = _relation_parse(item_input)
        return "yes" if _near(edges, p, q) else "no"
    if family == "algebra":
        return _fmt_number(_shortcut_algebra(item_input), rule)
    return _parity_word(_parity_bits(item_input)[0], rule)


def label_words(family: str, rule: str | None = None) -> list[str] | None:
    """The closed answer set of (family, rule), or None when answers are open-ended integers."""
    rule = _check_rule(_check_family(family), rule)
    if family == "boolean":
        return ["yes", "no"] if rule.endswith("yes_no") else ["True", "False"]
    if family == "relation":
        return ["yes", "no"]
    if family == "parity":
        return ["0", "1"] if rule.endswith("digit") else ["even", "odd"]
    return [str(d) for d in range(10)] if rule == "last_digit" else None


_DRAFTERS: dict[str, Callable[..., str | None]] = {
    "expression": _draft_expression,
    "code": _draft_code,
    "boolean": _draft_boolean,
    "relation": _draft_relation,
    "algebra": _draft_algebra,
    "parity": _draft_parity,
}


def _generate(
    family: str, n: int, seed: int, variant: str, rule: str | None, size: dict, exclude: frozenset[str] = frozenset()
) -> list[Example]:
    family = _check_family(family)
    variant, rule = _check_variant(variant), _check_rule(family, rule)
    params = _check_sizes(family, size)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(f"iclft/implicit/{family}/{variant}/{rule}/{seed}")
    words = label_words(family, rule)
    binary = words is not None and len(words) == 2  # balance these by drawing the label first
    out: list[Example] = []
    seen = set(exclude)
    budget = 200 * n + 1000
    target: str | None = None
    while len(out) < n:
        budget -= 1
        if budget < 0:
            raise RuntimeError(
                f"could not draw {n} distinct {variant} {family} items with {params}; make the sizes larger"
            )
        if target is None and binary:
            target = rng.choice(words)  # kept until an item with this label is found
        if family == "relation":
            text = _draft_relation(rng, variant, rule, target, **params)
        else:
            text = _DRAFTERS[family](rng, variant, **params)
        if text is None or text in seen:
            continue
        label, shortcut = evaluate(family, text, rule), shortcut_answer(family, text, rule)
        if (label == shortcut) != (variant == "clean") or (target is not None and label != target):
            continue
        seen.add(text)
        meta = {"family": family, "variant": variant, "rule": rule, "shortcut": shortcut}
        out.append(Example(input=text, label=label, meta=meta))
        target = None
    return out


def generate(
    family: str, n: int, seed: int, variant: str = "clean", rule: str | None = None, **size: int
) -> list[Example]:
    """n distinct items of one family; deterministic in its arguments.

    Labels come from `evaluate` on the text; meta["shortcut"] is `shortcut_answer` (equal to the
    label on clean items, different on misleading ones). `rule=None` means DEFAULT_RULE[family];
    size keywords are listed in SIZE_DEFAULTS[family].
    """
    return _generate(family, n, seed, variant, rule, size)


_WORDS = {"true", "false", "yes", "no", "even", "odd"}
_SPACED_INT = re.compile(r"[-+]?\s*\d[\d ]*")
_SPACED_FRACTION = re.compile(r"[-+]?\s*\d[\d ]*/\s*\d[\d ]*")


def normalise_answer(text: str) -> str:
    """Canonical form for exact match: '- 1 2 .' -> '-12', 'TRUE' -> 'true', ' odd. ' -> 'odd'."""
    s = " ".join(str(text).replace("\u2212", "-").split())
    while s.endswith("."):
        s = s[:-1].rstrip()
    if _SPACED_INT.fullmatch(s):
        return str(int(s.replace(" ", "")))  # digits are separate tokens, so decoding may space them
    if _SPACED_FRACTION.fullmatch(s):
        return s.replace(" ", "").lstrip("+")
    return " ".join(w.lower() if w.lower() in _WORDS else w for w in s.split(" "))


def implicit_task(
    family: str,
    seed: int = 0,
    n_train: int = 1024,
    n_test: int = 200,
    test_variant: str = "clean",
    rule: str | None = None,
    config: TaskConfig | None = None,
    **size: int,
) -> Task:
    """Clean training items plus a clean or misleading test set; never an input in both.

    Test and train are drawn from different seeds (2*seed+1, 2*seed) and train skips test inputs. The prompt
    (template, instruction, separator) is `config`'s, by default the built-in task `implicit/<family>`'s.
    """
    family = _check_family(family)
    rule = _check_rule(family, rule)
    test = _generate(family, n_test, 2 * seed + 1, test_variant, rule, size)
    train = _generate(family, n_train, 2 * seed, "clean", rule, size, exclude=frozenset(ex.input for ex in test))
    return (config or builtin_config(f"implicit/{family}")).to_task(
        train, test, words=label_words(family, rule),
        description=(
            f"Implicit patterns (Yin et al. 2024), {family}: rule {rule!r}"
            f"{' (held out of pretraining)' if rule in HELDOUT_RULES[family] else ''}; "
            f"train clean, test {test_variant} (the shortcut {'holds' if test_variant == 'clean' else 'fails'})."
        ),
    )


__all__ = [
    "DEFAULT_RULE",
    "FAMILIES",
    "HELDOUT_RULES",
    "RULES",
    "SIZE_DEFAULTS",
    "TRAIN_RULES",
    "VARIANTS",
    "evaluate",
    "generate",
    "implicit_task",
    "label_words",
    "normalise_answer",
    "shortcut_answer",
]
