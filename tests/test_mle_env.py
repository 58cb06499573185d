"""MLEEnv: the paper's MLE prompt on reset, code extraction and a graded, sandboxed step."""
import math

import pytest

from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.envs.base import Task, replay
from exit_jax.envs.mle import lite, sandbox
from exit_jax.envs.mle.env import MLEEnv, extract_code

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")

WINE = """
import os
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
p = os.environ["PUBLIC_RESOURCE_PATH"]
tr, te = pd.read_csv(p + "/train.csv"), pd.read_csv(p + "/test.csv")
m = RandomForestClassifier(100, random_state=0).fit(tr.drop(columns=["id", "target"]), tr["target"])
sub = pd.DataFrame(m.predict_proba(te.drop(columns=["id"])), columns=[str(c) for c in m.classes_])
sub.insert(0, "id", te["id"])
sub.to_csv("submission.csv", index=False)
"""


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    return lite.tasks(["wine"], cache_dir=str(tmp_path_factory.mktemp("cache")))[0]


def test_extract_code():
    assert extract_code("text\n```python\nprint(1)\n```\nmore") == "print(1)\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    two = "```python\na = 1\n```\nthen\n```python\nimport os\nb = 2\n```"
    assert extract_code(two) == "import os\nb = 2\n"  # the longest block: the full program
    assert extract_code("```bash\npip install x\n```\n```py\nz = 3\n```") == "z = 3\n"
    assert extract_code("```python\nimport os\nprint('truncated") == "import os\nprint('truncated"
    assert extract_code("no code here") is None
    assert extract_code("```python\n\n```") is None


def test_reset_renders_the_paper_prompt(wine):
    env = MLEEnv(wine.as_task())
    text = env.reset()[0]["content"]
    assert text.startswith("You are a Kaggle grandmaster.")
    assert mle_prompts.MLE_GOALS["improve"] in text and wine.description in text
    assert env.initial_solution() == mle_prompts.MLE_STARTER_SOLUTION and "PUBLIC_RESOURCE_PATH" in text
    assert "-> train.csv" in text and env.instruction() == wine.description
    debug = MLEEnv(wine.as_task(), goal="debug", previous_solution="print(1/0)",
                   error_trace="ZeroDivisionError: division by zero").reset()[0]["content"]
    assert mle_prompts.MLE_GOALS["debug"] in debug and "ZeroDivisionError" in debug and "print(1/0)" in debug
    with pytest.raises(ValueError, match="goal"):
        MLEEnv(wine.as_task(), goal="refactor")


def test_plain_task_record_resolves_to_mle_lite(wine, monkeypatch):
    monkeypatch.setenv("EXIT_JAX_MLE_LITE_CACHE", wine.dir.rsplit("/", 1)[0])
    env = MLEEnv(Task(id="wine", domain="mle"))
    assert env.task_description() == wine.description and "-> test.csv" in env.preview_contents()


@needs_bwrap
def test_step_grades_in_the_sandbox(wine):
    with sandbox.WarmPool() as pool:
        env = MLEEnv(wine.as_task(), pool=pool)
        env.reset()
        r = env.step("My solution:\n```python\n" + WINE + "```")
        assert r.done and r.messages == [] and r.info["valid"] and r.info["reason"] == "ok"
        assert r.reward == r.info["normalized"] and 0.5 < r.reward <= 1.0
        assert r.info["score"] < wine.anchors["baseline"] and not math.isnan(r.info["validation_score"])
        assert env.step("again").info["reason"] == "episode_already_done"
        env = MLEEnv(wine.as_task(), pool=pool)
        messages, last = replay(env, ["```python\nimport pandas as pd\npd.read_csv('missing.csv')\n```"])
        assert last.reward == 0.0 and last.info["failed"] and "missing.csv" in last.info["feedback"]
        assert messages[-1]["role"] == "assistant"


def test_reply_without_code_scores_zero(wine):
    r = MLEEnv(wine.as_task()).step("I would use a random forest.")
    assert r.reward == 0.0 and r.done and r.info["reason"] == "no_code_block" and not r.info["valid"]
