"""Task domains as the training loop sees them: base tasks, held-out tasks, an env factory, stop strings.

Each constructor is what a domain .gin file binds (`train.domain = @domains.math_domain()`); its arguments are
the domain's knobs. Environments are built per rollout (`make_env(task)`), never shared.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence

from exit_jax.envs.base import Env, Task


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str  # "math" | "tool_use" | "mle"
    train_tasks: tuple  # base task set M (paper Algorithm 1: drawn uniformly)
    eval_tasks: tuple  # held-out tasks for self-improvement evaluation
    make_env: Callable[[Task], Env]
    stop_strings: tuple = ()  # end a reply early on the host (tool-use tags)
    # The test-time environment when it differs from training's (tool use: every request, 60 replies).
    make_eval_env: Optional[Callable[[Task], Env]] = None
    multi_turn: bool = False
    eval_steps: int = 16  # K of the inference-time self-improvement evaluation (paper: 16 math/MLE)
    # Scores many (task, reply) pairs in one call with the rewards of `make_env` (math: one math-verify
    # round trip per evaluation step); None: a fresh environment per reply.
    grade_batch: Optional[Callable] = None

    def __post_init__(self):
        if not self.train_tasks:
            raise ValueError(f"domain {self.name!r} has no training tasks.")


def math_domain(num_train: int = 1280, num_eval: int = 64, families: Optional[Sequence[str]] = None,
                levels: Sequence[int] = (1, 2, 3, 4, 5), train_file: Optional[str] = None,
                eval_file: Optional[str] = None, system_prompt: Optional[str] = None, seed: int = 0,
                anchorless: str = "latex", train_split: str = "train", eval_split: str = "test",
                problem_field: str = "problem", answer_field: Optional[str] = None) -> Domain:
    """Procedural competition math (offline default), or the user's data (docs/data.md).

    `train_file` / `eval_file`: a .jsonl/.json/.parquet file, or the folder of a prepared
    tensorflow-datasets build (array_record; `train_split` / `eval_split` pick its splits). Records need a
    `problem_field` and an `answer_field` (default: `answer`, else the last box of `solution`).
    The paper trains on 1,280 problems (docs/paper.md §9). `anchorless`: which answers without a box or an
    answer phrase the math-verify reward accepts (envs.math.GraderConfig; docs/math_grading.md).
    """
    from exit_jax.envs import math as math_env

    def load(path, split):
        if os.path.isdir(os.path.expanduser(path)):
            return math_env.load_tfds(path, split, problem_field, answer_field)
        return math_env.load_jsonl_or_parquet(path, problem_field, answer_field=answer_field)

    families = tuple(families) if families is not None else tuple(math_env.FAMILIES)
    if train_file:
        train = load(train_file, train_split)[:num_train]
    else:
        train = math_env.math_tasks("train", num_train, families=families, levels=levels, seed=seed)
    if eval_file:
        held_out = load(eval_file, eval_split)[:num_eval]
    else:
        held_out = math_env.math_tasks("test", num_eval, families=families, levels=levels, seed=seed)
    grader = math_env.Grader(math_env.GraderConfig(anchorless=anchorless))  # its worker starts on first use
    atexit.register(grader.close)
    make_env = functools.partial(math_env.MathEnv, system_prompt=system_prompt, grader=grader)
    return Domain("math", tuple(train), tuple(held_out), make_env, eval_steps=16,
                  grade_batch=functools.partial(math_env.grade_tasks, grader=grader))


def tool_use_domain(protocol: str = "json_tag", train_user_turns: Optional[int] = 1,
                    train_max_responses: Optional[int] = 10, eval_max_responses: Optional[int] = 60,
                    num_train: Optional[int] = None, num_eval: Optional[int] = None,
                    categories: Sequence[str] = ("multi_turn_base",),
                    call_time_limit_s: float = 5.0) -> Domain:
    """BFCL v3 multi-turn categories (the paper: multi_turn_base) with the paper's 100/100 split
    (docs/paper.md §9), applied to every category by entry number (envs.tool_use.split).

    Training uses only the first user request with a 10-response budget; evaluation allows up to 60
    responses over all requests. The paper's protocol is the JSON-in-<tool> one ("json_tag"). A tool call
    that runs longer than `call_time_limit_s` is stopped and answered with a tool error.
    """
    from exit_jax.envs.tool_use import bfcl, split
    if isinstance(categories, str) or not categories:
        raise ValueError(f"domains.tool_use_domain.categories={categories!r}: give a non-empty list of BFCL "
                         "categories, e.g. [\"multi_turn_base\", \"multi_turn_miss_func\"].")
    train = [t for c in categories for t in split.split_entries("train", c)][:num_train]
    held_out = [t for c in categories for t in split.split_entries("test", c)][:num_eval]
    make_env = functools.partial(bfcl.MultiTurnEnv, protocol=protocol, max_user_turns=train_user_turns,
                                 max_responses=train_max_responses, call_time_limit_s=call_time_limit_s)
    make_eval_env = functools.partial(bfcl.MultiTurnEnv, protocol=protocol, max_responses=eval_max_responses,
                                      call_time_limit_s=call_time_limit_s)
    stops = tuple(bfcl.STOP_STRINGS[protocol])
    return Domain("tool_use", tuple(train), tuple(held_out), make_env, stop_strings=stops,
                  make_eval_env=make_eval_env, multi_turn=True, eval_steps=4)


def mle_domain(train_ids: Optional[Sequence[str]] = None, eval_ids: Optional[Sequence[str]] = None,
               time_limit_s: float = 60.0, mlebench_dir: Optional[str] = None,
               competitions_dir: Optional[str] = None, sandboxes_per_task: int = 2) -> Domain:
    """MLE-lite tasks (offline default) or competitions prepared by openai/mle-bench (`mlebench_dir`;
    `competitions_dir` = mle-bench's mlebench/competitions for leaderboards and medals).

    Solutions run in pre-warmed bwrap sandboxes (numpy/pandas/sklearn already imported), shared by
    every rollout of the run.
    """
    from exit_jax.envs.mle import env as mle_env
    from exit_jax.envs.mle import lite, sandbox
    if mlebench_dir:
        from exit_jax import storage
        from exit_jax.envs.mle import mlebench
        if storage.is_remote(mlebench_dir):  # sandboxes read the competitions' files from a local disk
            mlebench_dir = storage.fetch(mlebench_dir, kind="mlebench")
        tasks = {t.id: t for t in mlebench.tasks(mlebench_dir, competitions_dir=competitions_dir)}
    else:
        tasks = {t.id: t for t in lite.tasks()}
    train_ids = list(train_ids) if train_ids is not None else list(tasks)[: max(1, len(tasks) // 2)]
    eval_ids = list(eval_ids) if eval_ids is not None else [i for i in tasks if i not in train_ids]
    unknown = [i for i in [*train_ids, *eval_ids] if i not in tasks]
    if unknown:
        raise ValueError(f"unknown MLE task ids {unknown}; known: {sorted(tasks)}.")
    pool = sandbox.WarmPool(max_workers=sandboxes_per_task * len(tasks), workers_per_dir=sandboxes_per_task)
    make_env = functools.partial(mle_env.MLEEnv, pool=pool, time_limit_s=time_limit_s)
    to_task = lambda i: mle_env.as_task(tasks[i])  # noqa: E731
    return Domain("mle", tuple(map(to_task, train_ids)), tuple(map(to_task, eval_ids)), make_env,
                  eval_steps=16)
