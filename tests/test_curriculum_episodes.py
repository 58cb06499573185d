"""Episode construction (base / replay, improve / diverge / curriculum), buffer updates and statistics.

Two small but complete environments implement the Env protocol: a single-turn arithmetic task and a
multi-turn counting task with tool results and several user requests.
"""
import dataclasses

import numpy as np
import pytest
import scipy.stats

from exit_jax.curriculum import buffer, episodes, prompts, stats
from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.curriculum.config import CurriculumConfig, preset
from exit_jax.envs.base import Env, StepResult, Task

SYSTEM = {"role": "system", "content": "Reply with a number."}


class AddEnv(Env):
    """Single turn: 'What is a + b?'; reward 1 for the right sum."""

    def reset(self):
        return [dict(SYSTEM), {"role": "user", "content": self.instruction()}]

    def instruction(self):
        return f"What is {self.task.data['a']} + {self.task.data['b']}?"

    def step(self, reply):
        ok = reply.strip() == str(self.task.data["a"] + self.task.data["b"])
        return StepResult([], float(ok), True, {} if ok else {"reason": "wrong sum"})


class CountEnv(Env):
    """Multi-turn: each user request 'count to n' takes n assistant replies '1'..'n'; tool acks between."""

    def reset(self):
        self.request, self.count, self.ok = 0, 0, True
        return [dict(SYSTEM), {"role": "user", "content": self.instruction()}]

    def instruction(self):
        return f"count to {self.task.data['requests'][self.request]}"

    def step(self, reply):
        self.count += 1
        self.ok &= reply.strip() == str(self.count)
        if self.count < self.task.data["requests"][self.request]:
            return StepResult([{"role": "tool", "content": f"ack {self.count}"}], 0.0, False)
        self.request, self.count = self.request + 1, 0
        if self.request == len(self.task.data["requests"]):
            return StepResult([], float(self.ok), True)
        return StepResult([{"role": "user", "content": self.instruction()}], 0.0, False)


def make_env(task):
    return {"add": AddEnv, "count": CountEnv}[task.domain](task)


ADD_TASKS = [Task(f"add/{i}", "add", {"a": i, "b": 2 * i}) for i in range(5)]
COUNT = Task("count/0", "count", {"requests": [2, 1]})  # 3 turns: '1', '2' | '1'


def turn(response, depth=0, score=0.0, failed=False, feedback=""):
    return {"response": response, "depth": depth, "score": score, "failed": failed, "feedback": feedback}


def test_base_and_single_turn_improve_and_diverge():
    cfg = CurriculumConfig(b_min=1, capacity=8)
    base = episodes.base_episode(ADD_TASKS[3], make_env)
    assert (base.kind, base.step, base.depth, base.start_turn) == ("base", "base", 0, 1)
    assert base.prompt == base.context == (SYSTEM, {"role": "user", "content": "What is 3 + 6?"})
    ep = episodes.replay_episode(ADD_TASKS[3], make_env, cfg, [turn("8", depth=2, score=0.0)], 1, "improve")
    assert (ep.kind, ep.step, ep.depth) == ("replay", "improve", 3)
    assert (ep.previous_response, ep.previous_score) == ("8", 0.0)
    assert ep.prompt == (SYSTEM, {"role": "user", "content": prompts.improve_prompt("What is 3 + 6?", "8")})
    assert ep.context == base.context and ep.prefix == ()
    div = episodes.replay_episode(ADD_TASKS[3], make_env, cfg, [turn("8")], 1, "diverge")
    assert div.prompt[-1]["content"] == prompts.diverge_prompt("What is 3 + 6?", "8") and div.depth == 1


