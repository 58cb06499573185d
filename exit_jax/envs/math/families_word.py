"""Procedural family `word`: the project's own GSM-style story problems (docs/domains.md §1.2).

Levels add steps: one operation (1), two (2), a percentage plus a coupon (3), combined rates with
fractional answers (4), multi-step ages / mixtures / round trips (5). Numbers appear in the text in a
fixed order per template so the tests can recompute every answer from the rendered problem.
"""
from __future__ import annotations

import random
from fractions import Fraction

from exit_jax.envs.math.render import Problem

_NAMES = ["Maya", "Omar", "Lena", "Ravi", "Sofia", "Kenji", "Amara", "Tomas", "Ines", "Felix", "Zara", "Hugo",
          "Priya", "Mateo", "Nora", "Yusuf", "Chloe", "Ivan", "Leila", "Noah"]
_ITEMS = [("notebook", "notebooks"), ("pencil", "pencils"), ("apple", "apples"), ("ticket", "tickets"),
          ("plant", "plants"), ("candle", "candles"), ("mug", "mugs"), ("puzzle", "puzzles"), ("kite", "kites")]
_FRACTION_HINT = "Express your answer as an integer or a common fraction in lowest terms."


def word(rng: random.Random, level: int) -> Problem:
    name, other = rng.sample(_NAMES, 2)
    item, items = rng.choice(_ITEMS)
    kinds = {1: ["buy", "share"], 2: ["change", "collect"], 3: ["discount", "savings"],
             4: ["pipes", "average_speed"], 5: ["ages", "mixture", "round_trip"]}
    kind = rng.choice(kinds[level])
    if kind == "buy":
        n, p = rng.randint(2, 12), rng.randint(2, 15)
        return Problem(f"{name} buys {n} {items} that cost {p} dollars each. How many dollars does {name} "
                       "spend?", n * p, kind)
    if kind == "share":
        k, each = rng.randint(2, 9), rng.randint(2, 12)
        return Problem(f"{name} has {k * each} {items} and shares them equally among {k} friends. How many "
                       f"{items} does each friend get?", each, kind)
    if kind == "change":
        n, p, m, q = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 6), rng.randint(2, 9)
        bill = next(b for b in (20, 50, 100, 200) if b >= n * p + m * q)
        return Problem(f"{name} buys {n} {items} at {p} dollars each and {m} cakes at {q} dollars each, and "
                       f"pays with a {bill}-dollar bill. How much change, in dollars, does {name} get?",
                       bill - n * p - m * q, kind)
    if kind == "collect":
        a, b, c = rng.randint(10, 60), rng.randint(2, 9), rng.randint(1, 9)
        return Problem(f"{name} had {a} {items}. {name} gave {b} to {other}, then bought {c} packs with "
                       f"{b + 1} {items} in each pack. How many {items} does {name} have now?",
                       a - b + c * (b + 1), kind)
    if kind == "discount":
        pct = rng.choice([10, 20, 25, 30, 40, 50])
        price = rng.randint(2, 30) * 20
        coupon = rng.randint(1, 9)
        return Problem(f"A jacket costs {price} dollars. It is on sale for {pct}% off, and {name} also uses a "
                       f"{coupon}-dollar coupon on the sale price. How many dollars does {name} pay?",
                       price * (100 - pct) // 100 - coupon, kind)
    if kind == "savings":
        weekly, weeks, spent_pct = rng.randint(3, 20), rng.randint(4, 20), rng.choice([10, 20, 25, 50])
        total = weekly * weeks
        while total * spent_pct % 100:
            weeks += 1
            total = weekly * weeks
        return Problem(f"{name} saves {weekly} dollars every week for {weeks} weeks, then spends {spent_pct}% of "
                       f"the savings on {items}. How many dollars are left?",
                       total - total * spent_pct // 100, kind)
    if kind == "pipes":
        a, b = rng.sample(range(2, 13), 2)
        return Problem(f"One pipe can fill a tank in {a} hours, and a second pipe can fill it in {b} hours. "
                       f"How many hours does it take both pipes together to fill the tank? {_FRACTION_HINT}",
                       Fraction(a * b, a + b), kind)
    if kind == "average_speed":
        d1, d2 = rng.randint(2, 12) * 10, rng.randint(2, 12) * 10
        v1, v2 = (v * 10 for v in rng.sample(range(3, 13), 2))
        return Problem(f"A train travels {d1} km at {v1} km/h and then {d2} km at {v2} km/h. What is its average "
                       f"speed, in km/h, for the whole trip? {_FRACTION_HINT}",
                       Fraction(d1 + d2) / (Fraction(d1, v1) + Fraction(d2, v2)), kind)
    if kind == "ages":
        # Parent is k times as old now and m times as old in y years: k c + y = m (c + y), so
        # y = (k - m) c / (m - 1); c = (m - 1) t keeps y a positive integer.
        k = rng.randint(3, 6)
        m, t = rng.randint(2, k - 1), rng.randint(2, 8)
        child, y = (m - 1) * t, (k - m) * t
        return Problem(f"{name} is {k} times as old as {other}. In {y} years, {name} will be {m} times as old as "
                       f"{other}. How old is {name} now?", k * child, kind)
    if kind == "mixture":
        x, p, y, q = rng.randint(2, 10), rng.randint(1, 9) * 5, rng.randint(2, 10), rng.randint(1, 9) * 5
        return Problem(f"{name} mixes {x} liters of a {p}% salt solution with {y} liters of a {q}% salt solution. "
                       f"What percent of the mixture is salt? {_FRACTION_HINT}", Fraction(x * p + y * q, x + y), kind)
    d = rng.randint(2, 20) * 6  # round_trip
    v1, v2 = (v * 6 for v in rng.sample(range(2, 10), 2))
    return Problem(f"{name} drives {d} km to a lake at {v1} km/h and drives back the same way at {v2} km/h. "
                   f"What is the average speed, in km/h, for the round trip? {_FRACTION_HINT}",
                   Fraction(2 * d) / (Fraction(d, v1) + Fraction(d, v2)), kind)
