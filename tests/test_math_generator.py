"""Procedural math generator: answers re-solved independently (sympy, brute force) from the rendered text."""
import itertools
import os
import re
import subprocess
import sys
from fractions import Fraction

import pytest
import sympy
from latex2sympy2_extended import latex2sympy

from exit_jax.envs.math import generator as gen
from exit_jax.envs.math.generator import FAMILIES, LEVELS, generate, math_tasks, split_of

X, Y = sympy.symbols("x y")
SEEDS_PER_LEVEL = 5


def _maths(text: str) -> list:
    """The $...$ spans of a problem, in order."""
    return re.findall(r"\$([^$]+)\$", text)


def _tex(s: str):
    return latex2sympy(s)


def _ints(text: str) -> list:
    return [int(v) for v in re.findall(r"-?\d+", text)]


def _ordinal(text: str, which: int = -1) -> int:
    return int(re.findall(r"(\d+)(?:st|nd|rd|th) term", text)[which])


def _terms(span: str) -> list:
    return [sympy.nsimplify(_tex(t)) for t in span.replace("\\ldots", "").split(",") if t.strip()]


def _gold(answer: str):
    if answer.startswith("("):
        return tuple(_gold(a) for a in _split_tuple(answer[1:-1]))
    return sympy.nsimplify(_tex(answer))


def _split_tuple(s: str) -> list:
    parts, depth, cur = [], 0, ""
    for c in s:
        depth += c == "{"
        depth -= c == "}"
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return parts + [cur]


def _pow_mod_euler(a, b, m):
    """a^b mod m through Euler's theorem (a different route from repeated squaring of the full exponent)."""
    if sympy.gcd(a, m) != 1:
        return sympy.Integer(a) ** b % m if b < 200 else pow(a, b, m)
    return sympy.Integer(a) ** (b % sympy.totient(m)) % m


def _grid_paths(m, n, blocked=None, through=None):
    """Brute force: enumerate move sequences, filter by the point constraint."""
    count = 0
    for rights in itertools.combinations(range(m + n), m):
        x = y = 0
        visits = {(0, 0)}
        for step in range(m + n):
            if step in rights:
                x += 1
            else:
                y += 1
            visits.add((x, y))
        if blocked and blocked in visits:
            continue
        if through and through not in visits:
            continue
        count += 1
    return count


