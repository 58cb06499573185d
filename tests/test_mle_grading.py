"""Metrics, submission validation, normalisation (docs/paper.md §13.9) and MLE-bench medal thresholds."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from exit_jax.envs.mle import grading
from exit_jax.envs.mle.grading import InvalidSubmission

finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(finite, finite, finite)
def test_normalize_flip_negates_scores_not_the_ratio(s, b, r):
    up = grading.normalize(s, b, r, lower_better=False)
    assert 0.0 <= up <= 1.0
    assert grading.normalize(-s, -b, -r, lower_better=True) == up


def test_normalize_anchors():
    assert grading.normalize(0.5, 0.5, 0.9, False) == 0.0
    assert grading.normalize(0.9, 0.5, 0.9, False) == 1.0
    assert grading.normalize(0.7, 0.5, 0.9, False) == pytest.approx(0.5)
    assert grading.normalize(0.99, 0.5, 0.9, False) == 1.0  # beating the reference clips to 1
    # RMSE: baseline 10, reference 2; a score of 4 closes 75% of the gap.
    assert grading.normalize(4.0, 10.0, 2.0, True) == pytest.approx(0.75)
    assert grading.normalize(12.0, 10.0, 2.0, True) == 0.0
    assert grading.normalize(float("nan"), 10.0, 2.0, True) == 0.0


@pytest.mark.parametrize("n,expected", [(1, (1, 1, 1)), (18, (1, 3, 7)), (50, (5, 10, 20)),
                                        (150, (10, 30, 60)), (500, (11, 50, 100)), (2000, (14, 100, 200))])
def test_medal_positions_follow_mlebench(n, expected):
    assert grading.medal_positions(n) == expected


def test_medals_higher_and_lower_better():
    lb = [float(x) for x in range(100, 50, -1)]  # 50 teams, best 100: gold pos 5 (96), silver 10, bronze 20
    assert grading.medal(96.0, lb, False) == "gold"
    assert grading.medal(95.9, lb, False) == "silver"
    assert grading.medal(81.0, lb, False) == "bronze"
    assert grading.medal(80.9, lb, False) == ""
    low = [float(x) for x in range(1, 51)]  # lower is better: gold needs <= 5
    assert grading.medal(5.0, low, True) == "gold" and grading.medal(21.0, low, True) == ""


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    onehot = pd.DataFrame(np.eye(3)[y])
    assert grading.score("log_loss", onehot, pd.DataFrame(p)) == pytest.approx(skm.log_loss(y, p))
    t, q = rng.normal(size=50), rng.normal(size=50)
    T, Q = pd.DataFrame({"y": t}), pd.DataFrame({"y": q})
    assert grading.score("rmse", T, Q) == pytest.approx(np.sqrt(skm.mean_squared_error(t, q)))
    assert grading.score("mae", T, Q) == pytest.approx(skm.mean_absolute_error(t, q))
    assert grading.score("r2", T, Q) == pytest.approx(skm.r2_score(t, q))
    ta, qa = np.abs(t), np.abs(q)
    assert grading.score("rmsle", pd.DataFrame({"y": ta}), pd.DataFrame({"y": qa})) == pytest.approx(
        np.sqrt(skm.mean_squared_log_error(ta, qa)))
    b = rng.integers(0, 2, 40)
    s = rng.random(40)
    assert grading.score("roc_auc", pd.DataFrame({"y": b}), pd.DataFrame({"y": s})) == pytest.approx(
        skm.roc_auc_score(b, s))
    k1, k2 = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    assert grading.score("qwk", pd.DataFrame({"y": k1}), pd.DataFrame({"y": k2})) == pytest.approx(
        skm.cohen_kappa_score(k1, k2, weights="quadratic"))
    assert grading.score("accuracy", pd.DataFrame({"y": ["a", "b"]}), pd.DataFrame({"y": ["a", "c"]})) == 0.5


IDS = pd.Index(["1", "2", "3"])


@pytest.mark.parametrize("csv,why", [
    (None, "no submission.csv"),
    (b"\x00\xff garbage", "not a readable CSV"),
    (b"just text", "lacks columns"),
    (b"id,y\n1,0\n2,1\n", "misses 1"),
    (b"id,y\n1,0\n2,1\n3,1\n4,0\n", "4 rows"),
    (b"id,y\n1,0\n1,1\n3,1\n", "repeats ids"),
    (b"id,y\n1,0\n2,\n3,1\n", "NaN"),
    (b"id,z\n1,0\n2,1\n3,1\n", "lacks columns"),
])
def test_read_submission_rejects_bad_files(csv, why):
    with pytest.raises(InvalidSubmission, match=why):
        grading.read_submission(csv, "id", ["y"], IDS)


def test_read_submission_aligns_rows_by_id():
    sub = grading.read_submission(b"y,id\n30,3\n10,1\n20,2\n", "id", ["y"], IDS)
    assert sub["y"].tolist() == [10, 20, 30]


def test_non_numeric_and_infinite_predictions_are_invalid():
    with pytest.raises(InvalidSubmission, match="numbers"):
        grading.score("rmse", pd.DataFrame({"y": [1.0]}), pd.DataFrame({"y": ["x"]}))
    with pytest.raises(InvalidSubmission, match="infinite"):
        grading.score("rmse", pd.DataFrame({"y": [1.0]}), pd.DataFrame({"y": [np.inf]}))
    with pytest.raises(ValueError, match="not supported"):
        grading.score("f1", pd.DataFrame({"y": [1]}), pd.DataFrame({"y": [1]}))
