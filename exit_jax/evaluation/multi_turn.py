"""Inference-time self-improvement for multi-turn tool use (BFCL v3): paper §5.1, Fig. 3, Table 1.

The paper evaluates tool use with "K = 4 self-improvement steps per turn" and reports first-turn accuracy
and the total task return (docs/paper.md §9). It does not spell out how iterates of a multi-turn episode
chain together; our reading, which keeps every step a complete, executed episode:

- Step k = 0: n independent episodes per task from the base prompt, run to the end (every request).
- Step k ≥ 1: a new episode per chain. Each of its assistant turns is produced by improving the same
  turn of the chain's episode at step k − 1: the history of the current episode before the turn is kept,
  `{instruction}` is the current user request, `{previous_response}` is the step k − 1 reply at that turn
  (paper §4.2 "Multi-turn use", Appendix D). The reply is executed and the episode continues.
- A turn is identified by (user request r, response s within the request), so a previous iterate always
  answered the same request. Where the step k − 1 episode has no reply at that (r, s) (it finished the
  request in fewer responses), the turn is answered from the plain history like at k = 0; these turns are
  counted ("fresh_turn_fraction").

When the episodes of steps k − 1 and k share their history up to a turn, the step-k reply is exactly the
paper's y_t^k from τ_t^{k−1}. Per step we report first-turn accuracy (the first request's 0/1 result),
total return (the sum of per-request rewards), the episode reward, and net corrections on the first
request (docs/paper.md §13.8). Every round of every episode of a step goes to the policy as ONE batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.evaluation.policy import Policy, generate_checked
from exit_jax.evaluation.self_improve import EnvFactory, improve_conversation, net_corrections_by_k


def request_rewards_of(result: StepResult) -> list[float]:
    """Per-request 0/1 results of a finished episode: `info["request_rewards"]` (BFCL env), else the
    episode reward as the only request."""
    rewards = (result.info or {}).get("request_rewards")
    if rewards is None:
        return [float(result.reward)]
    return [float(r) for r in rewards]


def _instruction(env: Env, history: Sequence[dict]) -> str:
    try:
        return env.instruction()
    except NotImplementedError:  # fall back to the latest user message, as training does
        users = [m["content"] for m in history if m.get("role") == "user"]
        return users[-1] if users else ""


class _Episode:
    """Host-side state of one episode: env, messages, replies keyed by (request, response in request)."""

    def __init__(self, env: Env):
        self.env = env
        self.messages = list(env.reset())
        self.request, self.step_in_request = 0, 0
        self.replies: dict[tuple[int, int], str] = {}
        self.done = False
        self.truncated = False
        self.final: StepResult | None = None
        self.fresh_turns = 0
        self.turns = 0

    def feed(self, reply: str) -> None:
        self.replies[(self.request, self.step_in_request)] = reply
        self.turns += 1
        self.messages.append({"role": "assistant", "content": reply})
        result = self.env.step(reply)
        self.messages.extend(result.messages)
        if result.done:
            self.done, self.final = True, result
        elif any(m.get("role") == "user" for m in result.messages):  # the next user request began
            self.request, self.step_in_request = self.request + 1, 0
        else:
            self.step_in_request += 1


@dataclasses.dataclass(frozen=True)
class MultiTurnResult:
    K: int
    n: int
    task_ids: list[str]
    request_rewards: list  # [tasks][n][K + 1] per-request 0/1 results of each episode
    episode_rewards: np.ndarray  # [tasks, n, K + 1]
    truncated: np.ndarray  # [tasks, n, K + 1] bool: stopped by max_responses before the env ended it
    fresh_turns: np.ndarray  # [tasks, n, K + 1] turns answered without a previous iterate
    turns: np.ndarray  # [tasks, n, K + 1] assistant replies in the episode
    replies: list | None = None  # [tasks][n][K + 1] reply lists when kept

    @property
    def first_turn_rewards(self) -> np.ndarray:  # [tasks, n, K + 1]
        first = [[[rr[0] if rr else 0.0 for rr in chain] for chain in task] for task in self.request_rewards]
        return np.asarray(first, dtype=np.float64).reshape(self.episode_rewards.shape)

    @property
    def total_returns(self) -> np.ndarray:  # [tasks, n, K + 1]
        return np.asarray([[[sum(rr) for rr in chain] for chain in task] for task in self.request_rewards],
                          dtype=np.float64).reshape(self.episode_rewards.shape)

    def _mean(self, arr: np.ndarray) -> list[float]:
        arr = np.asarray(arr, dtype=np.float64)
        return arr.mean(axis=(0, 1)).tolist() if arr.size else [float("nan")] * (self.K + 1)

    def to_dict(self) -> dict[str, Any]:
        with np.errstate(invalid="ignore", divide="ignore"):
            fresh = np.where(self.turns.sum(axis=(0, 1)) > 0,
                             self.fresh_turns.sum(axis=(0, 1)) / np.maximum(self.turns.sum(axis=(0, 1)), 1),
                             np.nan)
        record = {
            "kind": "self_improve_multi_turn", "K": self.K, "n": self.n, "num_tasks": len(self.task_ids),
            "headline": "first_turn_accuracy",
            "curves": {
                "first_turn_accuracy": self._mean(self.first_turn_rewards),
                "total_return": self._mean(self.total_returns),
                "episode_success": self._mean(self.episode_rewards),
                "first_turn_net_corrections": net_corrections_by_k(self.first_turn_rewards),
                "truncated_fraction": self._mean(self.truncated),
                "mean_turns": self._mean(self.turns),
                "fresh_turn_fraction": fresh.tolist(),
            },
            "units": {"first_turn_accuracy": "fraction", "total_return": "requests",
                      "episode_success": "fraction", "first_turn_net_corrections": "count / n",
                      "truncated_fraction": "fraction", "mean_turns": "replies",
                      "fresh_turn_fraction": "fraction"},
        }
        per_task = []
        for i, task_id in enumerate(self.task_ids):
            item = {"task_id": task_id, "request_rewards": self.request_rewards[i]}
            if self.replies is not None:
                item["replies"] = self.replies[i]
            per_task.append(item)
        record["per_task"] = per_task
        return record


def _run_step(policy: Policy, tasks: Sequence[Task], env_factory: EnvFactory, n: int,
              previous: list[list[dict]] | None, max_responses: int) -> list[list[_Episode]]:
    """Runs one self-improvement step: n episodes per task in lockstep, one policy call per round."""
    episodes = [[_Episode(env_factory(task)) for _ in range(n)] for task in tasks]
    if previous is None:
        # Round 0 of the first attempt: every chain of a task sees the same opening: one prefill, n samples.
        first = generate_checked(policy, [row[0].messages for row in episodes], num_samples=n)
        for row, replies in zip(episodes, first):
            for ep, reply in zip(row, replies):
                ep.fresh_turns += 1
                ep.feed(reply)
    while True:
        active = [(i, j, ep) for i, row in enumerate(episodes) for j, ep in enumerate(row)
                  if not ep.done and not ep.truncated]
        for _, _, ep in active:
            if ep.turns >= max_responses:
                ep.truncated = True
        active = [a for a in active if not a[2].truncated]
        if not active:
            return episodes
        conversations = []
        for i, j, ep in active:
            prev = previous[i][j].get((ep.request, ep.step_in_request)) if previous is not None else None
            if prev is None:
                ep.fresh_turns += 1
                conversations.append(ep.messages)
            else:
                instruction = _instruction(ep.env, ep.messages)
                conversations.append(improve_conversation(ep.messages, instruction, prev))
        replies = generate_checked(policy, conversations, num_samples=1)
        for (_, _, ep), row in zip(active, replies):
            ep.feed(row[0])


def evaluate_multi_turn(policy: Policy, tasks: Sequence[Task], env_factory: EnvFactory, K: int = 4,
                        n: int = 8, *, max_responses: int = 60, keep_replies: bool = False,
                        request_rewards: Callable[[StepResult], list[float]] = request_rewards_of,
                        on_step: Callable[[int, float], None] | None = None) -> MultiTurnResult:
    """K self-improvement steps per turn on multi-turn tasks (paper: K = 4, avg@8).

    Args:
      env_factory: a fresh env per episode (for BFCL, e.g. `lambda t: MultiTurnEnv(t, max_responses=60)`:
        the paper allows up to 60 turns at test time and all user requests).
      max_responses: our own bound on assistant replies per episode, for envs without one; an episode cut
        here scores 0 on every request (counted in "truncated_fraction").
      request_rewards: reads per-request results from the final step result.
    """
    if K < 0 or n < 1 or max_responses < 1:
        raise ValueError(f"Multi-turn self-improvement needs K >= 0, n >= 1, max_responses >= 1; got K={K}, "
                         f"n={n}, max_responses={max_responses}.")
    tasks = list(tasks)
    shape = (len(tasks), n, K + 1)
    episode_rewards, truncated = np.zeros(shape), np.zeros(shape, bool)
    fresh, turns = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    req = [[[None] * (K + 1) for _ in range(n)] for _ in tasks]
    replies = [[[None] * (K + 1) for _ in range(n)] for _ in tasks]
    previous = None
    for k in range(K + 1):
        episodes = _run_step(policy, tasks, env_factory, n, previous, max_responses)
        for i, row in enumerate(episodes):
            for j, ep in enumerate(row):
                if ep.final is not None:
                    req[i][j][k] = request_rewards(ep.final)
                    episode_rewards[i, j, k] = float(ep.final.reward)
                else:  # cut by max_responses: no request was judged complete
                    req[i][j][k] = [0.0]
                truncated[i, j, k] = ep.truncated
                fresh[i, j, k], turns[i, j, k] = ep.fresh_turns, ep.turns
                replies[i][j][k] = [ep.replies[key] for key in sorted(ep.replies)]
        previous = [[ep.replies for ep in row] for row in episodes]
        if on_step is not None:
            on_step(k, float(np.mean([req[i][j][k][0] for i in range(len(tasks)) for j in range(n)]))
                    if tasks else float("nan"))
    return MultiTurnResult(K=K, n=n, task_ids=[t.id for t in tasks], request_rewards=req,
                           episode_rewards=episode_rewards, truncated=truncated, fresh_turns=fresh,
                           turns=turns, replies=replies if keep_replies else None)
