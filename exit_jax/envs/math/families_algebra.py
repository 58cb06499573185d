"""Procedural families: arith, linear_eq, system2, quadratic, polynomial (docs/domains.md §1.2).

Each family is `f(rng: random.Random, level: int) -> Problem`. Levels 1-5 raise difficulty along several
axes at once: more terms/steps, larger numbers, fractions, less direct questions. ExIt prioritises tasks
by group reward variance, so the levels must span "usually solved" to "rarely solved" (docs/domains.md §1.2).
"""
from __future__ import annotations

import random
from fractions import Fraction

from exit_jax.envs.math.render import Problem, linear, nonzero, num, poly, poly_eval, poly_mul

_FRACTION_HINT = "Express your answer as an integer or a common fraction in lowest terms."


# ---------------------------------------------------------------------------------------------------
# arith: exact arithmetic expressions with nesting.

_ARITH = {  # level: (terms range, max nesting, ops, max integer, chance a leaf is a fraction)
    1: ((2, 3), 0, "+-", 20, 0.0),
    2: ((3, 4), 1, "+-*", 25, 0.0),
    3: ((3, 5), 1, "+-*/", 30, 0.25),
    4: ((4, 6), 2, "+-*/", 50, 0.4),
    5: ((5, 8), 3, "+-*/", 99, 0.5),
}
_OP_TEX = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}


def _arith_leaf(rng: random.Random, max_int: int, p_frac: float) -> tuple[str, Fraction]:
    if rng.random() < p_frac:
        q = rng.randint(2, 12)
        p = rng.randint(1, 3 * q)
        while Fraction(p, q).denominator == 1:
            p = rng.randint(1, 3 * q)
        return f"\\frac{{{p}}}{{{q}}}", Fraction(p, q)
    v = rng.randint(1, max_int)
    return str(v), Fraction(v)


def _eval_chain(values: list, ops: list) -> Fraction:
    """Left-to-right with * and / binding tighter than + and -."""
    total, product, sign = Fraction(0), values[0], 1
    for op, v in zip(ops, values[1:]):
        if op == "*":
            product *= v
        elif op == "/":
            product /= v  # ZeroDivisionError is caught by the caller, which redraws
        else:
            total += sign * product
            sign, product = (1 if op == "+" else -1), v
    return total + sign * product


def _arith_expr(rng, n_terms: int, depth: int, cfg) -> tuple[str, Fraction]:
    _, _, ops_allowed, max_int, p_frac = cfg
    if depth > 0 and n_terms >= 3:
        inner = rng.randint(2, n_terms - 1)
        items = [_arith_expr(rng, inner, depth - 1, cfg)]
        items[0] = ("(" + items[0][0] + ")", items[0][1])
        items += [_arith_leaf(rng, max_int, p_frac) for _ in range(n_terms - inner)]
        rng.shuffle(items)
    else:
        items = [_arith_leaf(rng, max_int, p_frac) for _ in range(n_terms)]
    ops = [rng.choice(ops_allowed) for _ in range(len(items) - 1)]
    value = _eval_chain([v for _, v in items], ops)
    tex = items[0][0] + "".join(f" {_OP_TEX[o]} {t}" for o, (t, _) in zip(ops, items[1:]))
    return tex, value


def arith(rng: random.Random, level: int) -> Problem:
    cfg = _ARITH[level]
    for _ in range(1000):
        n_terms = rng.randint(*cfg[0])
        try:
            tex, value = _arith_expr(rng, n_terms, cfg[1], cfg)
        except ZeroDivisionError:
            continue
        # Keep answers human-sized: huge numerators or denominators test patience, not skill.
        if abs(value.numerator) <= 10**6 and value.denominator <= 10**4:
            hint = "" if level <= 2 else " " + _FRACTION_HINT
            return Problem(f"Compute ${tex}$.{hint}", value, "expression")
    raise RuntimeError("arith: no valid expression in 1000 draws")  # unreachable in practice


# ---------------------------------------------------------------------------------------------------
# linear_eq: one unknown.

def _side(parts: list) -> tuple[str, Fraction, Fraction]:
    """Renders one side of an equation; returns (tex, coefficient of x, constant term)."""
    texs, a, b = [], Fraction(0), Fraction(0)
    for part in parts:
        kind = part[0]
        if kind == "lin":  # c*x + d
            _, c, d = part
            t = linear([(c, "x"), (d, "")])
            a, b = a + c, b + d
        elif kind == "scaled":  # m(x + d)
            _, m, d = part
            t = f"{'' if m == 1 else num(m)}(x {'+' if d >= 0 else '-'} {abs(d)})"
            a, b = a + m, b + m * d
        else:  # "over": (c*x + d)/q
            _, c, d, q = part
            t = f"\\frac{{{linear([(c, 'x'), (d, '')])}}}{{{q}}}"
            a, b = a + Fraction(c, q), b + Fraction(d, q)
        if t != "0":
            texs.append(t)
    return (" + ".join(texs) or "0").replace(" + -", " - "), a, b


