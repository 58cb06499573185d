"""Rollout groups on real environments (multi-turn BFCL, math) and batch packing for the learner."""
import concurrent.futures
import dataclasses
import threading

import numpy as np
import pytest

from exit_jax.curriculum import episodes
from exit_jax.envs import math as math_env
from exit_jax.envs.tool_use import bfcl
from exit_jax.training import batch as batch_lib
from exit_jax.sampling.text_policy import Completion
from exit_jax.training.processes import Processes
from exit_jax.testing import ScriptedPolicy
from exit_jax.training.rollout import run_groups


@pytest.fixture(scope="module")
def pool():
    with concurrent.futures.ThreadPoolExecutor(4) as p:
        yield p


def test_multi_turn_rollouts_continue_until_the_env_is_done(pool):
    task = bfcl.load_entries("multi_turn_base")[0]
    make_env = lambda t: bfcl.MultiTurnEnv(t, protocol="json_tag", max_user_turns=1)  # noqa: E731
    oracle = bfcl.oracle_replies(task, protocol="json_tag", max_user_turns=1)
    assert len(oracle) >= 2  # at least one call step, then the end of the request

    def rule(conv, g):
        done = sum(m["role"] == "assistant" for m in conv)
        if g == 0:  # sample 0 follows the ground truth; sample 1 gives up at once
            return oracle[done]
        return "<TASK_FINISHED>"

    policy = ScriptedPolicy(rule)
    ep = episodes.base_episode(task, make_env)
    groups, segments, stats = run_groups(policy, None, [ep], 2, make_env, seed=0, pool=pool)
    assert [r.score for r in groups[0]] == [1.0, 0.0]
    assert list(groups[0][0].responses) == oracle
    assert len(groups[0][1].responses) == 1
    # One G-sample call for the first replies, then one call per round for the rollouts still running.
    assert policy.calls[0] == (1, 2) and all(c == (1, 1) for c in policy.calls[1:])
    assert len(segments) == len(oracle) + 1 == stats["rollout/model_calls"]
    assert stats["rollout/unfinished"] == 0


class Board:
    """What threads standing in for processes exchange (the real exchange: tests/test_multihost.py)."""

    def __init__(self, count):
        self.slots, self.barrier = [None] * count, threading.Barrier(count)


@dataclasses.dataclass(frozen=True)
class ThreadProcesses(Processes):
    board: Board = None

    def gather(self, obj):
        self.board.slots[self.index] = obj
        self.barrier()
        out = list(self.board.slots)
        self.barrier()
        return out

    def barrier(self, name=""):
        self.board.barrier.wait(timeout=60)

    def _ints(self, value):
        return np.array(self.gather(value))


def test_processes_sharing_the_groups_sample_what_one_process_samples(pool):
    """Split over processes, multi-turn rollouts draw as with one process: each row's draw depends on
    the seed and its place in the whole batch, and the groups and model calls come back whole, ordered."""
    tasks = bfcl.load_entries("multi_turn_base")[:5]
    make_env = lambda t: bfcl.MultiTurnEnv(t, protocol="json_tag", max_user_turns=1,  # noqa: E731
                                           max_responses=6)

    class DrawingPolicy:  # a tool call (the episode goes on) or the end, by a draw from (seed, row)
        def sample(self, params, conversations, num_samples, seed, first_index=0):
            def completion(row, g):
                draw = np.random.default_rng([seed, first_index + row, g]).random()
                call = f'<tool>{{"name": "ls", "arguments": {{}}}}</tool> {draw:.4f}'
                return Completion(text="<TASK_FINISHED>" if draw < 0.3 else call, prompt_ids=(1,),
                                  token_ids=(5, 6), logprobs=np.full(2, draw, np.float32), finished=True,
                                  shortened_prompt=False)
            return [[completion(i, g) for g in range(num_samples)] for i in range(len(conversations))]

    eps = [episodes.base_episode(t, make_env) for t in tasks]
    want = run_groups(DrawingPolicy(), None, eps, 3, make_env, seed=5, pool=pool)
    assert want[2]["rollout/rounds"] > 2 and len({len(r.responses) for g in want[0] for r in g}) > 2
    board = Board(2)
    with concurrent.futures.ThreadPoolExecutor(2) as processes:
        got = list(processes.map(lambda i: run_groups(DrawingPolicy(), None, eps, 3, make_env, seed=5, pool=pool,
                                                      processes=ThreadProcesses(i, 2, board)), range(2)))
    for groups, segments, stats in got:
        assert groups == want[0] and stats == want[2]
        assert [(s.group, s.sample, s.turn, s.completion.text) for s in segments] == \
            [(s.group, s.sample, s.turn, s.completion.text) for s in want[1]]


