"""MLE greedy search at evaluation (paper §5.1, 16 steps; docs/paper.md §13.10; docs/domains.md §3.3).

Node 0 answers the base task (the MLE template around the empty starter script). Each later step k = 1..K
adds one node: if the last node failed (crash, timeout, invalid submission) it is debugged (the MLE
template with the debug preamble and its error tail); otherwise the best node so far is improved (improve
preamble). "Best" is decided by the grader's validation score, computed on a split whose labels the
solution never sees — never by a metric the solution prints. The number reported at step k is the private
test score (normalized) of the best node among nodes 0..k, and whether it medals; no valid node yet
scores 0. Ties keep the earlier node.

n independent searches per task run in lockstep: all searches' prompts of a step go to the policy in one
`generate` call, and their solutions can be graded in parallel through an executor.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.evaluation.policy import Policy, generate_checked

EnvFactory = Callable[[Task], Env]


@dataclasses.dataclass(frozen=True)
class Node:
    """One solution of a search."""
    step: int
    action: str  # "draft" (node 0), "improve" or "debug"
    parent: int  # the node it iterates on; -1 for the draft
    code: str
    valid: bool
    validation_score: float  # rank score, higher is better (see outcome_of); -inf when invalid
    normalized: float  # private test score, normalized to [0, 1]; 0 when invalid
    medal: str  # "gold" | "silver" | "bronze" | "" (none)
    error: str = ""


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _lower_is_better(info: dict, task: Task | None) -> bool | None:
    if isinstance(info.get("lower_is_better"), bool):
        return info["lower_is_better"]
    graded_task = (task.data or {}).get("mle_task") if task is not None else None
    flag = getattr(graded_task, "lower_is_better", None)
    return flag if isinstance(flag, bool) else None


def extract_code(reply: str) -> str:
    """The solution.py in a reply, as the MLE env reads it ("" when the reply holds no code block)."""
    from exit_jax.envs.mle.env import extract_code as mle_extract  # lazy: pulls in pandas and sklearn
    return mle_extract(reply) or ""


def _error_tail(error: str, max_chars: int) -> str:
    """The trace a debug prompt shows, cut exactly as training's stored feedback is."""
    from exit_jax.envs.mle.grading import error_tail  # lazy: pulls in pandas and sklearn
    return error_tail(error, max_chars)


def outcome_of(result: StepResult, reply: str, task: Task | None = None) -> dict:
    """Reads a graded MLE step: code, validity, validation rank score (higher is better), normalized test
    score, medal, error.

    The rank score is the grader's raw validation metric, negated when lower is better (the normalized
    validation score clips at the reference and would tie every solution that beats it); without a known
    direction, the normalized validation score. Missing or non-finite values make a node unrankable (never
    chosen). Nothing the solution prints is read.
    """
    info = dict(result.info or {})
    valid = bool(info.get("valid", False))
    raw, lower = _finite(info.get("validation_score")), _lower_is_better(info, task)
    if raw is not None and lower is not None:
        val = -raw if lower else raw
    else:
        val = _finite(info.get("validation_normalized"))
        val = raw if val is None else val
    if not valid or val is None:
        val = -math.inf
    medal = info.get("medal") or ""
    code = info["code"] if isinstance(info.get("code"), str) else extract_code(reply)
    return {"code": code, "valid": valid, "validation_score": val,
            "normalized": (_finite(info.get("normalized")) or 0.0) if valid else 0.0,
            "medal": str(medal) if valid and medal not in ("none", "None") else "",
            "error": str(info.get("error") or info.get("reason") or "")}


def best_index(nodes: Sequence[Node]) -> int:
    """The node with the highest validation score (earliest on ties); -1 if none is valid."""
    best, best_val = -1, -math.inf
    for i, node in enumerate(nodes):
        if node.valid and node.validation_score > best_val:
            best, best_val = i, node.validation_score
    return best


def _mle_fields(task: Task, env: Env | None = None) -> tuple[str, str]:
    """Task description and file previews: from the MLE env when it offers them, else from task.data."""
    if env is not None and hasattr(env, "task_description") and hasattr(env, "preview_contents"):
        return str(env.task_description()), str(env.preview_contents())
    try:
        return str(task.data["task_description"]), str(task.data["preview_contents"])
    except KeyError as e:
        raise ValueError(f"MLE task {task.id!r} lacks data field {e.args[0]!r}; the MLE template needs "
                         "'task_description' and 'preview_contents'.") from None


def iterate_conversation(opening: Sequence[dict], task: Task, code: str, goal: str,
                         error_trace: str = "", env: Env | None = None) -> list[dict]:
    """The base conversation with its user request replaced by the MLE template around `code` (the rule
    the training episodes use), with the improve or debug preamble (paper Appendix B)."""
    description, previews = _mle_fields(task, env)
    messages = [dict(m) for m in opening]
    if messages and messages[-1].get("role") == "user":
        messages.pop()
    text = mle_prompts.mle_prompt(code, description, previews, goal=goal, error_trace=error_trace)
    return messages + [{"role": "user", "content": text}]