def linear_eq(rng: random.Random, level: int) -> Problem:
    for _ in range(1000):
        if level == 1:
            left, right = [("lin", rng.randint(2, 9), rng.randint(-20, 20))], []
        elif level == 2:
            left = [("lin", rng.randint(2, 12), rng.randint(-30, 30))]
            right = [("lin", nonzero(rng, -12, 12), 0)]
        elif level == 3:
            left = [("scaled", nonzero(rng, -9, 9), nonzero(rng, -15, 15))]
            right = [("scaled", nonzero(rng, -9, 9), nonzero(rng, -15, 15))]
        elif level == 4:
            left = [("lin", nonzero(rng, -15, 15), rng.randint(-40, 40))]
            right = [("scaled", nonzero(rng, -9, 9), nonzero(rng, -15, 15)), ("lin", 0, rng.randint(-40, 40))]
        else:
            left = [("over", nonzero(rng, -9, 9), rng.randint(-20, 20), rng.randint(2, 9)) for _ in range(2)]
            right = [("lin", 0, rng.randint(-20, 20))]
        _, la, lb = _side(left)
        _, ra, rb = _side(right)
        if la == ra:
            continue
        if level <= 3:
            # Levels 1-3 have integer solutions: draw x0 and choose the right-hand constant to fit.
            x0 = rng.randint(-12, 12)
            right.append(("lin", 0, (la - ra) * x0 + lb - rb))
            _, ra, rb = _side(right)
        x = (rb - lb) / (la - ra)
        if level >= 4 and x.denominator == 1:
            continue  # levels 4-5 promise a fractional solution
        hint = "" if level <= 3 else " " + _FRACTION_HINT
        return Problem(f"Solve for $x$: ${_side(left)[0]} = {_side(right)[0]}$.{hint}", x, "solve")
    raise RuntimeError("linear_eq: no valid equation in 1000 draws")


# ---------------------------------------------------------------------------------------------------
# system2: two linear equations in x, y; answer (x, y).

def system2(rng: random.Random, level: int) -> Problem:
    for _ in range(1000):
        if level == 1:
            x, y = rng.randint(1, 25), rng.randint(1, 25)
            eqs = [(1, 1), (1, -1)]
        elif level <= 3:
            lim, box = (5, 10) if level == 2 else (9, 15)
            x, y = rng.randint(-box, box), rng.randint(-box, box)
            eqs = [(nonzero(rng, -lim, lim), nonzero(rng, -lim, lim)) for _ in range(2)]
            if level == 2:
                eqs = [(abs(a), abs(b)) for a, b in eqs]
        else:
            eqs = [(nonzero(rng, -12, 12), nonzero(rng, -12, 12)) for _ in range(2)]
            consts = [rng.randint(-40, 40) for _ in range(2)]
            det = eqs[0][0] * eqs[1][1] - eqs[0][1] * eqs[1][0]
            if det == 0:
                continue
            x = Fraction(consts[0] * eqs[1][1] - eqs[0][1] * consts[1], det)
            y = Fraction(eqs[0][0] * consts[1] - consts[0] * eqs[1][0], det)
            if x.denominator == 1 and y.denominator == 1:
                continue
        a, b = eqs[0]
        c, d = eqs[1]
        if a * d - b * c == 0:
            continue
        texs = []
        for (p, q) in eqs:
            rhs = p * x + q * y
            if level == 5:
                # Move the y term to the right-hand side: p x - r = -q y + (rhs - r).
                r = rng.randint(-9, 9)
                texs.append(f"{linear([(p, 'x'), (-r, '')])} = {linear([(-q, 'y'), (rhs - r, '')])}")
            else:
                texs.append(f"{linear([(p, 'x'), (q, 'y')])} = {num(rhs)}")
        text = (f"Solve the system of equations ${texs[0]}$ and ${texs[1]}$. "
                "Enter your answer as an ordered pair $(x, y)$.")
        if level >= 4:
            text += " Write non-integer coordinates as common fractions."
        return Problem(text, (Fraction(x), Fraction(y)), "solve")
    raise RuntimeError("system2: no valid system in 1000 draws")


# ---------------------------------------------------------------------------------------------------
# quadratic: integer or rational roots; Vieta questions at the top level.