def solve(rec: dict):
    """Recomputes the answer from the rendered problem without the generator's code."""
    fam, kind, text = rec["family"], rec["kind"], rec["problem"]
    spans = _maths(text)
    if fam == "arith":
        return sympy.nsimplify(_tex(spans[0]))
    if fam == "linear_eq":
        return sympy.solve(_tex(spans[1]), X)[0]
    if fam == "system2":
        sol = sympy.solve([_tex(spans[0]), _tex(spans[1])], [X, Y])
        return (sol[X], sol[Y])
    if fam == "quadratic":
        eq = next(s for s in spans if s.endswith("= 0"))
        roots = sympy.roots(sympy.Poly(_tex(eq.replace("= 0", "")), X), multiple=True)
        r, s = roots
        if kind in ("larger_root", "double_root"):
            return max(roots)
        if kind == "smaller_root":
            return min(roots)
        return sympy.simplify({"root_difference": lambda: abs(r - s), "product_roots": lambda: r * s,
                               "sum_squares": lambda: r**2 + s**2, "sum_reciprocals": lambda: 1 / r + 1 / s,
                               "sum_cubes": lambda: r**3 + s**3}[kind]())
    if fam == "polynomial":
        if kind == "evaluate":
            p = _tex(spans[0].split("=")[1])
            return p.subs(X, int(re.search(r"p\((-?\d+)\)", spans[1]).group(1)))
        if kind == "remainder":
            return sympy.rem(_tex(spans[0]), _tex(spans[1]), X)
        if kind == "compose":
            f, g = _tex(spans[0].split("=")[1]), _tex(spans[1].split("=")[1])
            a = int(re.search(r"g\((-?\d+)\)", spans[2]).group(1))
            return f.subs(X, g.subs(X, a))
        power = _tex(spans[1])
        k = sympy.Poly(_tex(spans[0]), X).degree()
        return sympy.expand(power).coeff(X, k)
    if fam == "number_theory":
        n = _ints(" ".join(spans))
        return {
            "gcd": lambda: sympy.gcd(n[0], n[1]), "gcd3": lambda: sympy.gcd(sympy.gcd(n[0], n[1]), n[2]),
            "mod": lambda: n[0] % n[1], "lcm": lambda: sympy.ilcm(n[0], n[1]),
            "num_divisors": lambda: sympy.divisor_count(n[0]), "sum_divisors": lambda: sympy.divisor_sigma(n[0]),
            "units_digit": lambda: sympy.Integer(n[0]) ** n[1] % 10,
            "last_two_digits": lambda: pow(n[0], n[1], 100),
            "pow_mod": lambda: _pow_mod_euler(n[0], n[1], n[2]),
            "inverse": lambda: sympy.mod_inverse(n[0], n[2]),
            "factorial_zeros": lambda: sympy.multiplicity(10, sympy.factorial(n[0])),
            "totient": lambda: sympy.totient(n[0]),
        }[kind]()
    if fam == "counting":
        n = _ints(text)
        if kind == "arrange":
            return sum(1 for _ in itertools.permutations(range(n[0])))
        if kind == "handshakes":
            return sum(1 for _ in itertools.combinations(range(n[0]), 2))
        if kind == "outfits":
            return len(list(itertools.product(range(n[0]), range(n[1]), range(n[2]))))
        if kind == "committee":
            return sympy.binomial(n[1], n[0])
        if kind == "officers":
            return sympy.ff(n[0], n[1])
        if kind == "letters":
            word = re.search(r"string ([A-Z]+)", text).group(1)
            return len(set(itertools.permutations(word)))
        if kind == "committee_split":
            return sympy.binomial(n[0], n[2]) * sympy.binomial(n[1], n[3])
        if kind == "at_least_one":
            people = ["b"] * n[0] + ["g"] * n[1]
            return sum(1 for c in itertools.combinations(range(len(people)), n[2])
                       if len({people[i] for i in c}) == 2)
        if kind in ("paths_through", "paths_avoid"):
            (m, k), point = n[2:4], (n[4], n[5])
            return _grid_paths(m, k, through=point) if kind == "paths_through" else _grid_paths(m, k, blocked=point)
        if kind.startswith("stars_bars"):
            k, total = n[0], n[-1]
            lo = 1 if kind.endswith("_pos") else 0
            ways = [1] + [0] * total  # ways[s]: tuples so far summing to s (convolution, no formula)
            for _ in range(k):
                ways = [sum(ways[s - v] for v in range(lo, s + 1)) for s in range(total + 1)]
            return ways[total]
        if kind == "not_adjacent":
            people = n[0]
            if people > 8:
                return sympy.factorial(people) - 2 * sympy.factorial(people - 1)
            return sum(1 for p in itertools.permutations(range(people)) if abs(p.index(0) - p.index(1)) != 1)
    if fam == "sequences":
        if kind in ("arith_term", "geom_term"):
            t = _terms(spans[0])
            k = _ordinal(text)
            return t[0] + (k - 1) * (t[1] - t[0]) if kind == "arith_term" else t[0] * (t[1] / t[0]) ** (k - 1)
        i = sympy.Symbol("i", integer=True)
        if kind in ("arith_sum", "geom_sum", "geom_sum_frac"):
            k, t = int(spans[0]), _terms(spans[1])
            if kind == "arith_sum":
                return sympy.summation(t[0] + i * (t[1] - t[0]), (i, 0, k - 1))
            return sympy.summation(t[0] * (t[1] / t[0]) ** i, (i, 0, k - 1))
        if kind == "geom_infinite":
            series = spans[0].replace("\\cdots", "")
            chunks = [c for c in re.findall(r"[+-]? ?[^+-]+", series) if c.strip(" +-")]
            t = [sympy.nsimplify(_tex(c.replace(" ", ""))) for c in chunks]
            return sympy.summation(t[0] * (t[1] / t[0]) ** i, (i, 0, sympy.oo))
        if kind in ("arith_two_terms", "arith_two_terms_sum"):
            a, d = sympy.symbols("a d")
            i1, i2 = _ordinal(text, 0), _ordinal(text, 1)
            v1, v2 = int(spans[0]), int(spans[1])
            sol = sympy.solve([a + (i1 - 1) * d - v1, a + (i2 - 1) * d - v2], [a, d])
            if kind == "arith_two_terms":
                return sol[a] + (_ordinal(text, 2) - 1) * sol[d]
            k = int(spans[2])
            return sympy.summation(sol[a] + i * sol[d], (i, 0, k - 1))
        if kind == "affine_recurrence":
            n = sympy.Function("a")
            m = re.search(r"a_\{n\+1\} = (-?\d+)a_n ([+-]) (\d+)", spans[1])
            p, q = int(m.group(1)), int(m.group(3)) * (1 if m.group(2) == "+" else -1)
            k = int(re.search(r"a_\{(\d+)\}", spans[-1]).group(1))
            nn = sympy.Symbol("n", integer=True)
            closed = sympy.rsolve(n(nn + 1) - p * n(nn) - q, n(nn), {n(1): int(spans[0].split("=")[1])})
            return closed.subs(nn, k)
        if kind == "fibonacci_like":
            a1, a2 = int(spans[0].split("=")[1]), int(spans[1].split("=")[1])
            k = int(re.search(r"a_\{(\d+)\}", spans[-1]).group(1))
            fib = sympy.fibonacci
            return a1 * fib(k - 2) + a2 * fib(k - 1)  # a_k = a_1 F_{k-2} + a_2 F_{k-1}
    if fam == "word":
        n = [sympy.Integer(v) for v in re.findall(r"\d+", text)]
        R = sympy.Rational
        return {
            "buy": lambda: n[0] * n[1], "share": lambda: n[0] / n[1],
            "change": lambda: n[4] - n[0] * n[1] - n[2] * n[3],
            "collect": lambda: n[0] - n[1] + n[2] * n[3],
            "discount": lambda: n[0] * (1 - R(n[1], 100)) - n[2],
            "savings": lambda: n[0] * n[1] * (1 - R(n[2], 100)),
            "pipes": lambda: 1 / (R(1, n[0]) + R(1, n[1])),
            "average_speed": lambda: (n[0] + n[2]) / (R(n[0], n[1]) + R(n[2], n[3])),
            "ages": lambda: sympy.solve([sympy.Symbol("A") - n[0] * sympy.Symbol("B"),
                                         sympy.Symbol("A") + n[1] - n[2] * (sympy.Symbol("B") + n[1])],
                                        sympy.symbols("A B"))[sympy.Symbol("A")],
            "mixture": lambda: (n[0] * n[1] + n[2] * n[3]) / (n[0] + n[2]),
            "round_trip": lambda: 2 * n[0] / (R(n[0], n[1]) + R(n[0], n[2])),
        }[kind]()
    raise AssertionError(f"no independent solver for {fam}/{kind}")


