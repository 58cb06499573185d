"""MLE-lite tasks: MLE-bench layout, hidden answers, anchors and their cache, grading of real solutions."""
import os

import pandas as pd
import pytest

from exit_jax.envs.mle import grading, lite, lite_specs, sandbox

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mle_lite_cache"))


@pytest.fixture(scope="module")
def penguins(cache):
    return lite.tasks(["penguins"], cache_dir=cache)[0]


@pytest.fixture(scope="module")
def cancer(cache):
    return lite.tasks(["breast_cancer"], cache_dir=cache)[0]


def test_suite_has_the_issue_ids_and_knobbed_families():
    ids = [s.id for s in lite_specs.specs()]
    assert len(ids) >= 8 and len(set(ids)) == len(ids)
    for required in ("digits", "breast_cancer", "wine", "diabetes", "penguins", "fair", "randhie"):
        assert required in ids
    metrics = {s.metric for s in lite_specs.specs()}
    assert metrics >= {"accuracy", "roc_auc", "log_loss", "rmse", "rmsle", "qwk", "mae", "r2"}
    with pytest.raises(ValueError, match="unknown MLE-lite task ids"):
        lite.tasks(["nope"])


@pytest.mark.parametrize("task_id", ["digits", "wine", "diabetes", "fair", "randhie", "synth_multiclass"])
def test_public_layout_hides_answers(cache, task_id):
    t = lite.tasks([task_id], cache_dir=cache)[0]
    files = sorted(os.listdir(t.public_dir))
    assert files == ["description.md", "sample_submission.csv", "test.csv", "train.csv"]
    assert sorted(os.listdir(t.dir)) == ["public"]  # anchors are computed lazily; answers never written
    train, test = pd.read_csv(f"{t.public_dir}/train.csv"), pd.read_csv(f"{t.public_dir}/test.csv")
    sample = pd.read_csv(f"{t.public_dir}/sample_submission.csv")
    assert t.spec.target in train.columns and t.spec.target not in test.columns
    assert list(sample.columns) == ["id", *t.target_cols] and len(sample) == len(test)
    assert len(train) + len(test) <= t.spec.max_rows
    # test.csv = validation + private test rows, shuffled together; no id overlaps train.
    hidden = set(t._ids["val"]) | set(t._ids["test"])
    assert set(test["id"].astype(str)) == hidden and not hidden & set(train["id"].astype(str))
    assert os.stat(t.public_dir).st_mode & 0o005 == 0o005  # the sandbox's unprivileged uid can read it
    assert grading.METRIC_NAMES[t.metric] in t.description and "submission.csv" in t.description


def test_grades_sample_and_perfect_submissions(penguins):
    p = penguins
    sample = open(f"{p.public_dir}/sample_submission.csv", "rb").read()
    g = p.grade(sample)
    assert g.valid and g.normalized == 0.0 and g.medal == ""  # the sample submission is the baseline
    perfect = pd.concat([p._answers("val"), p._answers("test")]).rename_axis("id").reset_index()
    g = p.grade(perfect.to_csv(index=False).encode())
    assert g.valid and g.score == 0.0 and g.normalized == 1.0 and g.medal == "gold"
    assert g.validation_score == 0.0 and g.validation_normalized == 1.0
    bad = p.grade(perfect.iloc[:-3].to_csv(index=False).encode())
    assert not bad.valid and bad.normalized == 0.0 and "misses 3" in bad.error


def test_anchors_are_cached_on_disk(penguins, cache, monkeypatch):
    a = penguins.anchors
    assert a["reference"] < a["baseline"]  # MAE: the reference pipeline beats the median
    assert len(a["leaderboard"]) >= 15 and a["leaderboard"] == sorted(a["leaderboard"])
    again = lite.tasks(["penguins"], cache_dir=cache)[0]
    assert again.dir == penguins.dir
    monkeypatch.setattr(lite.LiteTask, "_compute_anchors", lambda self: pytest.fail("recomputed"))
    assert again.anchors == a


def test_difficulty_knobs_change_the_reference(tmp_path):
    synthetic = lite_specs.synthetic_classification
    easy = lite.LiteTask(synthetic("k_easy", n_samples=300, class_sep=2.0, flip_y=0.0),
                         str(tmp_path))
    hard = lite.LiteTask(synthetic("k_hard", n_samples=300, class_sep=0.3, flip_y=0.3),
                         str(tmp_path))
    assert easy.anchors["reference"] > hard.anchors["reference"] + 0.1


LOGREG = """
import os
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

def main():
    p = os.environ["PUBLIC_RESOURCE_PATH"]
    train, test = pd.read_csv(f"{p}/train.csv"), pd.read_csv(f"{p}/test.csv")
    X, y = train.drop(columns=["id", "target"]), train["target"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    proba = model.predict_proba(test.drop(columns=["id"]))[:, 1]
    pd.DataFrame({"id": test["id"], "target": proba}).to_csv("submission.csv", index=False)

if __name__ == "__main__":
    main()
"""


@needs_bwrap
def test_evaluate_runs_real_solutions_in_the_sandbox(cancer):
    with sandbox.WarmPool(sandbox.SandboxConfig(time_limit_s=30)) as pool:
        good = cancer.evaluate(LOGREG, pool=pool)
        assert good.valid and good.normalized > 0.8 and good.score > 0.95, good.error
        assert good.validation_score > 0.9 and good.runtime_s > 0
        crash = cancer.evaluate("import pandas\nraise RuntimeError('model diverged')\n", pool=pool)
        assert not crash.valid and crash.normalized == 0.0 and "model diverged" in crash.error
        silent = cancer.evaluate("print('forgot to write the submission')\n", pool=pool)
        assert not silent.valid and "no submission.csv" in silent.error
    slow = lite.tasks(["breast_cancer"], cache_dir=os.path.dirname(cancer.dir), time_limit_s=1)[0]
    assert slow.time_limit_s == 1 and slow.dir == cancer.dir  # the budget does not key the cache
    timed = slow.evaluate("import time\ntime.sleep(20)\n")
    assert not timed.valid and timed.normalized == 0.0 and "timeout" in timed.error


def test_as_task_carries_the_prompt_fields(cancer):
    task = cancer.as_task()
    assert task.domain == "mle" and task.id == "breast_cancer"
    assert task.data["task_description"] == cancer.description
    assert "-> train.csv" in task.data["preview_contents"] and "-> test.csv" in task.data["preview_contents"]


def test_procedural_tasks_cover_every_metric_and_state_the_kind(tmp_path):
    specs = lite_specs.procedural_specs(16, seed=3)
    assert [s.metric for s in specs[:8]] == list(lite_specs.PROCEDURAL_METRICS)
    ids = {s.id for s in specs}
    assert len(ids) == 16 and not ids & {s.id for s in lite_specs.specs()}
    assert specs == lite_specs.procedural_specs(16, seed=3) and specs != lite_specs.procedural_specs(16, seed=4)
    said = {"label": "predict the class", "proba": "probability of each", "proba_binary": "probability that",
            "value": "predict the real value"}
    for spec in specs[:8]:
        t = lite.LiteTask(spec, str(tmp_path))
        expected = "ordinal class" if t.metric == "qwk" else said[t.kind]
        assert expected in t.spec.goal, (t.metric, t.spec.goal)
        if t.metric == "rmsle":  # log(1 + y) needs y >= 0
            assert min(t._y[s].min() for s in t._y) >= 0
        if t.kind == "proba":
            assert len(t.target_cols) >= 2
