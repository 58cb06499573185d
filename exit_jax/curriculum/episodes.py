"""Episode construction and buffer updates of ExIt (paper §4, Algorithm 1), on the message level.

Per prompt group (docs/paper.md §13.2): with probability p, once the buffer holds ≥ B_min entries, select
an entry τ_t ~ softmax(κ·S), take a random turn prefix t⁻ ≤ t ending with the k'-th iterate of turn t⁻,
and continue from it (a self-improvement step, or with probability p_div a self-divergence step);
otherwise draw a base task uniformly. After the group: the selected entry's score is overwritten with the
group's learnability S, and every rollout's per-turn partial histories enter with score S.

A history payload (JSON) is domain-agnostic: {"task_id": str, "turns": [turn, ...]} where each turn is
{"response": the latest iterate of that turn's assistant reply, "depth": its iterate index k,
 "score": quality in [0, 1] of the rollout that produced it, "failed": bool, "feedback": str (e.g. an
 error trace)}. Messages are rebuilt by replaying the responses of earlier turns on a fresh Env (replay).

Nothing here touches a model or tokenizer: the training loop renders `Episode.prompt` with the chat
template.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from exit_jax.curriculum import buffer, prompts, rewards
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.envs.base import Env, Task, replay
from exit_jax.envs.mle import prompts as mle_prompts

MakeEnv = Callable[[Task], Env]


@dataclasses.dataclass(frozen=True)
class Episode:
    """One prompt group's starting point."""
    task: Task
    kind: str  # "base" | "replay"
    step: str  # "base" | "improve" | "diverge" | "curriculum"
    depth: int  # k of the iterate this episode produces: k'+1 for improve/diverge, else 0
    start_turn: int  # 1-based turn t⁻ the episode (re)answers; 1 for base tasks
    prompt: tuple  # messages to send to the model
    context: tuple  # the conversation before turn t⁻, without any self-iteration prompt
    prefix: tuple = ()  # assistant replies of turns < t⁻ (replay them on a fresh env to continue)
    history: tuple = ()  # turn records of turns < t⁻; children start from them
    previous_response: Optional[str] = None  # y^{k'} at turn t⁻ (improve / diverge)
    previous_score: Optional[float] = None  # r_{k-1} (improve / diverge)
    debug: bool = False  # MLE: the previous iterate failed, so the improve step is a debug step
    error_trace: str = ""  # shown as {debug_info} on a debug step
    slot: int = -1  # the selected buffer slot (replay only)
    parent_uid: int = -1  # uid of the selected entry (replay only)
    sampled_depth: int = -1  # k' of the selected iterate (replay only)
    sampled_from: int = -1  # creation iteration of the selected entry (replay only)


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What one rollout of a group produced, from the episode's start turn on."""
    responses: tuple  # assistant replies from turn t⁻ on; responses[0] is the new iterate
    score: float  # quality in [0, 1] of the completed trajectory (correctness; normalised MLE score)
    failed: bool = False  # the new iterate errored (MLE: crash, timeout, invalid submission)
    feedback: str = ""  # e.g. the error trace; shown when this iterate is debugged later
    graded: bool = True  # False: the environment could not score it (a grader timeout); left out of its group


def task_key(task_id: str) -> int:
    """A stable int64 key of a task id, for the buffer's metadata arrays."""
    return int.from_bytes(hashlib.blake2b(str(task_id).encode(), digest_size=8).digest(), "little",
                          signed=True)


def instance_key(episode: Episode) -> str:
    """Identifies the task instance (m, τ) an episode starts from (for distinct-instance counts)."""
    text = repr((episode.task.id, episode.step == "curriculum", episode.prefix, episode.previous_response))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _instruction(env: Env, context: Sequence[dict]) -> str:
    try:
        return env.instruction()
    except NotImplementedError:  # fall back to the latest user request
        users = [m["content"] for m in context if m.get("role") == "user"]
        return users[-1] if users else ""


def with_user_prompt(context: Sequence[dict], text: str) -> tuple:
    """The context with `text` as the last user message.

    A trailing user message is the request itself, which the template quotes as {instruction}, so it is
    replaced; after a tool result the prompt is appended (docs/paper.md §4.2 "Multi-turn use").
    """
    msgs = [dict(m) for m in context]
    if msgs and msgs[-1].get("role") == "user":
        msgs[-1] = {"role": "user", "content": text}
    else:
        msgs.append({"role": "user", "content": text})
    return tuple(msgs)


def _mle_fields(task: Task) -> tuple[str, str]:
    try:
        return str(task.data["task_description"]), str(task.data["preview_contents"])
    except KeyError as e:
        raise ValueError(f"MLE task {task.id!r} lacks data field {e.args[0]!r}; the MLE template needs "
                         "'task_description' and 'preview_contents'.") from None


