"""Single-turn self-improvement evaluation: curves and net corrections against hand-computed values."""
import numpy as np
import pytest

from exit_jax.curriculum import episodes, prompts
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.evaluation import self_improve
from exit_jax.testing import ExactAnswerEnv, exact_answer_tasks as toy_tasks
from tests.evaluation_fakes import ScriptedImprover

SYSTEM = ExactAnswerEnv.SYSTEM


def test_curves_and_net_corrections_match_hand_computation():
    tasks = toy_tasks()
    policy = ScriptedImprover(tasks)
    result = self_improve.evaluate(policy, tasks, ExactAnswerEnv, K=2, n=2)
    # chains: A0 = right, right, right; A1 = wrong, right, right;
    #         B0 = right, broken, right; B1 = wrong, wrong2, wrong2
    np.testing.assert_array_equal(result.rewards, [[[1, 1, 1], [0, 1, 1]], [[1, 0, 1], [0, 0, 0]]])
    assert result.accuracy_by_k == pytest.approx([0.5, 0.5, 0.75])
    # k=1: A1 fixed, B0 broken -> (1 - 1) / 2; k=2: A1 fixed, nothing broken -> 1 / 2
    assert result.net_corrections_by_k == pytest.approx([0.0, 0.0, 0.5])
    # One generate call per step: k=0 one prefill per task with n samples, then every chain in one batch.
    assert policy.calls == [(2, 2), (4, 1), (4, 1)]


def test_improve_prompt_is_the_paper_text_and_keeps_the_system_message():
    tasks = toy_tasks()
    seen = []

    class Recorder(ScriptedImprover):
        def generate(self, conversations, num_samples=1):
            seen.append(conversations)
            return super().generate(conversations, num_samples)

    self_improve.evaluate(Recorder(tasks), tasks, ExactAnswerEnv, K=1, n=2)
    base, improve = seen
    assert base[0] == [SYSTEM, {"role": "user", "content": "What is 2+2?"}]
    # chain (task A, sample 1) answered "wrong" at k=0
    expected = prompts.improve_prompt("What is 2+2?", "wrong")
    assert improve[1] == [SYSTEM, {"role": "user", "content": expected}]
    assert expected.startswith("Improve your current response to this request:\n\n## Request:\nWhat is 2+2?")


def test_eval_prompt_equals_the_training_improve_prompt():
    task = toy_tasks()[0]
    turns = [{"response": "5", "depth": 0, "score": 0.0, "failed": False, "feedback": ""}]
    ep = episodes.replay_episode(task, ExactAnswerEnv, CurriculumConfig(), turns, 1, "improve")
    env = ExactAnswerEnv(task)
    assert list(ep.prompt) == self_improve.improve_conversation(env.reset(), env.instruction(), "5")


def test_groups_macro_mean_and_record():
    tasks = toy_tasks()
    result = self_improve.evaluate(ScriptedImprover(tasks), tasks, ExactAnswerEnv, K=2, n=2,
                                   group_of=lambda t: "split_" + t.id, keep_responses=True)
    rec = result.to_dict()
    assert rec["groups"]["split_A"]["curves"]["accuracy"] == pytest.approx([0.5, 1.0, 1.0])
    assert rec["groups"]["split_B"]["curves"]["accuracy"] == pytest.approx([0.5, 0.0, 0.5])
    assert rec["groups"]["split_B"]["curves"]["net_corrections"] == pytest.approx([0.0, -0.5, 0.0])
    assert rec["curves"]["macro_accuracy"] == pytest.approx([0.5, 0.5, 0.75])
    assert rec["per_task"][1]["responses"][0] == ["9", "broken", "9"]
    assert rec["reason_counts_by_k"][1] == {"wrong answer": 2}


def test_net_corrections_scale_and_thresholds():
    # 1 task, 4 chains; at k=1 three wrong chains are fixed and the right one breaks: (3 - 1) / 4
    rewards = np.array([[[1, 0], [0, 1], [0, 1], [0, 1]]], float)
    assert self_improve.net_corrections_by_k(rewards) == pytest.approx([0.0, 0.5])
    # partial credit below the threshold counts as wrong
    assert self_improve.net_corrections_by_k(rewards * 0.5) == pytest.approx([0.0, 0.0])
    half = self_improve.net_corrections_by_k(rewards * 0.5, success_threshold=0.5)
    assert half == pytest.approx([0.0, 0.5])


def test_bad_arguments_and_bad_policy_shapes():
    tasks = toy_tasks()
    with pytest.raises(ValueError, match="K >= 0"):
        self_improve.evaluate(ScriptedImprover(tasks), tasks, ExactAnswerEnv, K=-1, n=2)

    class Short:
        def generate(self, conversations, num_samples=1):
            return [["4"]] * len(conversations)

    with pytest.raises(ValueError, match="expected 2 rows of 3 replies"):
        self_improve.evaluate(Short(), tasks, ExactAnswerEnv, K=1, n=3)


class _MathScripted:
    """Real math tasks: a wrong boxed answer at k=0 for every other task, the right one when improving."""

    def __init__(self, tasks):
        self.answers = {t.data["problem"]: (i, t.data["answer"]) for i, t in enumerate(tasks)}

    def generate(self, conversations, num_samples=1):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            improving = text.startswith("Improve your current response")
            (i, answer), = [v for q, v in self.answers.items() if q in text]
            good = improving or i % 2 == 0
            out.append([f"So the answer is \\boxed{{{answer if good else '-12345.5'}}}."] * num_samples)
        return out


def test_real_math_env_and_batch_grader_agree():
    from exit_jax.envs import math as math_env
    tasks = math_env.math_tasks("test", 4)
    policy = _MathScripted(tasks)
    by_env = self_improve.evaluate(policy, tasks, math_env.MathEnv, K=2, n=2)
    batched = self_improve.evaluate(policy, tasks, math_env.MathEnv, K=2, n=2,
                                    grade_batch=math_env.grade_tasks)
    assert by_env.accuracy_by_k == batched.accuracy_by_k == pytest.approx([0.5, 1.0, 1.0])
    # two of four tasks start wrong on both chains and are fixed at k=1: 4 chains / n=2
    assert by_env.net_corrections_by_k == pytest.approx([0.0, 2.0, 2.0])
    assert by_env.to_dict()["reason_counts_by_k"][:2] == [{"mismatch": 4}, {}]