def test_multi_turn_replay_keeps_history_and_uses_current_request():
    cfg = CurriculumConfig(b_min=1, capacity=8)
    turns = [turn("1"), turn("3", depth=1), turn("1")]
    # Turn 2 follows a tool result: the history is kept and the prompt appended as a user message.
    ep = episodes.replay_episode(COUNT, make_env, cfg, turns, 2, "improve")
    assert ep.prefix == ("1",) and ep.depth == 2 and ep.previous_response == "3"
    assert ep.context == (SYSTEM, {"role": "user", "content": "count to 2"},
                          {"role": "assistant", "content": "1"}, {"role": "tool", "content": "ack 1"})
    assert ep.prompt == ep.context + ({"role": "user", "content": prompts.improve_prompt("count to 2", "3")},)
    # Turn 3 starts the second user request: that request is the {instruction} and the trailing user
    # message is replaced by the prompt that quotes it.
    ep3 = episodes.replay_episode(COUNT, make_env, cfg, turns, 3, "improve")
    assert ep3.context[-1] == {"role": "user", "content": "count to 1"}
    quoted = {"role": "user", "content": prompts.improve_prompt("count to 1", "1")}
    assert ep3.prompt == ep3.context[:-1] + (quoted,)
    # The env restored at the start turn continues the task.
    env, messages = episodes.restore(ep, make_env)
    assert tuple(messages) == ep.context
    assert env.step("2").messages == [{"role": "user", "content": "count to 1"}]
    assert env.step("1").reward == 1.0
    # Curriculum re-attempts the stored starting point without a previous iterate or template.
    cur = episodes.replay_episode(COUNT, make_env, CurriculumConfig(self_iterate=False, b_min=1), turns, 2,
                                  "curriculum")
    assert cur.prompt == cur.context == ep.context and cur.previous_response is None and cur.depth == 0


def test_mle_template_debug_and_diverge():
    cfg = preset("mle", "exit")
    task = Task("mle/digits", "add", {"a": 1, "b": 1, "task_description": "Classify digits.",
                                      "preview_contents": "train.csv: ..."})
    failed = [turn("import x", depth=0, score=0.0, failed=True, feedback="ModuleNotFoundError: x")]
    ep = episodes.replay_episode(task, make_env, cfg, failed, 1, "improve")
    assert ep.debug and ep.error_trace == "ModuleNotFoundError: x" and ep.previous_score == 0.0
    assert ep.prompt[-1]["content"] == mle_prompts.mle_prompt("import x", "Classify digits.", "train.csv: ...",
                                                              goal="debug", error_trace="ModuleNotFoundError: x")
    ok = [turn("print(1)", depth=1, score=0.4)]
    imp = episodes.replay_episode(task, make_env, cfg, ok, 1, "improve")
    assert not imp.debug and imp.previous_score == 0.4 and imp.depth == 2
    assert mle_prompts.MLE_GOALS["improve"] in imp.prompt[-1]["content"]
    div = episodes.replay_episode(task, make_env, cfg, failed, 1, "diverge")
    assert not div.debug and mle_prompts.MLE_GOALS["diverge"] in div.prompt[-1]["content"]
    assert "ModuleNotFoundError" not in div.prompt[-1]["content"]
    # MLE improve steps earn r_imp against the stored r_{k-1}.
    got = episodes.group_rewards(imp, [episodes.Rollout(("a",), 0.7), episodes.Rollout(("b",), 0.1)], cfg)
    np.testing.assert_allclose(got, [0.5, 0.0])
    with pytest.raises(ValueError, match="task_description"):
        episodes.replay_episode(ADD_TASKS[0], make_env, cfg, ok, 1, "improve")


def _filled_buffer(n, capacity=64, depth=0):
    payloads = [{"task_id": ADD_TASKS[i % 5].id, "turns": [turn(str(i), depth=depth)]} for i in range(n)]
    state, _ = buffer.insert(buffer.init(capacity), payloads, np.linspace(0, 0.25, n), depth=depth, turn=1,
                             created_at=np.arange(n))
    return state


def _record(state, eps, groups, cfg, iteration):
    rewards = [episodes.group_rewards(ep, g, cfg) for ep, g in zip(eps, groups)]
    return episodes.record(state, eps, groups, rewards, cfg, iteration)