def next_action(nodes: Sequence[Node], max_debug_depth: int | None = None) -> tuple[str, int]:
    """("debug", last) when the last node failed, else ("improve", best); ("improve", -1) means "improve
    the starter script" (no valid node yet and the debug budget is spent)."""
    last = len(nodes) - 1
    if not nodes[last].valid:
        depth = 0  # consecutive debug steps that led to the last node
        i = last
        while i >= 0 and nodes[i].action == "debug":
            depth, i = depth + 1, nodes[i].parent
        if max_debug_depth is None or depth < max_debug_depth:
            return "debug", last
    return "improve", best_index(nodes)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    K: int
    n: int
    task_ids: list[str]
    searches: list  # [tasks][n] lists of Node

    def _best_so_far(self, field: str) -> np.ndarray:
        out = np.zeros((len(self.task_ids), self.n, self.K + 1))
        for i, row in enumerate(self.searches):
            for j, nodes in enumerate(row):
                for k in range(self.K + 1):
                    b = best_index(nodes[:k + 1])
                    if b >= 0:
                        node = nodes[b]
                        out[i, j, k] = node.normalized if field == "normalized" else float(bool(node.medal))
        return out  # [tasks, n, K + 1]

    def to_dict(self) -> dict[str, Any]:
        score, medal = self._best_so_far("normalized"), self._best_so_far("medal")
        valid = np.asarray([[[float(nd.valid) for nd in nodes] for nodes in row] for row in self.searches])
        mean = lambda a: a.mean(axis=(0, 1)).tolist() if a.size else [float("nan")] * (self.K + 1)  # noqa
        per_task = []
        for i, task_id in enumerate(self.task_ids):
            per_task.append({
                "task_id": task_id,
                "normalized_score": score[i].mean(axis=0).tolist(),
                "medal_rate": medal[i].mean(axis=0).tolist(),
                "runs": [[{k: v for k, v in dataclasses.asdict(nd).items()} for nd in nodes]
                         for nodes in self.searches[i]]})
        return {"kind": "greedy_search", "K": self.K, "n": self.n, "num_tasks": len(self.task_ids),
                "headline": "normalized_score",
                "curves": {"normalized_score": mean(score), "medal_rate": mean(medal),
                           "valid_rate": mean(valid)},
                "units": {"normalized_score": "fraction", "medal_rate": "fraction",
                          "valid_rate": "fraction (of the node made at step k)"},
                "per_task": per_task}


def grade_reply(env_factory: EnvFactory, task: Task, reply: str) -> dict:
    """`outcome_of` one reply, run as a single step on a fresh env of `task`."""
    env = env_factory(task)
    env.reset()
    return outcome_of(env.step(reply), reply, task)


def greedy_search(policy: Policy, tasks: Sequence[Task], env_factory: EnvFactory, K: int = 16, n: int = 1,
                  *, max_debug_depth: int | None = None, error_tail_chars: int = 2000,
                  executor: concurrent.futures.Executor | None = None,
                  on_step: Callable[[int, float], None] | None = None) -> SearchResult:
    """n greedy searches of K steps on each MLE task (paper: K = 16).

    Args:
      env_factory: a fresh MLE env per graded solution; `reset()` gives the base prompt, `step(reply)`
        runs the code in the sandbox and grades it (info: code, valid, validation_score, normalized, medal,
        error).
      max_debug_depth: after this many consecutive debug steps the search improves the best node instead
        (None: always debug a failed last node, the paper's rule).
      error_tail_chars: how much of the end of the error trace the debug prompt shows.
      executor: grades the n × tasks solutions of a step in parallel (e.g. a thread pool over the sandbox).
    """
    if K < 0 or n < 1:
        raise ValueError(f"Greedy search needs K >= 0 and n >= 1, got K={K}, n={n}.")
    tasks = list(tasks)
    envs = [env_factory(t) for t in tasks]
    openings = [list(env.reset()) for env in envs]
    searches: list[list[list[Node]]] = [[[] for _ in range(n)] for _ in tasks]

    def add(step: int, plans: list[tuple[int, int, str, int]], replies: list[str]) -> None:
        flat = [(tasks[i], reply) for (i, _, _, _), reply in zip(plans, replies)]
        if executor is None:
            graded = [grade_reply(env_factory, t, r) for t, r in flat]
        else:
            graded = list(executor.map(grade_reply, [env_factory] * len(flat), *zip(*flat))) if flat else []
        for (i, j, action, parent), out in zip(plans, graded):
            searches[i][j].append(Node(step=step, action=action, parent=parent, **out))
        if on_step is not None:
            res = SearchResult(K=step, n=n, task_ids=[t.id for t in tasks], searches=searches)
            on_step(step, res.to_dict()["curves"]["normalized_score"][-1] if tasks else float("nan"))

    first = generate_checked(policy, openings, num_samples=n)
    add(0, [(i, j, "draft", -1) for i in range(len(tasks)) for j in range(n)],
        [r for row in first for r in row])
    for step in range(1, K + 1):
        plans, conversations = [], []
        for i, task in enumerate(tasks):
            for j in range(n):
                nodes = searches[i][j]
                action, parent = next_action(nodes, max_debug_depth)
                code = nodes[parent].code if parent >= 0 else mle_prompts.MLE_STARTER_SOLUTION
                trace = _error_tail(nodes[parent].error, error_tail_chars) if action == "debug" else ""
                plans.append((i, j, action, parent))
                conversations.append(iterate_conversation(openings[i], task, code, action, trace, envs[i]))
        replies = generate_checked(policy, conversations, num_samples=1)
        add(step, plans, [row[0] for row in replies])
    return SearchResult(K=K, n=n, task_ids=[t.id for t in tasks], searches=searches)

