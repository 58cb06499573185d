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
string, so the grader scores it 1 whatever our parser did.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from exit_jax.curriculum import episodes
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.envs.base import Env, Task
from exit_jax.envs.math.answers import canonical
from exit_jax.envs.math.generator import BOXED_INSTRUCTION
from exit_jax.pretrain.example import Example

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
_INTEGER_ARGS = {"gcd", "lcm", "mod", "!", "C", "P", "d"}


class Solution(NamedTuple):
    ops: tuple  # Op, ...
    out: tuple  # Refs whose values form the answer (two for an ordered pair)


def _run(ops: Sequence[Op]) -> list:
    """The value of every op."""
    values: list = []
    for op in ops:
        args = [values[a] if isinstance(a, Ref) else a for a in op.args]
        if op.name in _INTEGER_ARGS and any(Fraction(a).denominator != 1 or a < 0 for a in args):
            raise ValueError(f"{op.name} needs non-negative integers")
        values.append(Fraction(_APPLY[op.name](*args)))
    return values


def _fmt(x: Fraction, operand: bool = False) -> str:
    s = str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
    return f"({s})" if operand and (x < 0 or x.denominator != 1) else s


def _working(ops: Sequence[Op], values: Sequence[Fraction]) -> str:
    parts = []
    for op, v in zip(ops, values):
        shown = [_fmt(values[a] if isinstance(a, Ref) else a, operand=True) for a in op.args]
        parts.append(f"{_SHOW[op.name].format(*shown)} = {_fmt(v)}")
    return ", ".join(parts)


def _answer(values: Sequence[Fraction], out: Sequence[Ref]):
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


def _gold(task: Task):
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
        if sol is None or _answer(_run(sol.ops), sol.out) != _gold(task):
            return None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return sol


# ---------------------------------------------------------------------------------------------------
# Replies.

def _slip(rng: np.random.Generator, value: Fraction) -> Fraction:
    """A plausible arithmetic mistake: off by one, two or ten, or a dropped minus sign."""
    choices = [1, -1, 2, -2, 10, -10] + ([-2 * value] if value < 0 and value.denominator == 1 else [])
    return _F(choices[int(rng.integers(len(choices)))])


def _wrong_value(rng: np.random.Generator, gold):
    if isinstance(gold, tuple):
        i = int(rng.integers(len(gold)))
        return tuple(_wrong_value(rng, g) if j == i else g for j, g in enumerate(gold))
    if gold.denominator != 1 and rng.random() < 0.5:
        return _F(gold.numerator + (1 if rng.random() < 0.5 else -1), gold.denominator) or _F(1, gold.denominator)
    return gold + _slip(rng, gold)


def _boxed(value) -> str:
    return f"The answer is \\boxed{{{canonical(value)}}}."


_SWAPS = {"+": "-", "-": "+", "*": "+", "/": "*"}


def _misread(rng: np.random.Generator, sol: Solution) -> Solution:
    """The same trace with one setup mistake: a misread number or a wrong operation.

    Every line of the working stays a true statement, so wrong replies teach no false arithmetic facts;
    the mistake lies in what was computed, which is what RL (and a revision) can learn to avoid.
    """
    i = int(rng.integers(len(sol.ops)))
    op = sol.ops[i]
    literals = [j for j, a in enumerate(op.args) if not isinstance(a, Ref)]
    if op.name in _SWAPS and (not literals or rng.random() < 0.3):
        return sol._replace(ops=sol.ops[:i] + (op._replace(name=_SWAPS[op.name]),) + sol.ops[i + 1:])
    if not literals:
        return sol
    j = literals[int(rng.integers(len(literals)))]
    value = op.args[j]
    new = max(_F(2), value + _slip(rng, value)) if op.name in _INTEGER_ARGS else value + _slip(rng, value)
    args = op.args[:j] + (new,) + op.args[j + 1:]
    return sol._replace(ops=sol.ops[:i] + (op._replace(args=args),) + sol.ops[i + 1:])


def attempt_reply(task: Task, rng: np.random.Generator, correct: bool) -> str:
    """A one-line worked reply; a wrong one carries one setup mistake (a bare wrong answer without a trace)."""
    sol, gold = solution(task), _gold(task)
    if correct:
        if sol is None:
            return f"The answer is \\boxed{{{task.data['answer']}}}."
        return f"{_working(sol.ops, _run(sol.ops))}. The answer is \\boxed{{{task.data['answer']}}}."
    if sol is not None:
        for _ in range(8):  # a mistake can cancel out (e.g. inside a gcd); then make another
            wrong_sol = _misread(rng, sol)
            try:
                values = _run(wrong_sol.ops)
            except (ValueError, ZeroDivisionError, OverflowError):
                continue
            wrong = _answer(values, wrong_sol.out)
            if wrong != gold:
                return f"{_working(wrong_sol.ops, values)}. {_boxed(wrong)}"
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
    sol = solution(task)
    steps = [i for i, op in enumerate(sol.ops) if op.name in _TEX] if sol else []
    if not steps:
        return None
    i = steps[int(rng.integers(len(steps)))]
    values = _run(sol.ops)
    a, b = (values[x] if isinstance(x, Ref) else x for x in sol.ops[i].args)
    if a.denominator != 1 or b.denominator != 1:
        return None
    text = f"{_fmt(a, operand=True)} {_TEX[sol.ops[i].name]} {_fmt(b, operand=True)}"
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
