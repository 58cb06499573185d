"""Worked solutions of the generated math problems, for the warm start's corpus (math_corpus).

A solution is a trace: a list of small operations over literals and earlier results (`39 - 3 = 36`),
which a tiny model can learn one at a time. `solution(task)` parses the problem text of the families and
levels such a model can learn into a trace that reproduces the gold answer, or returns None.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

from exit_jax.envs.base import Task


# ---------------------------------------------------------------------------------------------------
# Traces: a worked solution is a list of operations over literals and earlier results.

class Ref(int):
    """An operand that is the result of an earlier operation (by index)."""


class Op(NamedTuple):
    name: str
    args: tuple  # Fraction literals or Refs


_APPLY: dict = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
    "gcd": lambda a, b: Fraction(math.gcd(int(a), int(b))), "lcm": lambda a, b: Fraction(math.lcm(int(a), int(b))),
    "mod": lambda a, b: Fraction(int(a) % int(b)), "!": lambda a: Fraction(math.factorial(int(a))),
    "C": lambda n, k: Fraction(math.comb(int(n), int(k))), "P": lambda n, k: Fraction(math.perm(int(n), int(k))),
    "d": lambda n: Fraction(sum(1 for i in range(1, int(n) + 1) if int(n) % i == 0)),
    "^": lambda a, b: Fraction(a) ** int(b),
}
_SHOW = {"+": "{} + {}", "-": "{} - {}", "*": "{} * {}", "/": "{} / {}", "gcd": "gcd({}, {})", "lcm": "lcm({}, {})",
         "mod": "{} mod {}", "!": "{}!", "C": "C({}, {})", "P": "P({}, {})", "d": "d({})", "^": "{}^{}"}
INTEGER_ARGS = {"gcd", "lcm", "mod", "!", "C", "P", "d"}


class Solution(NamedTuple):
    ops: tuple  # Op, ...
    out: tuple  # Refs whose values form the answer (two for an ordered pair)


def run(ops: Sequence[Op]) -> list:
    """The value of every op."""
    values: list = []
    for op in ops:
        args = [values[a] if isinstance(a, Ref) else a for a in op.args]
        if op.name in INTEGER_ARGS and any(Fraction(a).denominator != 1 or a < 0 for a in args):
            raise ValueError(f"{op.name} needs non-negative integers")
        values.append(Fraction(_APPLY[op.name](*args)))
    return values


def fmt(x: Fraction, operand: bool = False) -> str:
    s = str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
    return f"({s})" if operand and (x < 0 or x.denominator != 1) else s


def working(ops: Sequence[Op], values: Sequence[Fraction]) -> str:
    parts = []
    for op, v in zip(ops, values):
        shown = [fmt(values[a] if isinstance(a, Ref) else a, operand=True) for a in op.args]
        parts.append(f"{_SHOW[op.name].format(*shown)} = {fmt(v)}")
    return ", ".join(parts)


def answer(values: Sequence[Fraction], out: Sequence[Ref]):
    return values[out[0]] if len(out) == 1 else tuple(values[r] for r in out)


# ---------------------------------------------------------------------------------------------------
# Parsers from problem text to traces (the families and levels a tiny model can learn; others: None).

_F = Fraction
_NUM = r"(-?\d+)"


def _arith(text: str) -> Solution | None:
    m = re.search(r"Compute \$(.+?)\$", text)
    if not m:
        return None
    tokens = re.findall(r"\\frac\{\d+\}\{\d+\}|\d+|\\times|\\div|[-+()]", m.group(1))
    ops: list = []
    pos = [0]

    def peek():
        return tokens[pos[0]] if pos[0] < len(tokens) else None

    def emit(name, a, b):
        ops.append(Op(name, (a, b)))
        return Ref(len(ops) - 1)

    def factor():
        tok = peek()
        pos[0] += 1
        if tok == "(":
            v = expr()
            pos[0] += 1  # ")"
            return v
        if tok == "-":  # a negative literal, as drills write it: (-54)
            v = factor()
            return -v if not isinstance(v, Ref) else emit("-", _F(0), v)
        if tok.startswith("\\frac"):
            p, q = re.findall(r"\d+", tok)
            return _F(int(p), int(q))
        return _F(int(tok))

    def term():
        v = factor()
        while peek() in ("\\times", "\\div"):
            name = "*" if tokens[pos[0]] == "\\times" else "/"
            pos[0] += 1
            v = emit(name, v, factor())
        return v

    def expr():
        v = term()
        while peek() in ("+", "-"):
            name = tokens[pos[0]]
            pos[0] += 1
            v = emit(name, v, term())
        return v

    try:
        expr()
    except (TypeError, AttributeError, ValueError):
        return None
    return Solution(tuple(ops), (Ref(len(ops) - 1),)) if ops and pos[0] == len(tokens) else None


def _linear_side(s: str) -> tuple | None:
    """(a, b) of a side written `ax + b`, `ax`, `-x - 3` or `b`."""
    m = re.fullmatch(r"(?:(-?\d*)x)?\s*(?:([+-])?\s*(\d+))?", s.strip())
    if not m or not s.strip():
        return None
    coef, sign, const = m.groups()
    a = _F(0) if coef is None and "x" not in s else _F(int(coef) if coef not in ("", "-", None) else
                                                        (-1 if coef == "-" else 1))
    b = _F(0) if const is None else _F(int(const)) * (-1 if sign == "-" else 1)
    return a, b


def _linear_eq(text: str) -> Solution | None:
    m = re.search(r"Solve for \$x\$: \$(.+?) = (.+?)\$", text)
    sides = m and (_linear_side(m.group(1)), _linear_side(m.group(2)))
    if not sides or None in sides:
        return None
    (a, b), (c, d) = sides
    if c == 0:  # ax + b = d: move b, then divide
        return Solution((Op("-", (d, b)), Op("/", (Ref(0), a))), (Ref(1),))
    return Solution((Op("-", (a, c)), Op("-", (d, b)), Op("/", (Ref(1), Ref(0)))), (Ref(2),))


def _system2(text: str) -> Solution | None:
    m = re.search(rf"\$x \+ y = {_NUM}\$ and \$x - y = {_NUM}\$", text)
    if not m:
        return None
    s, d = (_F(int(g)) for g in m.groups())
    return Solution((Op("+", (s, d)), Op("/", (Ref(0), _F(2))), Op("-", (s, Ref(1)))), (Ref(1), Ref(2)))


_ONE_OP = [  # (regex, op name, argument order) for one-step problems
    (r"greatest common divisor of \$(\d+)\$ and \$(\d+)\$\?", "gcd", (0, 1)),
    (r"remainder when \$(\d+)\$ is divided by \$(\d+)\$", "mod", (0, 1)),
    (r"least common multiple of \$(\d+)\$ and \$(\d+)\$", "lcm", (0, 1)),
    (r"How many positive divisors does \$(\d+)\$ have", "d", (0,)),
    (r"In how many ways can \$(\d+)\$ .* arranged in a row", "!", (0,)),
    (r"each of \$(\d+)\$ people shakes hands", "C2", (0,)),
    (r"committee of \$(\d+)\$ people be chosen from a .* of \$(\d+)\$ people", "C", (1, 0)),
    (r"has \$(\d+)\$ members\. In how many ways can it choose \$(\d+)\$ officers", "P", (0, 1)),
    (r"buys (\d+) \w+ that cost (\d+) dollars each", "*", (0, 1)),
    (r"has (\d+) \w+ and shares them equally among (\d+) friends", "/", (0, 1)),
]


def _one_op(text: str) -> Solution | None:
    for pattern, name, order in _ONE_OP:
        m = re.search(pattern, text)
        if m:
            args = tuple(_F(int(m.group(i + 1))) for i in order)
            op = Op("C", (args[0], _F(2))) if name == "C2" else Op(name, args)
            return Solution((op,), (Ref(0),))
    return None


def _word(text: str) -> Solution | None:
    nums = [_F(int(x)) for x in re.findall(r"\d+", text)]
    R = Ref
    if "pays with a" in text and len(nums) >= 5:  # change: n*p, m*q, bill - both
        n, p, m, q, bill = nums[:5]
        return Solution((Op("*", (n, p)), Op("*", (m, q)), Op("-", (bill, R(0))), Op("-", (R(2), R(1)))), (R(3),))
    if "packs with" in text and len(nums) >= 4:  # collect: a - b + c * (b + 1)
        a, b, c, e = nums[:4]
        return Solution((Op("-", (a, b)), Op("*", (c, e)), Op("+", (R(0), R(1)))), (R(2),))
    if "coupon" in text and len(nums) >= 3:  # discount
        price, pct, coupon = nums[:3]
        return Solution((Op("-", (_F(100), pct)), Op("*", (price, R(0))), Op("/", (R(1), _F(100))),
                         Op("-", (R(2), coupon))), (R(3),))
    if "every week" in text and len(nums) >= 3:  # savings
        weekly, weeks, pct = nums[:3]
        return Solution((Op("*", (weekly, weeks)), Op("*", (R(0), pct)), Op("/", (R(1), _F(100))),
                         Op("-", (R(0), R(2)))), (R(3),))
    return _one_op(text)


def _sequences(text: str) -> Solution | None:
    m = re.search(rf"the (\d+)\w\w term of the (arithmetic|geometric) sequence \${_NUM}, {_NUM},", text)
    if not m or "sum" in text:
        return None
    k, kind, t1, t2 = _F(int(m.group(1))), m.group(2), _F(int(m.group(3))), _F(int(m.group(4)))
    R = Ref
    if kind == "arithmetic":  # a + (k - 1) d
        return Solution((Op("-", (t2, t1)), Op("-", (k, _F(1))), Op("*", (R(1), R(0))), Op("+", (t1, R(2)))),
                        (R(3),))
    if t1 == 0:
        return None
    return Solution((Op("/", (t2, t1)), Op("-", (k, _F(1))), Op("^", (R(0), R(1))), Op("*", (t1, R(2)))), (R(3),))


_PARSERS: dict = {"arith": _arith, "linear_eq": _linear_eq, "system2": _system2, "number_theory": _one_op,
                  "counting": _one_op, "word": _word, "sequences": _sequences}


def gold(task: Task):
    """The gold answer as a Fraction or a tuple of Fractions; None when it is not a plain number."""
    ans = str(task.data["answer"]).strip()
    parts = ans[1:-1].split(",") if ans.startswith("(") and ans.endswith(")") else [ans]
    try:
        vals = []
        for p in parts:
            p = p.strip()
            m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", p)
            vals.append(_F(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1) if m else _F(p))
    except (ValueError, ZeroDivisionError):
        return None
    return vals[0] if len(vals) == 1 else tuple(vals)


def solution(task: Task) -> Solution | None:
    """A trace that reproduces the task's gold answer, or None (the reply then has no working)."""
    parse = _PARSERS.get(str(task.data.get("family", "")))
    try:
        sol = parse(task.data["problem"]) if parse else None
        if sol is None or answer(run(sol.ops), sol.out) != gold(task):
            return None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return sol
