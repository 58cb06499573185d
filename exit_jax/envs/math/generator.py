"""The offline math task source: procedural problems, deterministic by seed (docs/domains.md §1.2).

`generate(family, level, seed)` renders one MATH-style problem with an exact canonical answer.
`math_tasks(split, n, ...)` builds a balanced task list over families x levels, de-duplicated, from a
train/test split that is a stable hash (sha256, not Python's salted `hash`) of the family, the level and
the rendered problem. The rendered problem is a function of the seed; hashing it rather than the seed
keeps the splits disjoint even when two seeds happen to render the same problem (common at level 1).

Never report numbers on these tasks as MATH numbers (docs/domains.md §1.2).
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable, Sequence

from exit_jax.envs.base import Task
from exit_jax.envs.math import families_algebra, families_discrete, families_word
from exit_jax.envs.math.answers import canonical
from exit_jax.envs.math.render import Problem

BOXED_INSTRUCTION = "Put your final answer in \\boxed{}."
LEVELS = (1, 2, 3, 4, 5)
FAMILIES: dict[str, Callable[[random.Random, int], Problem]] = {
    "arith": families_algebra.arith,
    "linear_eq": families_algebra.linear_eq,
    "system2": families_algebra.system2,
    "quadratic": families_algebra.quadratic,
    "number_theory": families_discrete.number_theory,
    "counting": families_discrete.counting,
    "sequences": families_discrete.sequences,
    "polynomial": families_algebra.polynomial,
    "word": families_word.word,
}
SPLITS = ("train", "test")
TEST_BUCKETS = frozenset({0})  # stable hash % 10 in here -> test (10% of problems)


def _stable_int(*parts) -> int:
    data = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def _check_family_level(family: str, level: int) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown math family {family!r}; expected one of {sorted(FAMILIES)}")
    if level not in LEVELS:
        raise ValueError(f"math level must be an integer in 1..5, got {level!r}")


def _answer_type(answer) -> str:
    if isinstance(answer, tuple):
        return "tuple"
    return "integer" if canonical(answer).lstrip("-").isdigit() else "fraction"


def generate(family: str, level: int, seed: int) -> dict:
    """One problem: {problem, answer, answer_type, family, level, seed, kind}. Pure function of its args."""
    _check_family_level(family, level)
    # A private Random seeded from a stable hash: no global state, the same problem on every machine.
    rng = random.Random(_stable_int("exit_jax.math", family, level, seed))
    prob = FAMILIES[family](rng, level)
    return {
        "problem": f"{prob.text} {BOXED_INSTRUCTION}",
        "answer": canonical(prob.answer),
        "answer_type": _answer_type(prob.answer),
        "family": family,
        "level": level,
        "seed": seed,
        "kind": prob.kind,
    }


def split_of_problem(family: str, level: int, problem: str) -> str:
    """"train" or "test" for a rendered problem."""
    return "test" if _stable_int(family, level, problem) % 10 in TEST_BUCKETS else "train"


def split_of(family: str, level: int, seed: int) -> str:
    """"train" or "test" for generate(family, level, seed)."""
    return split_of_problem(family, level, generate(family, level, seed)["problem"])


def to_task(record: dict) -> Task:
    """A generated record as a Task (domain "math"; id names family, level and seed)."""
    tid = f"math/{record['family']}/L{record['level']}/{record['seed']}"
    return Task(id=tid, domain="math", data=dict(record, source="procedural"))


def math_tasks(split: str, n: int, families: Sequence[str] = tuple(FAMILIES), levels: Sequence[int] = LEVELS,
               seed: int = 0) -> list[Task]:
    """`n` distinct tasks of `split`, spread evenly over families x levels (round robin).

    `seed` picks a disjoint stream of generator seeds (seed * 10**7 + k), so different `seed`s give
    different task lists; the split of each problem does not depend on it.
    """
    if split not in SPLITS:
        raise ValueError(f"math split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"number of math tasks must be >= 0, got {n}")
    combos = [(f, lv) for f in families for lv in levels]
    for f, lv in combos:
        _check_family_level(f, lv)
    if not combos and n:
        raise ValueError("math_tasks needs at least one family and one level")
    quotas = [n // len(combos) + (i < n % len(combos)) for i in range(len(combos))] if combos else []
    seen: set = set()
    tasks: list[Task] = []
    per_combo: list[list[Task]] = []
    for (family, level), quota in zip(combos, quotas):
        found: list[Task] = []
        k, misses = 0, 0
        while len(found) < quota:
            record = generate(family, level, seed * 10**7 + k)
            k += 1
            text = record["problem"]
            if split_of_problem(family, level, text) != split or text in seen:
                misses += 1
                if misses > 50 * quota + 1000:
                    raise ValueError(f"math family {family!r} level {level} yields only {len(found)} distinct "
                                     f"{split} problems of the {quota} requested; ask for fewer tasks")
                continue
            seen.add(text)
            found.append(to_task(record))
        per_combo.append(found)
    # Interleave so that any prefix of the list covers every family and level.
    for i in range(max(quotas, default=0)):
        tasks.extend(group[i] for group in per_combo if i < len(group))
    return tasks
