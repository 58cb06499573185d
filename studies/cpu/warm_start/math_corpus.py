"""Procedurally written attempts and revisions for the math domain, for the supervised warm start.

A tiny model trained from scratch knows neither the `\\boxed{}` format nor the self-iteration prompts, so
it is first taught, by SFT, replies of three kinds:

- "attempt": the base prompt (`make_env(task).reset()`) -> a short worked reply ending in `\\boxed{}`,
  correct with probability `p_correct`, otherwise carrying one setup mistake (a misread number or a wrong
  operation) that propagates to a wrong answer. The warm-started policy is therefore imperfect, and GRPO
  has reward variance to learn from.
- "improve": the self-improvement conversation (paper §4.2, Appendix B), built by the same function the
  ExIt episodes use (`curriculum.episodes.replay_episode`), with a previous right or wrong reply -> a
  revision that fixes a wrong answer with probability `p_fix` and keeps a right one with `p_keep`.
- "diverge": the self-divergence prompt (paper §4.2) -> the three-part reply that prompt asks for.

Replies are kept to one line of working: `<step>, <step>. The answer is \\boxed{x}.` The working is a
trace of small operations (`39 - 3 = 36`) that the model can learn one at a time; problems whose text we
do not parse get a bare `The answer is \\boxed{x}.`. A correct reply always boxes the task's gold answer
string, so the grader scores it 1 whatever our parser did. The traces and their parsers are in
`studies.cpu.warm_start.math_traces`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from exit_jax.curriculum import episodes
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.envs.base import Env, Task
from exit_jax.envs.math.answers import canonical
from exit_jax.envs.math.generator import BOXED_INSTRUCTION
from studies.cpu.warm_start import math_traces as traces
from studies.cpu.warm_start.example import Example

KINDS = ("attempt", "improve", "diverge", "drill")


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    # attempt, improve, diverge, drill. Attempts and drills carry most of the arithmetic per token (short
    # prompts); the self-iteration kinds mainly teach the two prompts' formats.
    kind_weights: tuple = (0.45, 0.2, 0.05, 0.3)
    p_correct: float = 0.6  # an attempt (and a previous reply, and a divergent reply) is right
    p_fix: float = 0.6  # a revision of a wrong previous reply is right
    p_keep: float = 0.85  # a revision of a right previous reply stays right
    p_copy_wrong: float = 0.4  # a wrong revision of a wrong reply repeats it rather than recomputing

    def __post_init__(self):
        if len(self.kind_weights) != len(KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError(f"CorpusConfig.kind_weights must be {len(KINDS)} non-negative weights for "
                             f"{KINDS}, got {self.kind_weights!r}.")
        for name in ("p_correct", "p_fix", "p_keep", "p_copy_wrong"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CorpusConfig.{name} must be in [0, 1], got {getattr(self, name)!r}.")


# ---------------------------------------------------------------------------------------------------
# Replies.

def _slip(rng: np.random.Generator, value: Fraction) -> Fraction:
    """A plausible arithmetic mistake: off by one, two or ten, or a dropped minus sign."""
    choices = [1, -1, 2, -2, 10, -10] + ([-2 * value] if value < 0 and value.denominator == 1 else [])
    return Fraction(choices[int(rng.integers(len(choices)))])


def _wrong_value(rng: np.random.Generator, gold):
    if isinstance(gold, tuple):
        i = int(rng.integers(len(gold)))
        return tuple(_wrong_value(rng, g) if j == i else g for j, g in enumerate(gold))
    if gold.denominator != 1 and rng.random() < 0.5:
        nudged = Fraction(gold.numerator + (1 if rng.random() < 0.5 else -1), gold.denominator)
        return nudged or Fraction(1, gold.denominator)
    return gold + _slip(rng, gold)


def _boxed(value) -> str:
    return f"The answer is \\boxed{{{canonical(value)}}}."


_SWAPS = {"+": "-", "-": "+", "*": "+", "/": "*"}


def _misread(rng: np.random.Generator, sol: traces.Solution) -> traces.Solution:
    """The same trace with one setup mistake: a misread number or a wrong operation.

    Every line of the working stays a true statement, so wrong replies teach no false arithmetic facts;
    the mistake lies in what was computed, which is what RL (and a revision) can learn to avoid.
    """
    i = int(rng.integers(len(sol.ops)))
    op = sol.ops[i]
    literals = [j for j, a in enumerate(op.args) if not isinstance(a, traces.Ref)]
    if op.name in _SWAPS and (not literals or rng.random() < 0.3):
        return sol._replace(ops=sol.ops[:i] + (op._replace(name=_SWAPS[op.name]),) + sol.ops[i + 1:])
    if not literals:
        return sol
    j = literals[int(rng.integers(len(literals)))]
    value = op.args[j]
    new = max(Fraction(2), value + _slip(rng, value)) if op.name in traces.INTEGER_ARGS else value + _slip(rng, value)
    args = op.args[:j] + (new,) + op.args[j + 1:]
    return sol._replace(ops=sol.ops[:i] + (op._replace(args=args),) + sol.ops[i + 1:])


def attempt_reply(task: Task, rng: np.random.Generator, correct: bool) -> str:
    """A one-line worked reply; a wrong one carries one setup mistake (a bare wrong answer without a trace)."""
    sol, gold = traces.solution(task), traces.gold(task)
    if correct:
        if sol is None:
            return f"The answer is \\boxed{{{task.data['answer']}}}."
        return f"{traces.working(sol.ops, traces.run(sol.ops))}. The answer is \\boxed{{{task.data['answer']}}}."
    if sol is not None:
        for _ in range(8):  # a mistake can cancel out (e.g. inside a gcd); then make another
            wrong_sol = _misread(rng, sol)
            try:
                values = traces.run(wrong_sol.ops)
            except (ValueError, ZeroDivisionError, OverflowError):
                continue
            wrong = traces.answer(values, wrong_sol.out)
            if wrong != gold:
                return f"{traces.working(wrong_sol.ops, values)}. {_boxed(wrong)}"
    if gold is None:  # not a plain number: any other answer is wrong
        return "The answer is \\boxed{0}." if str(task.data["answer"]) != "0" else "The answer is \\boxed{1}."
    return _boxed(_wrong_value(rng, gold))


KEEP_PREFIX = "The current response looks right."
REDO_PREFIX = "Let me redo the work."


def revision(task: Task, rng: np.random.Generator, previous: str, previous_correct: bool,
             config: CorpusConfig) -> tuple[str, bool]:
    """(revised reply, whether it is right). Keeping a reply repeats it; otherwise the work is redone."""
    p_right = config.p_keep if previous_correct else config.p_fix
    right = bool(rng.random() < p_right)
    if right == previous_correct and (right or rng.random() < config.p_copy_wrong):
        return f"{KEEP_PREFIX} {strip_prefixes(previous)}", right
    return f"{REDO_PREFIX} {attempt_reply(task, rng, right)}", right


def strip_prefixes(reply: str) -> str:
    """The worked answer of a reply without the revision phrases (a kept reply is not re-prefixed)."""
    reply = reply.strip()
    while True:
        for prefix in (KEEP_PREFIX, REDO_PREFIX):
            if reply.startswith(prefix):
                reply = reply[len(prefix):].lstrip()
                break
        else:
            return reply


_APPROACHES = ("works through the steps in order", "states the answer directly", "redoes the arithmetic")


def divergent_reply(task: Task, rng: np.random.Generator, correct: bool) -> str:
    """The three parts the self-divergence prompt asks for (paper §4.2), one short sentence each."""
    old, new = rng.choice(len(_APPROACHES), size=2, replace=False)
    return (f"The current response {_APPROACHES[old]}. Instead, this response {_APPROACHES[new]}. "
            f"{attempt_reply(task, rng, correct)}")


_TEX = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}


def drill_task(task: Task, rng: np.random.Generator) -> Task | None:
    """One arithmetic step of the task's working, posed as an `arith` problem (`Compute $9 \\times 3$.`).

    Short prompts spend more of the SFT compute on the arithmetic facts the working needs than whole
    solutions do. None when the task has no arithmetic step.
    """
    sol = traces.solution(task)
    steps = [i for i, op in enumerate(sol.ops) if op.name in _TEX] if sol else []
    if not steps:
        return None
    i = steps[int(rng.integers(len(steps)))]
    values = traces.run(sol.ops)
    a, b = (values[x] if isinstance(x, traces.Ref) else x for x in sol.ops[i].args)
    if a.denominator != 1 or b.denominator != 1:
        return None
    text = f"{traces.fmt(a, operand=True)} {_TEX[sol.ops[i].name]} {traces.fmt(b, operand=True)}"
    problem = f"Compute ${text}$. {BOXED_INSTRUCTION}"
    return Task(id=f"drill/{text}", domain="math", data={
        "problem": problem, "answer": canonical(values[i]), "family": "arith", "level": 0, "kind": "drill"})


def self_iteration_messages(task: Task, make_env: Callable[[Task], Env], previous: str, step: str,
                            depth: int = 0) -> list:
    """The prompt the ExIt episodes build for an improve / diverge step on `previous` (paper §4.1-4.2)."""
    turns = [{"response": previous, "depth": depth, "score": 0.0, "failed": False, "feedback": ""}]
    ep = episodes.replay_episode(task, make_env, CurriculumConfig(), turns, start_turn=1, step=step)
    return [dict(m) for m in ep.prompt]


def examples(tasks: Sequence[Task], make_env: Callable[[Task], Env], rng: np.random.Generator, n: int,
             config: CorpusConfig = CorpusConfig()) -> list[Example]:
    """`n` examples on tasks drawn uniformly, kinds drawn by `config.kind_weights`."""
    if not tasks:
        raise ValueError("math_corpus.examples needs at least one task.")
    weights = np.asarray(config.kind_weights, np.float64)
    out = []
    for _ in range(n):
        task = tasks[int(rng.integers(len(tasks)))]
        kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
        if kind == "drill":
            drill = drill_task(task, rng)
            if drill is not None:
                out.append(Example(list(make_env(drill).reset()), attempt_reply(drill, rng, True), kind, 1.0))
                continue
            kind = "attempt"
        if kind == "attempt":
            right = bool(rng.random() < config.p_correct)
            out.append(Example(list(make_env(task).reset()), attempt_reply(task, rng, right), kind, float(right)))
            continue
        prev_right = bool(rng.random() < config.p_correct)
        previous = attempt_reply(task, rng, prev_right)
        depth = 0
        if rng.random() < 0.3:  # later steps of a chain revise a revision
            previous, prev_right = revision(task, rng, previous, prev_right, config)
            depth = int(rng.integers(1, 4))
        messages = self_iteration_messages(task, make_env, previous, kind, depth=depth)
        if kind == "improve":
            target, right = revision(task, rng, previous, prev_right, config)
        else:
            right = bool(rng.random() < config.p_correct)
            target = divergent_reply(task, rng, right)
        out.append(Example(messages, target, kind, float(right)))
    return out


def label(task: Task, reply: str) -> float:
    """The grade of a reply (for tests and corpus stats): MathEnv's reward."""
    from exit_jax.envs.math import MathEnv
    env = MathEnv(task)
    env.reset()
    return env.step(reply).reward