def test_episode_frequencies_match_p_and_p_div():
    cfg = CurriculumConfig(replay_prob=0.3, p_div=0.4, b_min=10, capacity=64)
    state = _filled_buffer(20)
    n = 3000
    new_state, eps = episodes.select(state, 7, ADD_TASKS, make_env, cfg, n, iteration=3)
    replays = [e for e in eps if e.kind == "replay"]
    diverge = sum(e.step == "diverge" for e in replays)
    assert scipy.stats.binomtest(len(replays), n, 0.3).pvalue > 1e-3
    assert scipy.stats.binomtest(diverge, len(replays), 0.4).pvalue > 1e-3
    assert all(e.step == "base" for e in eps if e.kind == "base")
    assert new_state.times_sampled.sum() == len(replays) and buffer.size(new_state) == 20
    assert {e.task.id for e in eps if e.kind == "base"} == {t.id for t in ADD_TASKS}
    # Below B_min nothing is replayed; GRPO never replays; Curriculum replays without self-iteration.
    _, eps = episodes.select(_filled_buffer(9), 0, ADD_TASKS, make_env, cfg, 50)
    assert all(e.kind == "base" for e in eps)
    _, eps = episodes.select(state, 0, ADD_TASKS, make_env, preset("math", "grpo"), 50)
    assert all(e.kind == "base" for e in eps)
    cur = CurriculumConfig(replay_prob=1.0, b_min=1, capacity=64, self_iterate=False)
    _, eps = episodes.select(state, 0, ADD_TASKS, make_env, cur, 50)
    assert all(e.step == "curriculum" and e.previous_response is None for e in eps)


def test_select_is_a_function_of_its_seed():
    # Every host of a multi-host run makes the same buffer decisions from the same seed, and an
    # iteration's draws come from (run seed, iteration) alone: nothing random is carried between them.
    cfg = CurriculumConfig(replay_prob=0.5, p_div=0.5, b_min=1, capacity=64)
    runs = [episodes.select(_filled_buffer(20), (11, 2), ADD_TASKS, make_env, cfg, 40, 2) for _ in range(2)]
    assert runs[0][1] == runs[1][1] and buffer.equal(runs[0][0], runs[1][0])
    other = episodes.select(_filled_buffer(20), (11, 3), ADD_TASKS, make_env, cfg, 40, 2)
    assert other[1] != runs[0][1]


def test_select_picks_a_uniform_turn_prefix():
    entry = {"task_id": COUNT.id, "turns": [turn("1"), turn("2", 1), turn("1")]}
    state, _ = buffer.insert(buffer.init(4), [entry], [0.1])
    cfg = CurriculumConfig(replay_prob=1.0, b_min=1, capacity=4)
    _, eps = episodes.select(state, 0, [COUNT], make_env, cfg, 900)
    counts = np.bincount([e.start_turn for e in eps], minlength=4)[1:]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    assert {(e.start_turn, e.sampled_depth, e.depth) for e in eps} == {(1, 0, 1), (2, 1, 2), (3, 0, 1)}


