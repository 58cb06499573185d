"""The paper's 100 train / 100 test split of BFCL multi_turn_base (paper §5.1, Appendix A).

The paper stratifies "by total turn count and API set" but does not publish its split. We rebuild one:
strata are (number of user turns, sorted involved_classes); each stratum's entries are shuffled with a
fixed seed and dealt half to train, half to test; the odd ones out of odd-sized strata are then dealt half
and half, in the way (best of N_TRIALS seeded shuffles) that best evens out the per-turn-count and
per-class totals. The result ships as `split_multi_turn_base.json` beside this file; `make_split(seed=0)`
regenerates it exactly.
"""
from __future__ import annotations

import collections
import importlib.resources
import json
import random
from typing import Sequence

from exit_jax.envs import base
from exit_jax.envs.tool_use import bfcl, data

SPLIT_FILE = "split_multi_turn_base.json"
CATEGORY = "multi_turn_base"
SEED = 0
N_TRIALS = 1000


def stratum(task: base.Task) -> tuple[int, tuple[str, ...]]:
    entry = task.data["entry"]
    return len(entry["question"]), tuple(sorted(entry["involved_classes"]))


def _features(task: base.Task) -> list:
    n_turns, classes = stratum(task)
    return [("turns", n_turns)] + [("class", c) for c in classes]


def _weight(feature) -> int:
    # The turn count is the first stratification key: it weighs like several classes.
    return 4 if feature[0] == "turns" else 1


def _balance_counts(train: Sequence[str], test: Sequence[str], by_id) -> collections.Counter:
    """Per feature: (# in train) - (# in test)."""
    diff = collections.Counter()
    for sign, ids in ((1, train), (-1, test)):
        for i in ids:
            for f in _features(by_id[i]):
                diff[f] += sign
    return diff


def _id_order(task_id: str) -> tuple[str, int]:
    prefix, _, number = task_id.rpartition("_")
    return prefix, int(number) if number.isdigit() else -1


def make_split(tasks: Sequence[base.Task] | None = None, seed: int = SEED) -> dict:
    """{"train": ids, "test": ids}, halves stratified by (user-turn count, involved classes)."""
    tasks = bfcl.load_entries(CATEGORY) if tasks is None else list(tasks)
    rng = random.Random(seed)
    groups = collections.defaultdict(list)
    for task in sorted(tasks, key=lambda t: _id_order(t.id)):
        groups[stratum(task)].append(task.id)
    train, test, pool = [], [], []
    for key in sorted(groups):
        ids = groups[key]
        rng.shuffle(ids)
        half = len(ids) // 2
        train += ids[:half]
        test += ids[half:2 * half]
        pool += ids[2 * half:]  # at most one per stratum
    # Deal the odd ones out half and half: of N_TRIALS random deals (from the same seeded rng), keep the
    # one whose halves differ least in per-turn-count and per-class totals.
    by_id = {t.id: t for t in tasks}
    fixed = _balance_counts(train, test, by_id)
    best, best_score = None, None
    for _ in range(N_TRIALS):
        rng.shuffle(pool)
        deal = (pool[:len(pool) // 2], pool[len(pool) // 2:])
        counts = _balance_counts(*deal, by_id)
        score = sum(_weight(f) * abs(fixed[f] + counts[f]) for f in set(fixed) | set(counts))
        if best_score is None or score < best_score:
            best, best_score = (list(deal[0]), list(deal[1])), score
    train += best[0]
    test += best[1]
    return {"train": sorted(train, key=_id_order), "test": sorted(test, key=_id_order)}


def load_split() -> dict:
    """The shipped split: {"train": [ids], "test": [ids], plus provenance fields}."""
    path = importlib.resources.files("exit_jax.envs.tool_use") / SPLIT_FILE
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"The package file {SPLIT_FILE} is missing from "
                                "exit_jax/envs/tool_use; reinstall exit_jax.") from None
    if not isinstance(split.get("train"), list) or not isinstance(split.get("test"), list):
        raise ValueError(f"{SPLIT_FILE} must hold 'train' and 'test' lists of entry ids.")
    return split


def split_entries(part: str, category: str = CATEGORY) -> list[base.Task]:
    """The tasks of the "train" or "test" half of a multi-turn category. Entry N of every category is a
    variant of multi_turn_base_N (same scenario and classes for 193-194 of 200; a function or parameter
    withheld, or long context added), so every category is split by entry number as multi_turn_base is:
    a test scenario is never trained on in another category's guise."""
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}.")
    data.check_category(category)
    numbers = [_id_order(i)[1] for i in load_split()[part]]
    return bfcl.load_entries(category, [f"{category}_{n}" for n in numbers])


def write_split(path: str, seed: int = SEED) -> dict:
    """Regenerates the split file (run once when the pinned bfcl-eval version changes)."""
    split = {"source": f"bfcl-eval {data.PINNED_VERSION}, {CATEGORY}", "seed": seed,
             "stratified_by": "number of user turns, sorted involved_classes",
             **make_split(seed=seed)}
    with open(path, "w") as f:
        json.dump(split, f, indent=1)
        f.write("\n")
    return split