def quadratic(rng: random.Random, level: int) -> Problem:
    if level <= 3:
        lo, hi = ((1, 20), (-15, 15), (-15, 15))[level - 1]
        r1, r2 = rng.randint(lo, hi), rng.randint(lo, hi)
        a = 1 if level <= 2 else rng.randint(2, 6)
        coeffs = [a, -a * (r1 + r2), a * r1 * r2]
        roots = (Fraction(r1), Fraction(r2))
    elif level == 4:
        p, q = rng.randint(1, 5), rng.randint(-12, 12)
        r, s = rng.randint(1, 5), rng.randint(-12, 12)
        coeffs = poly_mul([p, -q], [r, -s])
        roots = (Fraction(q, p), Fraction(s, r))
    else:
        a, b, c = rng.randint(2, 9), nonzero(rng, -15, 15), nonzero(rng, -15, 15)
        coeffs, roots = [a, b, c], None
    eq = f"{poly(coeffs)} = 0"
    if roots is not None:
        choices = {1: ["larger_root", "smaller_root"], 2: ["larger_root", "smaller_root", "root_difference"],
                   3: ["sum_squares", "root_difference", "product_roots"],
                   4: ["larger_root", "smaller_root", "sum_squares"]}[level]
        kind = rng.choice(choices)
        big, small = max(roots), min(roots)
        answer = {"larger_root": big, "smaller_root": small, "root_difference": big - small,
                  "sum_squares": roots[0] ** 2 + roots[1] ** 2, "product_roots": roots[0] * roots[1]}[kind]
        question = {"larger_root": f"What is the larger of the two solutions of ${eq}$?",
                    "smaller_root": f"What is the smaller of the two solutions of ${eq}$?",
                    "root_difference": f"What is the positive difference between the solutions of ${eq}$?",
                    "sum_squares": f"Find the sum of the squares of the solutions of ${eq}$.",
                    "product_roots": f"Find the product of the solutions of ${eq}$."}[kind]
        if kind == "root_difference" and big == small:
            question = question.replace("positive difference", "difference")  # double root: answer 0
        if kind in ("larger_root", "smaller_root") and big == small:
            kind, question = "double_root", f"The equation ${eq}$ has exactly one solution. What is it?"
            answer = big
    else:
        a, b, c = (Fraction(v) for v in coeffs)
        s, p = -b / a, c / a  # Vieta: r + s and r s
        kind = rng.choice(["sum_squares", "sum_reciprocals", "sum_cubes"])
        answer = {"sum_squares": s * s - 2 * p, "sum_reciprocals": s / p, "sum_cubes": s ** 3 - 3 * s * p}[kind]
        target = {"sum_squares": "r^2 + s^2", "sum_reciprocals": "\\frac{1}{r} + \\frac{1}{s}",
                  "sum_cubes": "r^3 + s^3"}[kind]
        question = f"Let $r$ and $s$ be the roots of ${eq}$. Compute ${target}$."
    hint = "" if level <= 3 else " " + _FRACTION_HINT
    return Problem(question + hint, answer, kind)


# ---------------------------------------------------------------------------------------------------
# polynomial: evaluation, remainder theorem, composition, coefficients of powers.

def _rand_poly(rng, degree: int, lim: int) -> list:
    return [nonzero(rng, -lim, lim)] + [rng.randint(-lim, lim) for _ in range(degree)]


def polynomial(rng: random.Random, level: int) -> Problem:
    if level == 1:
        p, a = _rand_poly(rng, 2, 6), rng.randint(-5, 5)
        return Problem(f"If $p(x) = {poly(p)}$, what is $p({a})$?", poly_eval(p, a), "evaluate")
    if level == 2:
        p, a = _rand_poly(rng, 3, 7), nonzero(rng, -4, 4)
        divisor = linear([(1, "x"), (-a, "")])
        return Problem(f"What is the remainder when ${poly(p)}$ is divided by ${divisor}$?",
                       poly_eval(p, a), "remainder")
    if level == 3:
        f, g, a = _rand_poly(rng, 2, 5), _rand_poly(rng, 1, 5), rng.randint(-3, 3)
        return Problem(f"Let $f(x) = {poly(f)}$ and $g(x) = {poly(g)}$. What is $f(g({a}))$?",
                       poly_eval(f, poly_eval(g, a)), "compose")
    if level == 4:
        a, b, n = nonzero(rng, -4, 4), nonzero(rng, -5, 5), rng.randint(4, 7)
        k = rng.randint(1, n - 1)
        coeffs = [1]
        for _ in range(n):
            coeffs = poly_mul(coeffs, [a, b])
        base = linear([(a, "x"), (b, "")])
        return Problem(f"What is the coefficient of ${poly([1] + [0] * k)}$ in the expansion of $({base})^{n}$?",
                       coeffs[n - k], "coefficient")
    kind = rng.choice(["coefficient", "remainder"])
    if kind == "coefficient":
        base, n = _rand_poly(rng, 2, 4), rng.randint(3, 5)
        k = rng.randint(1, 2 * n - 1)
        coeffs = [1]
        for _ in range(n):
            coeffs = poly_mul(coeffs, base)
        return Problem(f"What is the coefficient of ${poly([1] + [0] * k)}$ in the expansion of $({poly(base)})^{n}$?",
                       coeffs[2 * n - k], kind)
    p = _rand_poly(rng, rng.randint(3, 4), 9)
    q, r = rng.randint(2, 5), nonzero(rng, -7, 7)
    while Fraction(r, q).denominator == 1:
        r = nonzero(rng, -7, 7)
    divisor = linear([(q, "x"), (-r, "")])
    return Problem(f"What is the remainder when ${poly(p)}$ is divided by ${divisor}$? {_FRACTION_HINT}",
                   poly_eval(p, Fraction(r, q)), kind)
