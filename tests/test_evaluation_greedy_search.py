"""MLE greedy search: validation-score node choice, debug after failure, per-step curves."""
import math

import pytest

from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.evaluation import eval_json
from exit_jax.evaluation.greedy_search import Node, best_index, greedy_search, next_action
from tests.evaluation_fakes import ScriptedSearcher, ToyMLEEnv, mle_task

GOOD = "VAL=0.5 TEST=0.5 PRINT=0.1"
FLASHY = "VAL=0.4 TEST=0.9 PRINT=0.99"  # worse on validation, better test and printed metric
BEST = "VAL=0.8 TEST=0.7 PRINT=0.2"


def _script():
    return {("improve", mle_prompts.MLE_STARTER_SOLUTION): ["CRASH a"],
            ("debug", "CRASH a"): [GOOD],
            ("improve", GOOD): [FLASHY, "CRASH b"],
            ("debug", "CRASH b"): [BEST]}


def test_search_picks_by_validation_and_debugs_after_failure():
    policy = ScriptedSearcher(_script())
    result = greedy_search(policy, [mle_task()], ToyMLEEnv, K=4, n=1)
    nodes = result.searches[0][0]
    assert [nd.action for nd in nodes] == ["draft", "debug", "improve", "improve", "debug"]
    assert [nd.parent for nd in nodes] == [-1, 0, 1, 1, 3]  # step 3 improves node 1, not the flashy node 2
    rec = result.to_dict()
    # best so far by validation: none, GOOD, GOOD (not FLASHY's test 0.9), GOOD, BEST
    assert rec["curves"]["normalized_score"] == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.7])
    assert rec["curves"]["medal_rate"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert rec["curves"]["valid_rate"] == [0.0, 1.0, 1.0, 0.0, 1.0]
    debug_prompt = policy.prompts[1]
    assert "Your goal is to debug this python script" in debug_prompt
    assert "ValueError: CRASH a" in debug_prompt
    assert "Your goal is to improve this python script" in policy.prompts[2]
    assert "ValueError" not in policy.prompts[2]


def test_runs_and_tasks_are_batched_per_step():
    policy = ScriptedSearcher({}, default=GOOD)
    result = greedy_search(policy, [mle_task("a"), mle_task("b")], ToyMLEEnv, K=2, n=3)
    assert policy.calls == [(2, 3), (6, 1), (6, 1)]
    assert result.to_dict()["curves"]["normalized_score"] == pytest.approx([0.5, 0.5, 0.5])
    record = eval_json.make_eval_record("exit", "mle", {"mle_lite": result})
    assert record["evaluations"]["mle_lite"]["per_task"][1]["runs"][2][0]["code"] == GOOD


def _node(action, parent, valid, val=0.0):
    return Node(step=0, action=action, parent=parent, code="", valid=valid,
                validation_score=val if valid else -math.inf, normalized=0.0, medal="")


def test_next_action_and_debug_depth_cap():
    nodes = [_node("draft", -1, False)]
    assert next_action(nodes) == ("debug", 0)
    nodes += [_node("debug", 0, False), _node("debug", 1, False)]
    assert next_action(nodes) == ("debug", 2)
    assert next_action(nodes, max_debug_depth=2) == ("improve", -1)  # no valid node: back to the starter
    nodes += [_node("improve", -1, True, 0.3), _node("improve", 3, True, 0.3), _node("improve", 3, True, 0.2)]
    assert best_index(nodes) == 3  # ties keep the earlier node
    assert next_action(nodes) == ("improve", 3)


def test_always_failing_search_scores_zero_and_respects_cap():
    policy = ScriptedSearcher({})
    result = greedy_search(policy, [mle_task()], ToyMLEEnv, K=4, n=1, max_debug_depth=2)
    assert [nd.action for nd in result.searches[0][0]] == ["draft", "debug", "debug", "improve", "debug"]
    assert result.to_dict()["curves"]["normalized_score"] == [0.0] * 5
    with pytest.raises(ValueError, match="K >= 0"):
        greedy_search(policy, [mle_task()], ToyMLEEnv, K=-1)


def _step(**info):
    from exit_jax.envs.base import StepResult
    return StepResult([], 0.0, True, info)


def test_outcome_ranks_by_validation_metric_in_its_direction():
    from exit_jax.evaluation.greedy_search import outcome_of
    rmse = outcome_of(_step(valid=True, validation_score=60.0, validation_normalized=1.0, lower_is_better=True,
                            normalized=0.9, medal="", code="x"), "")
    assert rmse["validation_score"] == -60.0  # lower RMSE ranks higher; the clipped normalized value is unused
    auc = outcome_of(_step(valid=True, validation_score=0.7, normalized=0.5, medal="bronze", code="x"), "")
    assert auc["validation_score"] == 0.7 and auc["medal"] == "bronze"
    normed = outcome_of(_step(valid=True, validation_score=0.7, validation_normalized=0.2, normalized=0.5), "")
    assert normed["validation_score"] == 0.2  # direction unknown: the normalized validation score
    bad = outcome_of(_step(valid=False, validation_score=0.9, normalized=0.8, medal="gold",
                           error="Traceback"), "```python\nprint(1)\n```")
    assert bad == {"code": "print(1)\n", "valid": False, "validation_score": -math.inf, "normalized": 0.0,
                   "medal": "", "error": "Traceback"}


def test_eval_prompt_equals_the_training_debug_prompt():
    from exit_jax.curriculum import episodes
    from exit_jax.curriculum.config import CurriculumConfig
    from exit_jax.evaluation.greedy_search import iterate_conversation
    task = mle_task()
    turns = [{"response": "CRASH a", "depth": 0, "score": 0.0, "failed": True, "feedback": "ValueError: a"}]
    ep = episodes.replay_episode(task, ToyMLEEnv, CurriculumConfig(template="mle"), turns, 1, "improve")
    assert ep.debug
    opening = ToyMLEEnv(task).reset()
    assert list(ep.prompt) == iterate_conversation(opening, task, "CRASH a", "debug", "ValueError: a")


def test_real_mle_lite_search_lower_is_better(tmp_path, monkeypatch):
    """diabetes (RMSE): a crash is debugged; a worse-validation improvement never becomes the best node."""
    monkeypatch.setenv("EXIT_JAX_MLE_LITE_CACHE", str(tmp_path))
    from exit_jax.envs.mle import env as mle_env, lite, sandbox
    task = lite.tasks(["diabetes"])[0].as_task()
    ridge = ("import os, pandas as pd\nfrom sklearn.linear_model import Ridge\n"
             "p = os.environ['PUBLIC_RESOURCE_PATH']\n"
             "tr, te = pd.read_csv(p + '/train.csv'), pd.read_csv(p + '/test.csv')\n"
             "m = Ridge(alpha=ALPHA).fit(tr.drop(columns=['id', 'target']), tr['target'])\n"
             "pd.DataFrame({'id': te['id'], 'target': m.predict(te.drop(columns=['id']))})"
             ".to_csv('submission.csv', index=False)\nprint('validation rmse: 0.0')\n")
    good, poor = ridge.replace("ALPHA", "1.0"), ridge.replace("ALPHA", "1000.0")
    policy = ScriptedSearcher({("improve", mle_prompts.MLE_STARTER_SOLUTION): ["raise ValueError('boom')"],
                               ("debug", "raise ValueError('boom')"): [good],
                               ("improve", good): [poor]})
    pool = sandbox.WarmPool(max_workers=1)
    try:
        result = greedy_search(policy, [task], lambda t: mle_env.MLEEnv(t, pool=pool), K=2, n=1)
    finally:
        pool.close()
    nodes = result.searches[0][0]
    assert [nd.action for nd in nodes] == ["draft", "debug", "improve"]
    assert [nd.valid for nd in nodes] == [False, True, True]
    assert "ValueError: boom" in policy.prompts[1] and "Your goal is to debug" in policy.prompts[1]
    assert nodes[1].normalized > nodes[2].normalized > 0.0
    curve = result.to_dict()["curves"]["normalized_score"]
    assert curve == pytest.approx([0.0, nodes[1].normalized, nodes[1].normalized])
