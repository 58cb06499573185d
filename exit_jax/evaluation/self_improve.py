"""Inference-time self-improvement curves for single-turn domains (math): paper §5, Fig. 3, 4, 8.

Each held-out task gets n independent chains. Step k = 0 answers the base prompt; every later step k shows
the chain its own iterate k − 1 through the paper's self-improve prompt (paper §4.2, `## Request:` = the
task instruction, `## Current response:` = the previous iterate) and grades the new reply. Only the
self-improve prompt is used at test time (paper §5.1, docs/paper.md §9).

Reported per k (k = 0..K):
- accuracy (avg@n): the mean reward over tasks × chains (rewards are binary in math);
- net corrections (docs/paper.md §13.8): (#chains wrong at k = 0 and right at k) − (#chains right at k = 0
  and wrong at k), summed over tasks and divided by n, the number of chains per task. The paper's Fig. 4
  counts (reading, docs/paper.md §11.4) are summed over the 8 chains of each problem: multiply ours by n to
  compare. Net corrections at k = 0 are 0 by definition.

All chains of one step go to the policy in ONE `generate` call (the real policy is a batched sampler).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from exit_jax.curriculum import prompts
from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.evaluation.policy import Policy, generate_checked

EnvFactory = Callable[[Task], Env]


def improve_conversation(history: Sequence[dict], instruction: str, previous_response: str) -> list[dict]:
    """The conversation that asks the policy to improve `previous_response` (paper §4.2, Appendix D).

    `history` holds the messages the policy would see before answering this turn. The history before the
    turn is kept; when it ends with a user message (the request itself), the self-improve prompt (which
    restates that request under `## Request:`) takes its place so the request is not shown twice;
    otherwise (tool results of earlier steps of the same request) the prompt is appended as a new user
    message. This is the rule the training episodes use (curriculum.episodes), so evaluation asks the
    question the policy was trained on.
    """
    messages = [dict(m) for m in history]
    if messages and messages[-1].get("role") == "user":
        messages.pop()
    messages.append({"role": "user", "content": prompts.improve_prompt(instruction, previous_response)})
    return messages


BatchGrader = Callable[[Sequence[Task], Sequence[str]], Sequence[StepResult]]


def grade_replies(env_factory: EnvFactory, tasks: Sequence[Task], replies: Sequence[str],
                  grade_batch: BatchGrader | None = None) -> list[tuple[float, str]]:
    """(reward, reason) of reply i against tasks[i]: one single-turn step on a fresh env each, or one call
    to `grade_batch` (e.g. `envs.math.grade_tasks`, one math-verify round trip for the whole step)."""
    if grade_batch is not None:
        results = list(grade_batch(list(tasks), list(replies)))
        if len(results) != len(replies):
            raise ValueError(f"grade_batch returned {len(results)} results for {len(replies)} replies.")
    else:
        results = []
        for task, reply in zip(tasks, replies):
            env = env_factory(task)
            env.reset()
            results.append(env.step(reply))
    # Reasons are kept for failed replies only (a grader may also explain a success, e.g. "math_verify").
    return [(float(r.reward), str((r.info or {}).get("reason", "")) if r.reward < 1.0 else "")
            for r in results]


@dataclasses.dataclass(frozen=True)
class SelfImproveResult:
    """Self-improvement curves of one policy on one task set."""
    K: int
    n: int
    task_ids: list[str]
    rewards: np.ndarray  # [tasks, n, K + 1] float, the reward of chain j of task i at step k
    success_threshold: float = 1.0
    groups: Mapping[str, list[int]] = dataclasses.field(default_factory=dict)  # name -> task indices
    responses: list | None = None  # [tasks][n][K + 1] reply texts when kept
    reasons: list | None = None  # [tasks][n][K + 1] the grader's reason for each reward

    @property
    def accuracy_by_k(self) -> list[float]:
        return accuracy_by_k(self.rewards)

    @property
    def net_corrections_by_k(self) -> list[float]:
        return net_corrections_by_k(self.rewards, self.success_threshold)

    def to_dict(self) -> dict[str, Any]:
        """The eval.json record: curves, per-group curves (with their macro mean), per-task details."""
        record: dict[str, Any] = {
            "kind": "self_improve",
            "K": self.K,
            "n": self.n,
            "num_tasks": len(self.task_ids),
            "headline": "accuracy",
            "curves": {"accuracy": self.accuracy_by_k, "net_corrections": self.net_corrections_by_k},
            "units": {"accuracy": "fraction", "net_corrections": "count / n"},
            "success_threshold": self.success_threshold,
        }
        if self.groups:
            per_group = {
                name: {"num_tasks": len(idx),
                       "curves": {"accuracy": accuracy_by_k(self.rewards[idx]),
                                  "net_corrections": net_corrections_by_k(self.rewards[idx],
                                                                          self.success_threshold)}}
                for name, idx in sorted(self.groups.items())}
            record["groups"] = per_group
            # paper §5.1: "Math – All" is the macro mean of the per-split accuracies.
            record["curves"]["macro_accuracy"] = np.mean(
                [g["curves"]["accuracy"] for g in per_group.values()], axis=0).tolist()
            record["units"]["macro_accuracy"] = "fraction"
        if self.reasons is not None:
            # Why replies failed, counted per step (the per-chain reasons go with the kept responses).
            record["reason_counts_by_k"] = [
                dict(sorted(Counter(r[k] for row in self.reasons for r in row if r[k]).items()))
                for k in range(self.K + 1)]
        per_task = []
        for i, task_id in enumerate(self.task_ids):
            item: dict[str, Any] = {"task_id": task_id, "rewards": self.rewards[i].tolist()}
            if self.responses is not None:
                item["responses"] = self.responses[i]
                if self.reasons is not None:
                    item["reasons"] = self.reasons[i]
            per_task.append(item)
        record["per_task"] = per_task
        return record


def accuracy_by_k(rewards: np.ndarray) -> list[float]:
    """avg@n at every step: the mean reward over tasks and chains. rewards: [tasks, n, K + 1]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape[0] == 0:
        return [float("nan")] * rewards.shape[-1]
    return rewards.mean(axis=(0, 1)).tolist()