def _check(rec: dict) -> None:
    expected, got = solve(rec), _gold(rec["answer"])
    if isinstance(got, tuple):
        assert tuple(sympy.simplify(a - b) for a, b in zip(expected, got)) == (0, 0), rec
    else:
        assert sympy.simplify(sympy.sympify(expected) - got) == 0, (rec, expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_answers_verified_independently(family):
    for level in LEVELS:
        for seed in range(SEEDS_PER_LEVEL):
            _check(generate(family, level, seed))


def test_every_kind_is_verified_independently():
    first_of_kind = {}
    for family in FAMILIES:
        for level in LEVELS:
            for seed in range(40):
                rec = generate(family, level, seed)
                first_of_kind.setdefault((family, level, rec["kind"]), rec)
    assert len(first_of_kind) >= 60
    for rec in first_of_kind.values():
        _check(rec)


def test_format_and_canonical_answers():
    for family in FAMILIES:
        for level in LEVELS:
            rec = generate(family, level, 7)
            assert set(rec) >= {"problem", "answer", "answer_type", "family", "level", "seed"}
            assert rec["problem"].endswith("Put your final answer in \\boxed{}.")
            ans = rec["answer"]
            if rec["answer_type"] == "integer":
                assert re.fullmatch(r"-?\d+", ans), ans
            elif rec["answer_type"] == "fraction":
                m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", ans)
                assert m and Fraction(int(m.group(2)), int(m.group(3))).denominator == int(m.group(3)) > 1, ans
            else:
                assert rec["answer_type"] == "tuple" and ans.startswith("(") and ans.endswith(")")


def test_deterministic_across_processes():
    recs = [generate(f, lv, 123) for f in FAMILIES for lv in LEVELS]
    assert recs == [generate(f, lv, 123) for f in FAMILIES for lv in LEVELS]
    recs += [split_of(f, lv, s) for f in FAMILIES for lv in LEVELS for s in range(20)]
    code = ("import json; from exit_jax.envs.math.generator import generate, split_of, FAMILIES, LEVELS;"
            "print(json.dumps([generate(f, lv, 123) for f in FAMILIES for lv in LEVELS]"
            " + [split_of(f, lv, s) for f in FAMILIES for lv in LEVELS for s in range(20)]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import json
    assert json.loads(out.stdout) == recs
    assert len({generate("arith", 3, s)["problem"] for s in range(50)}) >= 45


def test_splits_are_disjoint_and_stable():
    train = math_tasks("train", 450)
    test = math_tasks("test", 90)
    assert len(train) == 450 and len(test) == 90
    train_text = {t.data["problem"] for t in train}
    test_text = {t.data["problem"] for t in test}
    assert len(train_text) == 450 and len(test_text) == 90  # de-duplicated
    assert not train_text & test_text
    assert not {t.id for t in train} & {t.id for t in test}
    for t in test[:20]:
        assert split_of(t.data["family"], t.data["level"], t.data["seed"]) == "test"
        assert t.domain == "math" and t.data["answer"]
    # Balanced over families x levels, and any prefix covers every family.
    combos = {(t.data["family"], t.data["level"]) for t in train}
    assert len(combos) == len(FAMILIES) * len(LEVELS)
    assert {t.data["family"] for t in train[:45]} == set(FAMILIES)
    # About 10% of problems land in test.
    labels = [split_of("word", 3, s) for s in range(400)]
    assert 15 <= labels.count("test") <= 70
    assert math_tasks("train", 30, families=["arith"], levels=[2], seed=1) != math_tasks(
        "train", 30, families=["arith"], levels=[2], seed=0)


def test_difficulty_scales_with_level():
    def size(rec):  # numbers to handle in the problem + digits in the answer
        return len(re.findall(r"\d+", rec["problem"])) + len(re.sub(r"\D", "", rec["answer"]))

    for family in FAMILIES:
        means = [sum(size(generate(family, lv, s)) for s in range(60)) / 60 for lv in LEVELS]
        assert means[4] > means[0] and means[3] + means[4] > means[0] + means[1] + 2, (family, means)
    # Non-integer answers only appear from level 3 on in arith and grow in share.
    frac = [sum(generate("arith", lv, s)["answer_type"] == "fraction" for s in range(100)) for lv in LEVELS]
    assert frac[0] == frac[1] == 0 and frac[4] > frac[2] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown math family"):
        generate("calculus", 1, 0)
    with pytest.raises(ValueError, match="1..5"):
        generate("arith", 6, 0)
    with pytest.raises(ValueError, match="split"):
        math_tasks("dev", 3)
    with pytest.raises(ValueError, match="distinct"):
        math_tasks("test", 300, families=["counting"], levels=[1])
    assert gen.BOXED_INSTRUCTION in generate("word", 1, 0)["problem"]
