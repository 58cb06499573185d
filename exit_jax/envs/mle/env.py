"""The single-turn MLE environment: the paper's MLE-bench prompt, one reply holding solution.py, a reward.

`reset()` renders the paper's template (paper App. B, `envs.mle.prompts.mle_prompt`) with the task
description, previews of the public CSVs and the current solution.py (the base task's empty `main`, or a
previous iterate with its error trace for a debug step). `step(reply)` takes the code from the reply's
triple-tick fence, runs it in the sandbox and grades submission.csv; the reward is the normalised score
(crash, timeout or invalid submission: 0, docs/paper.md §13.9). The improvement reward r_imp of
self-iteration steps is the curriculum's job (curriculum.rewards), from `info["normalized"]`.
"""
from __future__ import annotations

import re

from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.envs.mle import lite, sandbox
from exit_jax.envs.mle.grading import GradeResult, error_tail

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_LANGS = ("", "python", "py", "python3")


def extract_code(reply: str) -> str | None:
    """The program in a reply: the longest fenced block tagged python (or untagged); an unclosed last fence
    (a truncated reply) counts. None when the reply holds no such block."""
    blocks = [m.group(2) for m in _FENCE.finditer(reply or "") if m.group(1).lower() in _CODE_LANGS]
    blocks = [b for b in blocks if b.strip()]
    return max(blocks, key=len) if blocks else None


def as_task(mle_task) -> Task:
    """The env-protocol record of a LiteTask or MLEBenchTask (its data carries the prompt fields)."""
    return mle_task.as_task()


def _mle_task(task: Task):
    found = (task.data or {}).get("mle_task")
    if found is not None:
        return found
    return lite.tasks([task.id])[0]  # a plain Task record: look the id up in MLE-lite


class MLEEnv(Env):
    """One rollout on one MLE task (MLE-lite or MLE-bench). Create a fresh one per rollout."""

    def __init__(self, task: Task, pool: sandbox.WarmPool | None = None,
                 config: sandbox.SandboxConfig = sandbox.SandboxConfig(), goal: str = "improve",
                 previous_solution: str | None = None, error_trace: str = "",
                 time_limit_s: float | None = None):
        """pool: a shared WarmPool (the fast path; None runs each solution in a fresh sandbox).
        time_limit_s: overrides the task's run limit (paper App. A: 5 minutes for MLE-bench)."""
        super().__init__(task)
        if goal not in mle_prompts.MLE_GOALS:
            raise ValueError(f"MLEEnv goal must be one of {sorted(mle_prompts.MLE_GOALS)}, got {goal!r}.")
        self.mle = _mle_task(task)
        self.pool, self.config, self.goal = pool, config, goal
        self.previous_solution, self.error_trace = previous_solution, error_trace
        self.time_limit_s = time_limit_s
        self._done = False

    def task_description(self) -> str:
        return self.mle.description

    def preview_contents(self) -> str:
        return (self.task.data or {}).get("preview_contents") or self.mle.preview_contents()

    def initial_solution(self) -> str:
        """The script shown as the current solution.py: the base task's empty `main` unless given one."""
        return self.previous_solution if self.previous_solution is not None else mle_prompts.MLE_STARTER_SOLUTION

    def evaluate(self, code: str) -> GradeResult:
        return self.mle.evaluate(code, config=self.config, pool=self.pool, time_limit_s=self.time_limit_s)

    def reset(self) -> list:
        self._done = False
        text = mle_prompts.mle_prompt(self.initial_solution(), self.task_description(), self.preview_contents(),
                                      goal=self.goal, error_trace=self.error_trace)
        return [{"role": "user", "content": text}]

    def step(self, reply: str) -> StepResult:
        if self._done:
            return StepResult(messages=[], reward=0.0, done=True, info={"reason": "episode_already_done"})
        self._done = True
        code = extract_code(reply)
        if code is None:
            result = GradeResult.invalid("the reply holds no ```python ...``` code block.")
            reason = "no_code_block"
        else:
            result = self.evaluate(code)
            reason = "ok" if result.valid else "invalid_or_failed"
        info = {"reason": reason, "valid": result.valid, "score": result.score, "normalized": result.normalized,
                "medal": result.medal, "runtime_s": result.runtime_s, "error": error_tail(result.error),
                "validation_score": result.validation_score,
                "validation_normalized": result.validation_normalized,
                "lower_is_better": self.mle.lower_is_better, "code": code or "",
                # what curriculum.episodes stores for a later debug step
                "failed": not result.valid, "feedback": error_tail(result.error)}
        return StepResult(messages=[], reward=float(result.normalized), done=True, info=info)

    def instruction(self) -> str:
        return self.task_description()
