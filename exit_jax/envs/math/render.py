"""LaTeX rendering helpers for the procedural math problems (numbers, linear forms, polynomials)."""
from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple, Sequence


class Problem(NamedTuple):
    """What a family generator returns: the question (without the boxed-answer sentence) and its answer."""
    text: str
    answer: object  # int, Fraction or tuple of those
    kind: str  # the sub-template, e.g. "larger_root"


def num(x) -> str:
    """A number in LaTeX: `3`, `-3`, `\\frac{1}{2}`, `-\\frac{1}{2}`."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _coef_term(c: Fraction, body: str, first: bool) -> str:
    """One signed term `c*body` of a sum; body "" means a constant."""
    sign = "-" if c < 0 else "+"
    a = abs(c)
    mag = body if (body and a == 1) else num(a) + body
    if first:
        return ("-" if c < 0 else "") + mag
    return f" {sign} {mag}"


def linear(terms: Sequence[tuple[object, str]]) -> str:
    """Sum of (coefficient, variable-or-"") terms, zero terms dropped: `3x - 2y + 5`."""
    out = ""
    for c, body in terms:
        c = Fraction(c)
        if c == 0:
            continue
        out += _coef_term(c, body, first=not out)
    return out or "0"


def poly(coeffs: Sequence[object], var: str = "x") -> str:
    """Polynomial from coefficients, highest degree first: [2, -3, 1] -> `2x^2 - 3x + 1`."""
    deg = len(coeffs) - 1
    terms = []
    for i, c in enumerate(coeffs):
        p = deg - i
        body = "" if p == 0 else var if p == 1 else f"{var}^{{{p}}}" if p > 9 else f"{var}^{p}"
        terms.append((c, body))
    return linear(terms)


def poly_eval(coeffs: Sequence[object], x) -> Fraction:
    """Horner evaluation, exact."""
    acc = Fraction(0)
    for c in coeffs:
        acc = acc * x + Fraction(c)
    return acc


def poly_mul(a: Sequence[int], b: Sequence[int]) -> list:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        suffix = "th"
    else:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def nonzero(rng, lo: int, hi: int) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v != 0:
            return v