def test_record_overwrites_selected_score_and_inserts_children():
    cfg = CurriculumConfig(replay_prob=1.0, b_min=1, capacity=32)
    entry = {"task_id": COUNT.id, "turns": [turn("1"), turn("2"), turn("1")]}
    state, _ = buffer.insert(buffer.init(32), [entry], [0.2], task_id=episodes.task_key(COUNT.id), turn=3)
    state, (ep,) = episodes.select(state, 3, [COUNT], make_env, cfg, 1, iteration=4)
    ep = episodes.replay_episode(COUNT, make_env, cfg, buffer.payload(state, 0)["turns"], 2, "improve",
                                 slot=ep.slot, parent_uid=ep.parent_uid)
    base = episodes.base_episode(ADD_TASKS[1], make_env)
    groups = [[episodes.Rollout(("2", "1"), 1.0), episodes.Rollout(("5", "1"), 0.0)],
              [episodes.Rollout(("3",), 1.0)] * 4]
    new, scores = _record(state, [ep, base], groups, cfg, iteration=4)
    assert scores.tolist() == [0.25, 0.0]
    assert new.scores[0] == 0.25  # the replayed entry gets the fresh S, no smoothing
    assert buffer.size(new) == 1 + 2 * 2 + 4  # prefixes ending at turns 2 and 3 per rollout; base: 1 each
    kids = [buffer.payload(new, s) for s in range(1, 5)]
    assert [len(k["turns"]) for k in kids] == [2, 3, 2, 3]
    assert kids[1]["turns"] == [turn("1"), turn("2", depth=1, score=1.0), turn("1", depth=0, score=1.0)]
    assert new.depth[1:5].tolist() == [1, 0, 1, 0] and new.turn[1:5].tolist() == [2, 3, 2, 3]
    assert np.all(new.scores[1:5] == 0.25) and np.all(new.scores[5:9] == 0.0)  # children inherit S
    assert np.all(new.parent[1:5] == ep.parent_uid) and np.all(new.parent[5:9] == -1)
    assert np.all(new.created_at[1:9] == 4)
    assert buffer.payload(new, 0) == buffer.payload(state, 0)  # input state untouched
    assert state.scores[0] == 0.2
    # GRPO keeps no buffer.
    grpo = preset("math", "grpo")
    same, _ = _record(buffer.init(1), [base], [groups[1]], grpo, 0)
    assert buffer.size(same) == 0


def test_curriculum_stores_each_starting_point_once():
    cfg = CurriculumConfig(replay_prob=0.5, b_min=1, capacity=8, self_iterate=False)
    base = episodes.base_episode(ADD_TASKS[0], make_env)
    group = [episodes.Rollout((str(i),), float(i % 2)) for i in range(8)]
    state, _ = _record(buffer.init(8), [base, base], [group, group], cfg, 0)
    assert buffer.size(state) == 1 and state.scores[0] == 0.25
    state, _ = _record(state, [base], [[episodes.Rollout(("0",), 1.0)] * 8], cfg, 1)
    assert buffer.size(state) == 1 and state.scores[0] == 0.0  # re-scored, not duplicated


def test_end_to_end_iterations_and_stats():
    cfg = preset("math", "exit")
    cfg = dataclasses.replace(cfg, capacity=16, b_min=4)
    rng = np.random.default_rng(0)
    state, seen = buffer.init(cfg.capacity), frozenset()
    for it in range(6):
        state, eps = episodes.select(state, (0, it), ADD_TASKS, make_env, cfg, 4, iteration=it)
        groups = []
        for ep in eps:
            answer = str(ep.task.data["a"] + ep.task.data["b"])
            replies = [answer if rng.random() < 0.5 else "0" for _ in range(4)]
            groups.append([episodes.Rollout((r,), make_env(ep.task).step(r).reward) for r in replies])
        state, s = _record(state, eps, groups, cfg, iteration=it)
        seen = stats.update_seen(seen, eps)
        st = stats.iteration_stats(state, eps, it, seen, s)
        assert st["curriculum/buffer_size"] == buffer.size(state) <= 16
        assert st["curriculum/replay_fraction"] == sum(e.kind == "replay" for e in eps) / 4
    assert st["curriculum/distinct_instances_seen"] == len(seen) > 5
    q = [st[f"curriculum/buffer_score_{k}"] for k in ("min", "p25", "p50", "p75", "max")]
    assert q == sorted(q) and q[-1] <= 0.25
    assert max(state.depth[state.filled]) >= 1  # self-iteration built up depth through the buffer
    replays = [e for e in eps if e.kind == "replay"]
    assert replays and st["curriculum/sampled_depth"] == np.mean([e.sampled_depth for e in replays])
    assert st["curriculum/sampled_from_iteration"] == np.mean([e.sampled_from for e in replays])
    assert all(k.startswith("curriculum/") for k in st)
    # Without replay the replay-only means are NaN, not a fake 0.
    quiet = stats.iteration_stats(buffer.init(2), [episodes.base_episode(ADD_TASKS[0], make_env)], 0)
    assert np.isnan(quiet["curriculum/start_turn"]) and quiet["curriculum/replay_fraction"] == 0.0