def test_single_turn_group_scores_and_failing_env_is_contained(pool):
    task = math_env.math_tasks("train", 1, families=("arith",), levels=(1,))[0]
    answer = task.data["answer"]
    replies = {0: f"\\boxed{{{answer}}}", 1: "no idea", 2: "\\boxed{"}
    policy = ScriptedPolicy(lambda conv, g: replies[g])

    class Exploding(math_env.MathEnv):
        def step(self, reply):
            if reply == "no idea":
                raise RuntimeError("grader bug")
            return super().step(reply)

    ep = episodes.base_episode(task, math_env.MathEnv)
    groups, segments, _ = run_groups(policy, None, [ep], 3, Exploding, seed=0, pool=pool)
    assert [r.score for r in groups[0]] == [1.0, 0.0, 0.0]
    assert len(segments) == 3

    class Broken(math_env.MathEnv):  # rewards that are not finite numbers score 0, with the task logged
        def step(self, reply):
            result = super().step(reply)
            bad = {"no idea": float("nan"), "\\boxed{": float("inf")}.get(reply, result.reward)
            return dataclasses.replace(result, reward=bad)

    groups, _, _ = run_groups(policy, None, [ep], 3, Broken, seed=0, pool=pool)
    assert [r.score for r in groups[0]] == [1.0, 0.0, 0.0]


def test_pack_aligns_prompt_completion_and_logprobs():
    segs = [type("S", (), {"group": p, "sample": g, "completion": Completion(
        text="", prompt_ids=tuple(range(1, 4 + p)), token_ids=(9,) * (2 + g),
        logprobs=np.arange(2 + g, dtype=np.float32) - 3, finished=True, shortened_prompt=False)})()
        for p in range(2) for g in range(2)]
    adv = np.array([[1.0, -1.0], [0.5, -0.5]], np.float32)
    mult = np.array([[2.0, 1.0], [1.0, 1.0]], np.float32)
    b = batch_lib.pack(segs, adv, mult, max_new_tokens=4, pad_id=0, row_multiple=3, min_bucket=8)
    assert b["tokens"].shape == (6, 12)  # 4 rows padded to a multiple of 3; prompt bucket 8 + 4
    assert b["sample_mask"].tolist() == [True] * 4 + [False] * 2
    row = 3  # group 1, sample 1: prompt of 4 tokens, 3 completion tokens
    assert b["tokens"][row, 4:8].tolist() == [1, 2, 3, 4] and b["tokens"][row, 8:11].tolist() == [9, 9, 9]
    assert b["input_mask"][row].tolist() == [False] * 4 + [True] * 7 + [False]
    # completion_mask / old_logprobs cover the last N = 4 columns only (the learner's logit window)
    assert b["completion_mask"][row].tolist() == [True] * 3 + [False]
    np.testing.assert_array_equal(b["old_logprobs"][row], [-3, -2, -1, 0])
    assert b["advantages"].tolist()[:4] == [1.0, -1.0, 0.5, -0.5]
    assert b["advantage_multiplier"].tolist()[:4] == [2.0, 1.0, 1.0, 1.0]
    assert not b["completion_mask"][4:].any()
    kept = batch_lib.pack(segs, adv, mult, max_new_tokens=4, pad_id=0, row_multiple=3, min_bucket=8,
                          keep=[True, False, True, True])
    assert kept["sample_mask"].tolist() == [True, False, True, True, False, False]


def test_responses_without_a_response_type_are_marked_for_overlong_filtering(pool):
    """json_tag: a parsed call or an end marker is a response type; text cut off before either is not
    (paper Appendix A.3's overlong filtering then leaves it out of the loss)."""
    task = bfcl.load_entries("multi_turn_base")[0]
    make_env = lambda t: bfcl.MultiTurnEnv(t, protocol="json_tag", max_user_turns=1)  # noqa: E731
    oracle = bfcl.oracle_replies(task, protocol="json_tag", max_user_turns=1)
    rules = {0: lambda done: oracle[done], 1: lambda done: "I will now call the <tool>{\"name\": \"l",
             2: lambda done: "<TASK_ERROR>"}
    policy = ScriptedPolicy(lambda conv, g: rules[g](sum(m["role"] == "assistant" for m in conv)))
    ep = episodes.base_episode(task, make_env)
    groups, segments, stats = run_groups(policy, None, [ep], 3, make_env, seed=0, pool=pool)
    by_sample = {g: [s.valid for s in segments if s.sample == g] for g in range(3)}
    assert by_sample == {0: [True] * len(oracle), 1: [False], 2: [True]}
    assert stats["rollout/invalid_responses"] == pytest.approx(1 / len(segments))
