"""Multi-turn (tool-use) self-improvement evaluation on a toy env with hand-computed curves, and on BFCL."""
import numpy as np
import pytest

from exit_jax.envs.base import Task
from exit_jax.evaluation import multi_turn
from tests.evaluation_fakes import ToyToolEnv, ScriptedToolUser


def _tasks():
    return [Task("t1", "toy", {"requests": ["hard target=a", "easy target=b"]}),
            Task("t2", "toy", {"requests": ["skip target=c"]})]


def test_curves_match_hand_computation():
    policy = ScriptedToolUser()
    result = multi_turn.evaluate_multi_turn(policy, _tasks(), ToyToolEnv, K=2, n=2, keep_replies=True)
    rec = result.to_dict()
    c = rec["curves"]
    # t1: k0 [0, 1], k1 [1, 1], k2 [1, 1]; t2: k0 [0], k1 [1], k2 [1]
    assert c["first_turn_accuracy"] == pytest.approx([0.0, 1.0, 1.0])
    assert c["total_return"] == pytest.approx([0.5, 1.5, 1.5])
    assert c["episode_success"] == pytest.approx([0.0, 1.0, 1.0])
    assert c["first_turn_net_corrections"] == pytest.approx([0.0, 2.0, 2.0])
    # k1: t2's second reply has no step-0 iterate at (request 0, response 1): 2 of 12 turns are fresh
    assert c["fresh_turn_fraction"] == pytest.approx([1.0, 2 / 12, 0.0])
    assert c["mean_turns"] == pytest.approx([2.5, 3.0, 3.0])
    assert rec["per_task"][0]["replies"][0][1] == ["call a", "end", "call b", "end"]
    assert rec["per_task"][1]["replies"][0] == [["end"], ["call c", "end"], ["call c", "end"]]
    # one batched call per round; k=0 opens with one prefill per task and n samples
    assert policy.calls == [(2, 2), (2, 1), (2, 1), (2, 1),
                            (4, 1), (4, 1), (2, 1), (2, 1),
                            (4, 1), (4, 1), (2, 1), (2, 1)]


def test_improve_prompt_keeps_history_and_quotes_the_current_request():
    seen = []

    class Recorder(ScriptedToolUser):
        def generate(self, conversations, num_samples=1):
            seen.append([list(c) for c in conversations])
            return super().generate(conversations, num_samples)

    multi_turn.evaluate_multi_turn(Recorder(), _tasks()[:1], ToyToolEnv, K=1, n=1)
    # k=1, third round: request 1 ("easy target=b"), response 0: history of k=1 kept, request replaced
    conv = seen[6][0]
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert conv[-1]["content"].startswith("Improve your current response to this request:")
    assert "## Request:\neasy target=b\n\n## Current response:\ncall b" in conv[-1]["content"]
    # second round (request 0, response 1) follows a tool result: the prompt is appended
    assert seen[5][0][-2] == {"role": "tool", "content": "ok"}


def test_max_responses_truncates_and_scores_zero():
    result = multi_turn.evaluate_multi_turn(ScriptedToolUser(), _tasks()[:1], ToyToolEnv, K=1, n=1,
                                            max_responses=2)
    np.testing.assert_array_equal(result.truncated[0, 0], [True, True])
    assert result.to_dict()["curves"]["total_return"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="max_responses"):
        multi_turn.evaluate_multi_turn(ScriptedToolUser(), _tasks(), ToyToolEnv, max_responses=0)


_IMPROVE = "Improve your current response"
END = "I have completed the request."


class _BfclScripted:
    """Answers BFCL by the ground truth, except that a base (non-improve) prompt on the first request
    ends it without any call; an improve prompt always gives the ground-truth reply of its turn."""

    def __init__(self, task):
        from exit_jax.envs.tool_use import bfcl
        oracle = bfcl.oracle_replies(task)
        self.per_request = [oracle[i:i + 2] for i in range(0, len(oracle), 2)]  # [calls, end] per request

    def generate(self, conversations, num_samples=1):
        out = []
        for conv in conversations:
            improving = conv[-1]["content"].startswith(_IMPROVE)
            users = [i for i, m in enumerate(conv)
                     if m["role"] == "user" and not m["content"].startswith(_IMPROVE)]
            if improving and conv[-2]["role"] != "tool":  # the request's own message was replaced
                r, s = len(users), 0
            else:
                r, s = len(users) - 1, sum(m["role"] == "assistant" for m in conv[users[-1] + 1:])
            lazy = not improving and (r, s) == (0, 0)
            out.append([END if lazy else self.per_request[r][s]] * num_samples)
        return out


def test_real_bfcl_env_first_turn_fixed_by_improvement():
    from exit_jax.envs.tool_use import bfcl
    task = bfcl.load_entries("multi_turn_base")[0]
    n_requests = len(task.data["entry"]["question"])
    result = multi_turn.evaluate_multi_turn(_BfclScripted(task), [task], bfcl.MultiTurnEnv, K=1, n=2)
    c = result.to_dict()["curves"]
    assert c["first_turn_accuracy"] == [0.0, 1.0]
    assert c["total_return"][1] == n_requests and c["total_return"][0] < n_requests
    assert c["episode_success"] == [0.0, 1.0]
    # k=1 has 2 replies per request; at k=0 request 0 got one reply, so its second k=1 reply is fresh
    assert c["fresh_turn_fraction"][1] == pytest.approx(1 / (2 * n_requests))
