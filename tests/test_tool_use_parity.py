"""Our executor + checker agree with BFCL's official multi-turn checker on varied trajectories.

BFCL's checker (from the bfcl-eval wheel) is the reference peer here only: it `eval`s call strings and
caches instances in module globals, so the library never uses it (docs/domains.md §2.4). The trajectories are
trusted strings made from the ground truth: one argument changed, a call dropped, duplicated or borrowed
from another turn, a turn left empty, or a turn's calls split over two steps.
"""
import ast
import random

from exit_jax.envs import base
from exit_jax.envs.tool_use import bfcl, data
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

KINDS = ("perturb", "drop", "extra", "skip_turn", "split", "dup")


def _perturb(call: str, rng: random.Random) -> str:
    node = ast.parse(call, mode="eval").body
    slots = [(kw, "value") for kw in node.keywords] + [(node.args, i) for i in range(len(node.args))]
    rng.shuffle(slots)
    for holder, key in slots:
        value = ast.literal_eval(getattr(holder, key) if isinstance(key, str) else holder[key])
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, str):
            new = value + "_x"
        elif isinstance(value, (int, float)):
            new = value + 1
        else:
            continue
        if isinstance(key, str):
            setattr(holder, key, ast.Constant(new))
        else:
            holder[key] = ast.Constant(new)
        return ast.unparse(node)
    return call


def _variant(ground_truth: list, kind: str, rng: random.Random) -> list[list[list[str]]]:
    """Per turn, the model's steps (each a list of call strings)."""
    turns = [list(t) for t in ground_truth]
    nonempty = [i for i, t in enumerate(turns) if t]
    t = rng.choice(nonempty)
    j = rng.randrange(len(turns[t]))
    if kind == "perturb":
        turns[t][j] = _perturb(turns[t][j], rng)
    elif kind == "drop":
        del turns[t][j]
    elif kind == "extra":
        turns[t].insert(j, turns[rng.choice(nonempty)][0])
    elif kind == "skip_turn":
        turns[t] = []
    elif kind == "dup":
        turns[t].append(turns[t][j])
    steps = []
    for calls in turns:
        cut = rng.randrange(1, len(calls) + 1) if (kind == "split" and calls) else len(calls)
        steps.append([s for s in (calls[:cut], calls[cut:]) if s])
    return steps


def test_agrees_with_bfcl_official_checker():
    rng = random.Random(0)
    n_valid = n = 0
    for category in data.CATEGORIES:
        for task in bfcl.load_entries(category)[:60]:
            for kind in rng.sample(KINDS, 2):
                steps = _variant(task.data["ground_truth"], kind, rng)
                replies = [r for turn in steps for r in ["[" + ", ".join(s) + "]" for s in turn] + ["ok"]]
                _, result = base.replay(bfcl.MultiTurnEnv(task), replies)
                official = multi_turn_checker(steps, task.data["ground_truth"], task.data["entry"],
                                              category, f"exit_jax_parity_{n}")
                assert (result.reward == 1.0) == official["valid"], (task.id, kind, result.info["reason"])
                n_valid += official["valid"]
                n += 1
    assert 0.2 * n < n_valid < 0.8 * n  # both outcomes are well represented
