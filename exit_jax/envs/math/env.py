"""Single-turn math environment: the problem as a user message, one reply, a binary reward (paper §5).

The paper gives no math system prompt; `system_prompt` is an optional knob (None = no system message).
`{instruction}` of the self-iteration prompts (paper §4.1-4.2) is the problem text.
"""
from __future__ import annotations

from typing import Sequence

from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.envs.math.grader import Grader, GradeResult, default_grader


def _problem_and_answer(task: Task) -> tuple[str, str]:
    data = task.data or {}
    problem, answer = data.get("problem"), data.get("answer")
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"math task {task.id!r} needs a non-empty string 'problem' in its data")
    if answer is None or not str(answer).strip():
        raise ValueError(f"math task {task.id!r} needs a non-empty 'answer' in its data")
    return problem, str(answer)


class MathEnv(Env):
    """One rollout on one math task. `step` grades the reply and always ends the episode."""

    def __init__(self, task: Task, system_prompt: str | None = None, grader: Grader | None = None):
        super().__init__(task)
        self.problem, self.answer = _problem_and_answer(task)
        self.system_prompt = system_prompt
        self._grader = grader
        self._done = False

    def reset(self) -> list:
        self._done = False
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": self.problem})
        return messages

    def step(self, reply: str) -> StepResult:
        if self._done:
            return StepResult(messages=[], reward=0.0, done=True, info={"reason": "episode_already_done"})
        self._done = True
        result = (self._grader or default_grader()).check(reply, self.answer)
        return StepResult(messages=[], reward=result.reward, done=True, info=_info(result))

    def instruction(self) -> str:
        return self.problem


def _info(result: GradeResult) -> dict:
    # "ungraded": grading timed out twice; the training loop leaves the sample out of its group.
    return {"reason": result.reason, "extracted_answer": result.extracted, "extraction": result.extraction,
            "ungraded": not result.graded}


def grade_tasks(tasks: Sequence[Task], replies: Sequence[str], grader: Grader | None = None) -> list[StepResult]:
    """Scores many (task, reply) pairs at once, e.g. the G x P replies of a GRPO iteration.

    Same rewards as `MathEnv(task).step(reply)`, with one math-verify round trip for the whole batch.
    """
    if len(tasks) != len(replies):
        raise ValueError(f"grade_tasks needs one reply per task, got {len(tasks)} tasks and {len(replies)} replies")
    answers = [_problem_and_answer(t)[1] for t in tasks]
    results = (grader or default_grader()).check_batch(list(replies), answers)
    return [StepResult(messages=[], reward=r.reward, done=True, info=_info(r)) for r in results]
