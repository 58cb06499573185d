"""Procedural families: number_theory, counting, sequences (docs/domains.md §1.2).

Each family is `f(rng: random.Random, level: int) -> Problem`; see families_algebra.py for the level idea.
Answers are computed directly (stdlib only); the tests recompute them independently with sympy and brute
force.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

from exit_jax.envs.math.render import Problem, nonzero, num, ordinal

_FRACTION_HINT = "Express your answer as an integer or a common fraction in lowest terms."


def _divisors(n: int) -> list:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _trailing_zeros_of_factorial(n: int) -> int:
    count, p = 0, 5
    while p <= n:
        count += n // p
        p *= 5
    return count


def _totient(n: int) -> int:
    return sum(1 for k in range(1, n + 1) if math.gcd(k, n) == 1)


def number_theory(rng: random.Random, level: int) -> Problem:
    kinds = {1: ["gcd", "mod"], 2: ["lcm", "num_divisors"], 3: ["pow_mod", "sum_divisors", "units_digit"],
             4: ["last_two_digits", "gcd3", "num_divisors"], 5: ["inverse", "factorial_zeros", "totient", "pow_mod"]}
    kind = rng.choice(kinds[level])
    if kind == "gcd":
        g = rng.randint(2, 12)
        a, b = g * rng.randint(2, 9), g * rng.randint(2, 9)
        return Problem(f"What is the greatest common divisor of ${a}$ and ${b}$?", math.gcd(a, b), kind)
    if kind == "mod":
        n, m = rng.randint(50, 999), rng.randint(3, 12)
        return Problem(f"What is the remainder when ${n}$ is divided by ${m}$?", n % m, kind)
    if kind == "lcm":
        a, b = rng.randint(4, 40), rng.randint(4, 40)
        return Problem(f"What is the least common multiple of ${a}$ and ${b}$?", math.lcm(a, b), kind)
    if kind == "num_divisors":
        n = rng.randint(12, 240) if level == 2 else rng.randint(1000, 99999)
        return Problem(f"How many positive divisors does ${n}$ have?", len(_divisors(n)), kind)
    if kind == "sum_divisors":
        n = rng.randint(12, 500)
        return Problem(f"What is the sum of all positive divisors of ${n}$?", sum(_divisors(n)), kind)
    if kind == "units_digit":
        a, b = rng.randint(2, 99), rng.randint(10, 200)
        return Problem(f"What is the units digit of ${a}^{{{b}}}$?", pow(a, b, 10), kind)
    if kind == "pow_mod":
        if level == 3:
            a, b, m = rng.randint(2, 20), rng.randint(5, 30), rng.randint(5, 20)
        else:
            a, b, m = rng.randint(2, 99), rng.randint(1000, 10**6), rng.choice([97, 101, 103, 107, 109, 113, 127])
        return Problem(f"What is the remainder when ${a}^{{{b}}}$ is divided by ${m}$?", pow(a, b, m), kind)
    if kind == "last_two_digits":
        a, b = rng.randint(3, 99), rng.randint(20, 999)
        return Problem(f"What are the last two digits of ${a}^{{{b}}}$? Give them as a number from 0 to 99.",
                       pow(a, b, 100), kind)
    if kind == "gcd3":
        g = rng.randint(2, 30)
        a, b, c = (g * rng.randint(3, 40) for _ in range(3))
        return Problem(f"What is the greatest common divisor of ${a}$, ${b}$ and ${c}$?",
                       math.gcd(a, b, c), kind)
    if kind == "inverse":
        m = rng.randint(50, 997)
        a = rng.randint(2, m - 1)
        while math.gcd(a, m) != 1:
            a = rng.randint(2, m - 1)
        return Problem(f"Find the smallest positive integer $x$ such that ${a}x \\equiv 1 \\pmod{{{m}}}$.",
                       pow(a, -1, m), kind)
    if kind == "factorial_zeros":
        n = rng.randint(100, 2000)
        return Problem(f"How many zeros are at the end of the decimal representation of ${n}!$?",
                       _trailing_zeros_of_factorial(n), kind)
    n = rng.randint(100, 2000)  # totient
    return Problem(f"How many positive integers less than or equal to ${n}$ are relatively prime to ${n}$?",
                   _totient(n), kind)


# ---------------------------------------------------------------------------------------------------

def _multiset_perms(word: str) -> int:
    out = math.factorial(len(word))
    for ch in set(word):
        out //= math.factorial(word.count(ch))
    return out


def _paths(m: int, n: int) -> int:
    return math.comb(m + n, m)


def counting(rng: random.Random, level: int) -> Problem:
    kinds = {1: ["arrange", "handshakes", "outfits"], 2: ["committee", "officers"],
             3: ["letters", "committee_split"], 4: ["paths_through", "at_least_one", "letters"],
             5: ["paths_avoid", "stars_bars", "not_adjacent"]}
    kind = rng.choice(kinds[level])
    group = rng.choice(["club", "class", "team", "choir", "chess club", "book club"])
    if kind == "arrange":
        n, things = rng.randint(3, 8), rng.choice(["different books", "different paintings", "distinct vases",
                                                    "different trophies", "different photos", "distinct plants"])
        return Problem(f"In how many ways can ${n}$ {things} be arranged in a row on a shelf?",
                       math.factorial(n), kind)
    if kind == "handshakes":
        n = rng.randint(4, 40)
        return Problem(f"At a party, each of ${n}$ people shakes hands exactly once with each of the others. "
                       "How many handshakes take place?", math.comb(n, 2), kind)
    if kind == "outfits":
        s, p, h = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
        return Problem(f"A closet holds ${s}$ shirts, ${p}$ pairs of pants and ${h}$ hats. An outfit is one "
                       "shirt, one pair of pants and one hat. How many different outfits are possible?",
                       s * p * h, kind)
    if kind == "committee":
        n, k = rng.randint(6, 25), rng.randint(2, 6)
        return Problem(f"In how many ways can a committee of ${k}$ people be chosen from a {group} of ${n}$ "
                       "people?", math.comb(n, k), kind)
    if kind == "officers":
        n, k = rng.randint(5, 25), rng.randint(2, 4)
        return Problem(f"A {group} has ${n}$ members. In how many ways can it choose ${k}$ officers for ${k}$ "
                       "different positions if no member can hold more than one position?", math.perm(n, k), kind)
    if kind == "letters":
        length = rng.randint(5, 6) if level == 3 else rng.randint(7, 8)
        letters = rng.sample("ABCDEGHKLMNPRST", rng.randint(2, 4))
        word = "".join(rng.choice(letters) for _ in range(length))
        return Problem(f"How many distinct arrangements of the letters in the string {word} are there?",
                       _multiset_perms(word), kind)
    if kind == "committee_split":
        b, g = rng.randint(3, 9), rng.randint(3, 9)
        kb, kg = rng.randint(1, min(3, b)), rng.randint(1, min(3, g))
        return Problem(f"A school has ${b}$ boys and ${g}$ girls on its math team. In how many ways can it "
                       f"choose ${kb}$ {'boy' if kb == 1 else 'boys'} and ${kg}$ "
                       f"{'girl' if kg == 1 else 'girls'} for a competition?",
                       math.comb(b, kb) * math.comb(g, kg), kind)
    if kind == "at_least_one":
        b, g = rng.randint(3, 9), rng.randint(3, 9)
        k = rng.randint(2, min(6, b + g - 1))
        ans = math.comb(b + g, k) - math.comb(b, k) - math.comb(g, k)
        return Problem(f"A club has ${b}$ boys and ${g}$ girls. In how many ways can a ${k}$-person committee "
                       "be chosen that includes at least one boy and at least one girl?", ans, kind)
    if kind in ("paths_through", "paths_avoid"):
        m, n = rng.randint(3, 8), rng.randint(3, 8)
        a, b = rng.randint(1, m - 1), rng.randint(1, n - 1)
        through = _paths(a, b) * _paths(m - a, n - b)
        verb = "pass through" if kind == "paths_through" else "avoid"
        ans = through if kind == "paths_through" else _paths(m, n) - through
        return Problem(f"A path on the grid goes from $(0,0)$ to $({m},{n})$, each step moving one unit right "
                       f"or one unit up. How many such paths {verb} the point $({a},{b})$?", ans, kind)
    if kind == "stars_bars":
        k, n = rng.randint(3, 6), rng.randint(6, 25)
        positive = rng.random() < 0.5
        ans = math.comb(n - 1, k - 1) if positive else math.comb(n + k - 1, k - 1)
        kind_word = "positive" if positive else "nonnegative"
        variables = ", ".join(f"x_{i}" for i in range(1, k + 1))
        total = " + ".join(f"x_{i}" for i in range(1, k + 1))
        return Problem(f"How many ordered ${k}$-tuples $({variables})$ of {kind_word} integers satisfy "
                       f"${total} = {n}$?", ans, kind + ("_pos" if positive else "_nonneg"))
    n = rng.randint(4, 9)  # not_adjacent
    ans = math.factorial(n) - 2 * math.factorial(n - 1)
    return Problem(f"In how many ways can ${n}$ people, including Alice and Bob, stand in a row if Alice and "
                   "Bob refuse to stand next to each other?", ans, kind)


# ---------------------------------------------------------------------------------------------------

def _terms(values) -> str:
    return ", ".join(num(v) for v in values)


def sequences(rng: random.Random, level: int) -> Problem:
    kinds = {1: ["arith_term"], 2: ["arith_sum", "geom_term"], 3: ["arith_two_terms", "geom_sum"],
             4: ["affine_recurrence", "fibonacci_like"], 5: ["geom_sum_frac", "geom_infinite", "arith_two_terms_sum"]}
    kind = rng.choice(kinds[level])
    if kind in ("arith_term", "arith_sum"):
        a, d = rng.randint(-20, 30), nonzero(rng, -9, 9)
        k = rng.randint(8, 30) if kind == "arith_term" else rng.randint(10, 40)
        first = [a + i * d for i in range(3 if level == 1 else 4)]
        if kind == "arith_term":
            return Problem(f"What is the {ordinal(k)} term of the arithmetic sequence ${_terms(first)}, \\ldots$?",
                           a + (k - 1) * d, kind)
        return Problem(f"What is the sum of the first ${k}$ terms of the arithmetic sequence "
                       f"${_terms(first)}, \\ldots$?", k * (2 * a + (k - 1) * d) // 2, kind)
    if kind in ("geom_term", "geom_sum"):
        a, r = nonzero(rng, -5, 5), rng.choice([-3, -2, 2, 3, 4])
        k = rng.randint(5, 9)
        first = [a * r ** i for i in range(3)]
        if kind == "geom_term":
            return Problem(f"What is the {ordinal(k)} term of the geometric sequence ${_terms(first)}, \\ldots$?",
                           a * r ** (k - 1), kind)
        return Problem(f"What is the sum of the first ${k}$ terms of the geometric sequence "
                       f"${_terms(first)}, \\ldots$?", sum(a * r ** i for i in range(k)), kind)
    if kind in ("arith_two_terms", "arith_two_terms_sum"):
        a, d = rng.randint(-30, 30), nonzero(rng, -12, 12)
        i, j = sorted(rng.sample(range(2, 15), 2))
        k = rng.randint(16, 40)
        given = (f"The {ordinal(i)} term of an arithmetic sequence is ${a + (i - 1) * d}$ and the {ordinal(j)} "
                 f"term is ${a + (j - 1) * d}$.")
        if kind == "arith_two_terms":
            return Problem(f"{given} What is the {ordinal(k)} term?", a + (k - 1) * d, kind)
        return Problem(f"{given} What is the sum of the first ${k}$ terms?", k * (2 * a + (k - 1) * d) // 2, kind)
    if kind == "affine_recurrence":
        a1, p, q = rng.randint(-5, 9), rng.choice([-2, 2, 3]), nonzero(rng, -9, 9)
        k = rng.randint(5, 10)
        v = a1
        for _ in range(k - 1):
            v = p * v + q
        rule = f"a_{{n+1}} = {p}a_n {'+' if q > 0 else '-'} {abs(q)}"
        return Problem(f"A sequence is defined by $a_1 = {a1}$ and ${rule}$ for $n \\ge 1$. What is $a_{{{k}}}$?",
                       v, kind)
    if kind == "fibonacci_like":
        x, y, k = rng.randint(-5, 9), rng.randint(-5, 9), rng.randint(8, 15)
        vals = [x, y]
        while len(vals) < k:
            vals.append(vals[-1] + vals[-2])
        return Problem(f"A sequence satisfies $a_1 = {x}$, $a_2 = {y}$, and $a_n = a_{{n-1}} + a_{{n-2}}$ for "
                       f"$n \\ge 3$. What is $a_{{{k}}}$?", vals[k - 1], kind)
    q = rng.randint(2, 5)
    r = Fraction(rng.choice([p for p in range(-q + 1, q) if p != 0 and math.gcd(p, q) == 1]), q)
    a = Fraction(nonzero(rng, -12, 12), rng.choice([1, 1, 2, 3]))
    first = [a * r ** i for i in range(3)]
    if kind == "geom_infinite":
        series = " + ".join(num(t) for t in first).replace("+ -", "- ")
        return Problem(f"Find the sum of the infinite geometric series ${series} + \\cdots$. {_FRACTION_HINT}",
                       a / (1 - r), kind)
    k = rng.randint(4, 7)
    return Problem(f"What is the sum of the first ${k}$ terms of the geometric sequence ${_terms(first)}, \\ldots$? "
                   f"{_FRACTION_HINT}", sum(a * r ** i for i in range(k)), kind)