def restore(episode: Episode, make_env: MakeEnv) -> tuple[Env, list]:
    """A fresh env at the episode's start turn, and the conversation before that turn."""
    env = make_env(episode.task)
    messages, result = replay(env, episode.prefix)
    if result is not None and result.done:
        raise ValueError(f"Replaying the stored history of task {episode.task.id!r} ended the episode before "
                         f"turn {episode.start_turn}; the environment is not deterministic.")
    return env, messages


def base_episode(task: Task, make_env: MakeEnv) -> Episode:
    context = tuple(dict(m) for m in make_env(task).reset())
    return Episode(task=task, kind="base", step="base", depth=0, start_turn=1, prompt=context,
                   context=context)


def replay_episode(task: Task, make_env: MakeEnv, config: CurriculumConfig, turns: Sequence[Mapping],
                   start_turn: int, step: str, **selection) -> Episode:
    """Continues from the turn prefix of `turns` that ends at turn `start_turn` (1-based)."""
    if not 1 <= start_turn <= len(turns):
        raise ValueError(f"start_turn must be in [1, {len(turns)}], got {start_turn}.")
    history = tuple(dict(t) for t in turns[:start_turn - 1])
    last = turns[start_turn - 1]
    ep = Episode(task=task, kind="replay", step=step, depth=0, start_turn=start_turn, prompt=(),
                 context=(), prefix=tuple(t["response"] for t in history), history=history, **selection)
    env, context = restore(ep, make_env)
    context = tuple(dict(m) for m in context)
    if step == "curriculum":  # re-attempt the stored starting point from scratch (docs/paper.md §10)
        return dataclasses.replace(ep, prompt=context, context=context)
    if step not in ("improve", "diverge"):
        raise ValueError(f"Replay step must be 'improve', 'diverge' or 'curriculum', got {step!r}.")
    previous = str(last["response"])
    debug = config.template == "mle" and step == "improve" and bool(last.get("failed", False))
    if config.template == "mle":
        from exit_jax.envs.mle.env import extract_code  # lazy: pulls in pandas
        description, previews = _mle_fields(task)
        goal = "debug" if debug else step
        # The template wraps the previous solution in its own code fence: show the code, as the greedy
        # search evaluation does, not the whole reply (whose fence would nest inside the template's).
        text = mle_prompts.mle_prompt(extract_code(previous) or previous, description, previews, goal=goal,
                                      error_trace=str(last.get("feedback", "")))
    else:
        text = prompts.self_iteration_prompt(step, _instruction(env, context), previous)
    return dataclasses.replace(
        ep, depth=int(last["depth"]) + 1, prompt=with_user_prompt(context, text), context=context,
        previous_response=previous, previous_score=float(last.get("score", 0.0)), debug=debug,
        error_trace=str(last.get("feedback", "")) if debug else "")


def select(state: buffer.BufferState, seed: int | Sequence[int], tasks: Sequence[Task], make_env: MakeEnv,
           config: CurriculumConfig, n_groups: int, iteration: int = 0) -> tuple[buffer.BufferState, list]:
    """The episodes of one training iteration (Algorithm 1, one decision per prompt group): replay or base,
    the buffer entry and its turn prefix, improve or diverge. The draws depend on `seed` (an int or a tuple
    of ints) only: the loop passes (run seed, iteration). The returned state counts the buffer draws."""
    if not tasks:
        raise ValueError("select needs at least one base task.")
    # Two independent streams of the one seed: the decisions here, the buffer's draws of slots.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    slot_seed = np.random.SeedSequence(seed, spawn_key=(1,))
    gate = config.use_buffer and buffer.size(state) >= config.b_min
    replay_mask = np.array([gate and rng.random() < config.replay_prob for _ in range(n_groups)], bool)
    slots = np.zeros((0,), np.int64)
    if replay_mask.any():
        state, slots = buffer.sample(state, slot_seed, int(replay_mask.sum()), config.kappa, iteration)
    by_id = {t.id: t for t in tasks}
    episodes, slot_iter = [], iter(slots)
    for is_replay in replay_mask:
        if not is_replay:
            episodes.append(base_episode(tasks[int(rng.integers(len(tasks)))], make_env))
            continue
        slot = int(next(slot_iter))
        entry = buffer.payload(state, slot)
        if entry["task_id"] not in by_id:
            raise ValueError(f"Buffer entry in slot {slot} refers to task {entry['task_id']!r}, which is not "
                             "among the given tasks.")
        # paper §4.1 selection: a random turn prefix t⁻ ≤ t of the sampled history
        start_turn = int(rng.integers(1, len(entry["turns"]) + 1))
        if not config.self_iterate:
            step = "curriculum"
        else:
            step = "diverge" if rng.random() < config.p_div else "improve"
        episodes.append(replay_episode(
            by_id[entry["task_id"]], make_env, config, entry["turns"], start_turn, step, slot=slot,
            parent_uid=int(state.uid[slot]), sampled_depth=int(entry["turns"][start_turn - 1]["depth"]),
            sampled_from=int(state.created_at[slot])))
    return state, episodes