def net_corrections_by_k(rewards: np.ndarray, success_threshold: float = 1.0) -> list[float]:
    """docs/paper.md §13.8: (wrong at 0 & right at k) − (right at 0 & wrong at k), over all chains, / n."""
    correct = np.asarray(rewards, dtype=np.float64) >= success_threshold  # [tasks, n, K + 1]
    first = correct[:, :, :1]
    fixed = (~first & correct).sum(axis=(0, 1))
    broken = (first & ~correct).sum(axis=(0, 1))
    return ((fixed - broken) / max(correct.shape[1], 1)).astype(np.float64).tolist()


def evaluate(policy: Policy, tasks: Sequence[Task], env_factory: EnvFactory, K: int = 16, n: int = 8, *,
             success_threshold: float = 1.0, group_of: Callable[[Task], str] | None = None,
             keep_responses: bool = False, grade_batch: BatchGrader | None = None,
             on_step: Callable[[int, float], None] | None = None) -> SelfImproveResult:
    """Runs n self-improvement chains of K steps on each task and grades every iterate.

    Args:
      policy: the policy under evaluation.
      tasks: held-out single-turn tasks.
      env_factory: builds a fresh environment for a task; `reset()` gives the base prompt, `instruction()`
        the request, `step(reply).reward` the grade.
      K: self-improvement steps after the first attempt (paper: 16 for math).
      n: chains per task (paper: avg@8).
      success_threshold: a reward at or above it counts as correct for net corrections.
      group_of: optional task -> group name (e.g. the benchmark split) for per-group and macro curves.
      keep_responses: store every reply text in the result (large for big K, n).
      grade_batch: optional batch grader (tasks, replies) -> step results, the same rewards as a fresh env's
        `step`; for math pass `envs.math.grade_tasks` (one math-verify round trip per step).
      on_step: optional callback(k, accuracy at k), e.g. for a progress line.
    """
    if K < 0 or n < 1:
        raise ValueError(f"Self-improvement evaluation needs K >= 0 and n >= 1, got K={K}, n={n}.")
    tasks = list(tasks)
    openings, instructions = [], []
    for task in tasks:
        env = env_factory(task)
        openings.append(list(env.reset()))
        instructions.append(env.instruction())
    num = len(tasks)
    rewards = np.zeros((num, n, K + 1), dtype=np.float64)  # [tasks, n, K + 1]
    responses = [[[] for _ in range(n)] for _ in range(num)]
    reasons = [[[] for _ in range(n)] for _ in range(num)]
    flat_tasks = [t for t in tasks for _ in range(n)]  # chain c = i * n + j

    def record(k: int, flat_replies: list[str]) -> None:
        graded = grade_replies(env_factory, flat_tasks, flat_replies, grade_batch)
        for c, (reply, (reward, reason)) in enumerate(zip(flat_replies, graded)):
            i, j = divmod(c, n)
            rewards[i, j, k] = reward
            responses[i][j].append(reply)
            reasons[i][j].append(reason)
        if on_step is not None:
            on_step(k, float(rewards[:, :, k].mean()) if num else float("nan"))

    # k = 0: one prefill per task, n samples each.
    first = generate_checked(policy, openings, num_samples=n)
    record(0, [r for row in first for r in row])
    for k in range(1, K + 1):
        conversations = [improve_conversation(openings[i], instructions[i], responses[i][j][-1])
                         for i in range(num) for j in range(n)]
        replies = generate_checked(policy, conversations, num_samples=1)
        record(k, [row[0] for row in replies])

    groups: dict[str, list[int]] = {}
    if group_of is not None:
        for i, task in enumerate(tasks):
            groups.setdefault(str(group_of(task)), []).append(i)
    return SelfImproveResult(
        K=K, n=n, task_ids=[t.id for t in tasks], rewards=rewards, success_threshold=success_threshold,
        groups=groups, responses=responses if keep_responses else None, reasons=reasons)
