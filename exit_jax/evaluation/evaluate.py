"""Inference-time self-improvement evaluation of a policy on a domain's held-out tasks.

Math: K self-improve steps (paper: 16, avg@8); tool use: K self-improve steps per turn (paper: 4) with
all user requests and up to 60 responses; MLE: greedy search for K steps (paper: 16). Writes
WORKDIR/eval.json plus PNG plots of the curves and of the curriculum statistics over training.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Optional

from exit_jax.evaluation import eval_json, greedy_search, multi_turn, plots, self_improve
from exit_jax.envs.domains import Domain
from exit_jax.training.metrics import read_metrics

log = logging.getLogger(__name__)

# The paper's curriculum statistics (Figs. 5-7) plus the training reward, one panel each.
CURRICULUM_PANELS = ("reward/mean", "curriculum/learnability", "curriculum/buffer_size",
                     "curriculum/replay_fraction", "curriculum/sampled_depth", "curriculum/start_turn",
                     "curriculum/sampled_from_iteration", "curriculum/distinct_instances_seen",
                     "curriculum/buffer_score_p50")


def evaluate_policy(policy, domain: Domain, num_tasks: Optional[int] = None, K: Optional[int] = None,
                    n: int = 8, workers: int = 4) -> dict:
    """{evaluation name: result} for the domain's held-out tasks."""
    tasks = list(domain.eval_tasks)[:num_tasks]
    if not tasks:
        raise ValueError(f"domain {domain.name!r} has no held-out tasks to evaluate on.")
    K = domain.eval_steps if K is None else K
    progress = lambda k, v: log.info("%s eval step %d: %.4f", domain.name, k, v)  # noqa: E731
    if domain.name == "math":
        result = self_improve.evaluate(policy, tasks, domain.make_env, K=K, n=n, grade_batch=domain.grade_batch,
                                       group_of=lambda t: t.data.get("family", "all"), on_step=progress)
        return {"self_improvement": result}
    if domain.name == "tool_use":
        make_env = domain.make_eval_env or domain.make_env
        return {"self_improvement": multi_turn.evaluate_multi_turn(policy, tasks, make_env, K=K, n=n,
                                                                   on_step=progress)}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return {"greedy_search": greedy_search.greedy_search(policy, tasks, domain.make_env, K=K, n=n,
                                                             executor=pool, on_step=progress)}


def evaluate_and_report(policy, domain: Domain, workdir: str, method: str, seed: int = 0,
                        num_tasks: Optional[int] = 16, K: Optional[int] = None, n: int = 8,
                        iteration: Optional[int] = None) -> dict:
    """Evaluates, writes WORKDIR/eval.json and the plots; returns the eval.json record."""
    results = evaluate_policy(policy, domain, num_tasks=num_tasks, K=K, n=n)
    record = eval_json.make_eval_record(method, domain.name, results, seed=seed, iteration=iteration,
                                        run=os.path.basename(os.path.abspath(workdir)))
    path = eval_json.write_eval_json(os.path.join(workdir, "eval.json"), record)
    written = plots.plot_eval(record, workdir)
    curriculum = plots.plot_curriculum({method: read_metrics(workdir)},
                                       os.path.join(workdir, "curriculum.png"), keys=CURRICULUM_PANELS)
    log.info("wrote %s and plots %s", path, written + ([curriculum] if curriculum else []))
    return record