def group_rewards(episode: Episode, rollouts: Sequence[Rollout], config: CurriculumConfig) -> np.ndarray:
    """Training rewards float64 [G] of one group (paper Appendix A)."""
    return rewards.group_rewards(episode.step, [r.score for r in rollouts], episode.previous_score,
                                 config.improvement_reward)


def child_turns(episode: Episode, rollout: Rollout) -> list:
    """The full turn records of a rollout: the episode's history, the new iterate, the later turns."""
    if not rollout.responses:
        raise ValueError(f"A rollout of task {episode.task.id!r} has no response.")
    score = float(rollout.score)
    turns = [dict(t) for t in episode.history]
    turns.append({"response": str(rollout.responses[0]), "depth": episode.depth, "score": score,
                  "failed": bool(rollout.failed), "feedback": str(rollout.feedback)})
    turns.extend({"response": str(r), "depth": 0, "score": score, "failed": False, "feedback": ""}
                 for r in rollout.responses[1:])
    return turns


def record(state: buffer.BufferState, episodes: Sequence[Episode], groups: Sequence[Sequence[Rollout]],
           training_rewards: Sequence[np.ndarray], config: CurriculumConfig,
           iteration: int) -> tuple[buffer.BufferState, np.ndarray]:
    """Scores every group and writes the outcome into the buffer; returns (state, S float64 [n_groups]).

    `groups` holds the graded rollouts only (the loop leaves ungraded ones out) and `training_rewards` their
    rewards [len(group)] (`group_rewards(episode, group, config)`, computed once by the loop).

    All selected entries are re-scored before any insertion, so that a child never evicts a slot whose
    score is still to be overwritten. Only the prefixes that end at or after the start turn are inserted:
    shorter ones are the parent's own prefixes, already in the buffer.
    """
    if not len(episodes) == len(groups) == len(training_rewards):
        raise ValueError(f"record got {len(episodes)} episodes, {len(groups)} rollout groups and "
                         f"{len(training_rewards)} reward groups.")
    # A group left with no rollout (all ungraded) has no score: NaN, and its entry keeps its old one.
    scores = np.asarray([rewards.learnability(r) if len(r) else np.nan for r in training_rewards], np.float64)
    if not config.use_buffer:
        return state, scores
    replayed = [i for i, ep in enumerate(episodes) if ep.kind == "replay" and len(groups[i])]
    if replayed:
        state = buffer.update_scores(state, [episodes[i].slot for i in replayed], scores[replayed])
    # Curriculum replays starting points: entries that start at the same place are one instance, so
    # they are stored once and re-scored instead of duplicated (docs/paper.md §10 reading).
    known = _starting_points(state) if not config.self_iterate else {}
    rescore: dict = {}
    payloads, child_scores = [], []
    meta = {k: [] for k in ("task_id", "depth", "turn", "parent")}
    for ep, group, s in zip(episodes, groups, scores):
        for rollout in group:
            turns = child_turns(ep, rollout)
            for end in range(ep.start_turn, len(turns) + 1):
                if not config.self_iterate:
                    key = _start_key(ep.task.id, turns[:end])
                    if key in known:
                        if known[key] >= 0:
                            rescore[known[key]] = s
                        continue
                    known[key] = -1  # inserted below
                payloads.append({"task_id": ep.task.id, "turns": turns[:end]})
                child_scores.append(s)  # children inherit S, their parent's fresh score (paper §4.1)
                meta["task_id"].append(task_key(ep.task.id))
                meta["depth"].append(turns[end - 1]["depth"])
                meta["turn"].append(end)
                meta["parent"].append(ep.parent_uid)
    if rescore:
        state = buffer.update_scores(state, list(rescore), list(rescore.values()))
    if payloads:
        state, _ = buffer.insert(state, payloads, child_scores, created_at=iteration, **meta)
    return state, scores


def _start_key(task_id: str, turns: Sequence[Mapping]) -> str:
    """The starting point a Curriculum entry stands for: the task and the replies before its last turn."""
    return repr((task_id, [t["response"] for t in turns[:-1]]))


def _starting_points(state: buffer.BufferState) -> dict:
    out = {}
    for slot in np.flatnonzero(state.filled):
        entry = buffer.payload(state, int(slot))
        out[_start_key(entry["task_id"], entry["turns"])] = int(slot)
    return out
