"""Rollout groups: G samples from each episode's prompt, run through fresh environments to the end.

The first reply of every rollout answers the episode's prompt (one prefill per prompt, fanned out to G
samples). Multi-turn environments then continue: each still-running rollout sends its conversation
(the episode's plain context, never the self-iteration prompt, plus what followed) back to the policy,
one batched sampler call per round, until its environment says done. Every model call becomes one
training segment carrying its rollout's advantage.

Environment steps run in a thread pool: the heavy work (sandboxed code, math-verify) happens in worker
processes, so threads overlap it without fighting over the GIL.

With several processes (multi-host), each samples and grades only its share of the groups and the
results are exchanged (training.processes); every row's random draws depend on its group and sample,
never on which process ran it, so the iteration is the one a single process would sample.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
from typing import Callable, Sequence

from exit_jax.curriculum.episodes import Episode, Rollout, restore
from exit_jax.envs.base import Env, StepResult, Task
from exit_jax.sampling.text_policy import Completion, TextPolicy
from exit_jax.training.processes import SINGLE, Processes

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One model call of one rollout: what the learner trains on."""
    group: int  # index p of the episode
    sample: int  # index g of the rollout within its group
    completion: Completion
    turn: int = 0  # which model call of its rollout (0: the reply to the episode's prompt)
    # The environment recognised the response as one of its response types (info["valid_response"];
    # True where an environment does not say): RunConfig.filter_invalid_responses trains only these.
    valid: bool = True


@dataclasses.dataclass
class _RunningRollout:
    env: Env
    messages: list
    responses: list
    result: StepResult | None = None
    first_info: dict = dataclasses.field(default_factory=dict)  # info of the new iterate's step


def _safe_step(env: Env, reply: str) -> StepResult:
    """Environment bugs must not kill a run: an exception, or a reward that is not a finite number,
    becomes reward 0 with its reason (logged with the task)."""
    try:
        result = env.step(reply)
    except Exception as e:  # noqa: BLE001 - untrusted model text reaches env code here
        return StepResult(messages=[], reward=0.0, done=True,
                          info={"reason": f"environment error: {type(e).__name__}: {e}"[:500]})
    try:
        finite = math.isfinite(result.reward)
    except TypeError:
        finite = False
    if not finite:
        log.warning("task %s: the environment returned reward %r; scored 0", env.task.id, result.reward)
        result = dataclasses.replace(result, reward=0.0, info={
            **result.info, "reason": f"environment returned a non-finite reward {result.reward!r}"[:500]})
    return result


def _judged(segment: Segment, result: StepResult) -> Segment:
    return dataclasses.replace(segment, valid=bool(result.info.get("valid_response", True)))


def _rollout_record(live: _RunningRollout) -> Rollout:
    # MLE: an iterate that crashed or wrote no valid submission is debugged when replayed.
    failed = bool(live.first_info.get("failed", live.first_info.get("valid") is False))
    feedback = str(live.first_info.get("error", "") or "")
    score = float(live.result.reward) if live.result is not None else 0.0
    graded = live.result is None or not live.result.info.get("ungraded", False)
    return Rollout(responses=tuple(live.responses), score=min(max(score, 0.0), 1.0), failed=failed,
                   feedback=feedback, graded=graded)


def run_groups(policy: TextPolicy, params, episodes: Sequence[Episode], group_size: int,
               make_env: Callable[[Task], Env], seed: int, pool: concurrent.futures.Executor,
               max_rounds: int = 64, processes: Processes = SINGLE) -> tuple[list, list, dict]:
    """Samples with `params`; returns (groups [P][G] Rollouts, training Segments ordered by turn, group and
    sample, stats), for all P episodes also when `processes` split the sampling and grading between them."""
    mine = processes.share(len(episodes))
    if processes.count > 1:
        log.info("process %d of %d samples and grades groups %d-%d of %d", processes.index + 1, processes.count,
                 mine.start, mine.stop - 1, len(episodes))
    first = policy.sample(params, [list(episodes[p].prompt) for p in mine], group_size, seed=seed,
                          first_index=mine.start)
    live = {}
    segments = []
    for p, row in zip(mine, first):
        for g, completion in enumerate(row):
            env, context = restore(episodes[p], make_env)
            live[p, g] = _RunningRollout(env=env, messages=list(context) + [
                {"role": "assistant", "content": completion.text}], responses=[completion.text])
            segments.append(Segment(p, g, completion))
    keys = list(live)
    results = list(pool.map(lambda k: _safe_step(live[k].env, live[k].responses[0]), keys))
    segments = [_judged(s, r) for s, r in zip(segments, results)]
    for k, result in zip(keys, results):
        live[k].result = result
        live[k].first_info = result.info
        live[k].messages.extend(result.messages)
    rounds = 1
    while rounds < max_rounds:
        active = [k for k in keys if not live[k].result.done]
        # Row keys follow a rollout's place among all processes' running rollouts, as with one process.
        offset, total = processes.offset(len(active))
        if not total:
            break
        replies = policy.sample(params, [live[k].messages for k in active], 1, seed=seed + 7919 * rounds,
                                first_index=offset)
        for k, row in zip(active, replies):
            live[k].responses.append(row[0].text)
            live[k].messages.append({"role": "assistant", "content": row[0].text})
        results = list(pool.map(lambda k: _safe_step(live[k].env, live[k].responses[-1]), active))
        segments += [_judged(Segment(k[0], k[1], row[0], rounds), r) for k, row, r in zip(active, replies, results)]
        for k, result in zip(active, results):
            live[k].result = result
            live[k].messages.extend(result.messages)
        rounds += 1
    shares = processes.gather(([[_rollout_record(live[p, g]) for g in range(group_size)] for p in mine],
                               segments, sum(not live[k].result.done for k in keys)))
    groups = [group for share, _, _ in shares for group in share]
    segments = sorted((s for _, share, _ in shares for s in share), key=lambda s: (s.turn, s.group, s.sample))
    return groups, segments, _stats(groups, segments, rounds, sum(n for _, _, n in shares))


def _stats(groups: list, segments: list, rounds: int, unfinished: int) -> dict:
    completions = [s.completion for s in segments]
    return {
        "rollout/model_calls": len(segments),
        "rollout/rounds": rounds,
        "rollout/unfinished": unfinished,
        "rollout/completion_tokens": sum(len(c.token_ids) for c in completions),
        "rollout/mean_completion_tokens": sum(len(c.token_ids) for c in completions) / len(completions),
        "rollout/hit_max_new_tokens": sum(not c.finished for c in completions) / len(completions),
        "rollout/shortened_prompts": sum(c.shortened_prompt for c in completions),
        "rollout/invalid_responses": sum(not s.valid for s in segments) / len(segments),
        "rollout/ungraded": sum(not r.graded for g in groups for r in g),
        "rollout/mean_prompt_tokens": sum(len(c.prompt_ids) for c in completions) / len(completions),
    }
