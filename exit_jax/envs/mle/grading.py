"""Grading for MLE tasks: submission validation, metrics, normalised scores and MLE-bench medals.

Shared by MLE-lite (`lite.py`) and the MLE-bench adapter (`mlebench.py`). Everything here is pure numpy /
pandas / scikit-learn on the host, outside the sandbox. A bad submission never raises: it grades as invalid
with score 0 and a one-line reason (docs/paper.md §13.9).
"""
from __future__ import annotations

import dataclasses
import io
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

# name -> (lower_is_better, prediction kind). "label": one column of class labels; "proba_binary": one
# column, P(positive); "proba": one column per class; "value": one or more real-valued columns.
METRICS = {
    "accuracy": (False, "label"),
    "qwk": (False, "label"),
    "roc_auc": (False, "proba_binary"),
    "columnwise_roc_auc": (False, "proba_binary"),
    "log_loss": (True, "proba"),
    "rmse": (True, "value"),
    "rmsle": (True, "value"),
    "mae": (True, "value"),
    "r2": (False, "value"),
}


class InvalidSubmission(ValueError):
    """The submission cannot be scored (wrong ids, columns, NaN, ...)."""


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not supported; expected one of {sorted(METRICS)}.")


def lower_is_better(metric: str) -> bool:
    _check_metric(metric)
    return METRICS[metric][0]


def score(metric: str, y_true: pd.DataFrame, y_pred: pd.DataFrame) -> float:
    """The metric on aligned frames (same rows; target columns). Raises InvalidSubmission on bad values."""
    _check_metric(metric)
    t, p = y_true.to_numpy(), y_pred.to_numpy()
    if metric in ("accuracy", "qwk"):
        truth, pred = t[:, 0], p[:, 0]
        if metric == "accuracy":
            return float(np.mean(truth.astype(str) == pred.astype(str)))
        try:
            pred = pred.astype(np.int64)
        except (TypeError, ValueError):
            raise InvalidSubmission("quadratic weighted kappa needs integer class labels.") from None
        return float(skm.cohen_kappa_score(truth.astype(np.int64), pred, weights="quadratic"))
    p = _numeric(p)
    if metric in ("roc_auc", "columnwise_roc_auc"):
        aucs = []
        for j in range(t.shape[1]):
            if len(np.unique(t[:, j])) < 2:
                raise InvalidSubmission("ROC-AUC is undefined: the answers hold a single class.")
            aucs.append(skm.roc_auc_score(t[:, j], p[:, j]))
        return float(np.mean(aucs))
    if metric == "log_loss":
        # Kaggle's convention: clip, then renormalise each row to sum to 1.
        q = np.clip(p, 1e-15, 1.0)
        q = q / q.sum(axis=1, keepdims=True)
        return float(-np.mean(np.sum(t.astype(np.float64) * np.log(q), axis=1)))
    t = t.astype(np.float64)
    if metric == "rmse":
        return float(np.sqrt(np.mean((t - p) ** 2)))
    if metric == "rmsle":
        if (p <= -1).any():
            raise InvalidSubmission("RMSLE needs predictions greater than -1.")
        return float(np.mean(np.sqrt(np.mean((np.log1p(t) - np.log1p(p)) ** 2, axis=0))))
    if metric == "mae":
        return float(np.mean(np.abs(t - p)))
    return float(skm.r2_score(t, p))


def _numeric(p: np.ndarray) -> np.ndarray:
    try:
        p = p.astype(np.float64)
    except (TypeError, ValueError):
        raise InvalidSubmission("predictions must be numbers.") from None
    if not np.isfinite(p).all():
        raise InvalidSubmission("predictions contain NaN or infinite values.")
    return p


def read_submission(data: bytes | None, id_col: str, target_cols: Sequence[str], ids: pd.Index
                    ) -> pd.DataFrame:
    """Parses submission.csv and returns its target columns indexed by `ids` (same order)."""
    if data is None:
        raise InvalidSubmission("no submission.csv was written to the current directory.")
    try:
        df = pd.read_csv(io.BytesIO(data))
    except Exception as e:  # pandas raises many types on malformed CSV
        raise InvalidSubmission(f"submission.csv is not a readable CSV ({type(e).__name__}).") from None
    missing = [c for c in [id_col, *target_cols] if c not in df.columns]
    if missing:
        raise InvalidSubmission(f"submission.csv lacks columns {missing}; expected {[id_col, *target_cols]}.")
    if df[id_col].duplicated().any():
        raise InvalidSubmission(f"submission.csv repeats ids in column {id_col!r}.")
    df[id_col] = df[id_col].astype(str)
    df = df.set_index(id_col)
    want = ids.astype(str)
    absent = want.difference(df.index)
    if len(absent):
        raise InvalidSubmission(f"submission.csv misses {len(absent)} of the {len(want)} test ids "
                                f"(e.g. {absent[0]!r}).")
    if len(df) != len(want):
        raise InvalidSubmission(f"submission.csv has {len(df)} rows; expected {len(want)} (one per test id).")
    sub = df.loc[want, list(target_cols)]
    if sub.isna().any().any():
        raise InvalidSubmission("submission.csv has missing (NaN) predictions.")
    return sub


def normalize(s: float, baseline: float, reference: float, lower_better: bool) -> float:
    """clip((s − baseline)/(reference − baseline), 0, 1) (docs/paper.md §13.9). For lower-is-better
    metrics all three scores are negated, which leaves this ratio unchanged: never negate the ratio."""
    if lower_better:
        s, baseline, reference = -s, -baseline, -reference
    if not math.isfinite(s):
        return 0.0
    if reference <= baseline:  # degenerate anchors: only matching-or-beating the reference counts
        return 1.0 if s >= reference else 0.0
    return float(min(1.0, max(0.0, (s - baseline) / (reference - baseline))))


def medal_positions(n_teams: int) -> tuple[int, int, int]:
    """1-based leaderboard positions whose scores are the gold/silver/bronze thresholds, by MLE-bench's
    team-count rules (Kaggle's progression system; docs/domains.md §3.1)."""
    if n_teams < 1:
        raise ValueError(f"a leaderboard needs at least one team, got {n_teams}.")
    if n_teams < 100:
        return max(1, n_teams // 10), max(1, n_teams // 5), max(1, n_teams * 2 // 5)
    if n_teams < 250:
        return 10, max(1, n_teams // 5), max(1, n_teams * 2 // 5)
    if n_teams < 1000:
        return 10 + n_teams // 500, 50, 100
    return 10 + n_teams // 500, max(1, n_teams // 20), max(1, n_teams // 10)


def medal(s: float, leaderboard: Sequence[float], lower_better: bool) -> str:
    """"gold" / "silver" / "bronze" / "": the score must reach the threshold team's score (ties medal)."""
    ranked = sorted(leaderboard, reverse=not lower_better)  # best first
    for name, pos in zip(("gold", "silver", "bronze"), medal_positions(len(ranked))):
        threshold = ranked[pos - 1]
        if (s <= threshold) if lower_better else (s >= threshold):
            return name
    return ""


@dataclasses.dataclass(frozen=True)
class GradeResult:
    valid: bool
    score: float  # the metric on the private test rows (raw; NaN when invalid)
    normalized: float  # in [0, 1]; 0 when invalid
    medal: str  # "gold" | "silver" | "bronze" | ""
    error: str = ""  # why it is invalid, or the tail of the run's stderr
    validation_score: float = float("nan")  # the metric on the hidden validation rows (greedy search)
    validation_normalized: float = 0.0
    runtime_s: float = 0.0

    @staticmethod
    def invalid(error: str, runtime_s: float = 0.0) -> "GradeResult":
        return GradeResult(valid=False, score=float("nan"), normalized=0.0, medal="", error=error,
                           runtime_s=runtime_s)


def error_tail(text: str, max_chars: int = 2000) -> str:
    """The last lines of an error log, for the debug prompt and the result record."""
    text = (text or "").strip()
    return text if len(text) <= max_chars else "..." + text[-max_chars:]


def evaluate_run(run, grade: Callable[[bytes | None], GradeResult]) -> GradeResult:
    """Grades a sandbox RunResult: crashes, timeouts and invalid submissions get score 0 (§13.9)."""
    if run.reason or run.returncode != 0:
        why = run.reason or f"exit code {run.returncode}"
        return GradeResult.invalid(error_tail(f"solution failed ({why}).\n{run.stderr}"), run.runtime_s)
    result = grade(run.outputs.get("submission.csv"))
    return dataclasses.replace(result, runtime_s=run.runtime_s)


# ------------------------------------------------------------------------------ synthetic leaderboard


def _preprocess(X: pd.DataFrame):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    num = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in X.columns if c not in num]
    return ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), num),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
         cat)])


def reference_models(classification: bool, seed: int = 0) -> dict:
    """Fixed scikit-learn pipelines: the reference ones (`REFERENCE_NAMES`) and lightly varied others
    that together form the synthetic leaderboard (hyperparameter sweeps of common families)."""
    from sklearn import ensemble, linear_model, naive_bayes, neighbors, tree
    if classification:
        models = {f"logreg_C{c}": linear_model.LogisticRegression(C=c, max_iter=2000)
                  for c in (0.01, 0.1, 1.0, 10.0)}
        models["naive_bayes"] = naive_bayes.GaussianNB()
        make_rf, make_et = ensemble.RandomForestClassifier, ensemble.ExtraTreesClassifier
        make_hgb, make_knn = ensemble.HistGradientBoostingClassifier, neighbors.KNeighborsClassifier
        make_tree = tree.DecisionTreeClassifier
    else:
        models = {f"ridge_a{a}": linear_model.Ridge(alpha=a) for a in (0.1, 1.0, 10.0, 100.0)}
        models["lasso"] = linear_model.LassoCV(cv=3)
        make_rf, make_et = ensemble.RandomForestRegressor, ensemble.ExtraTreesRegressor
        make_hgb, make_knn = ensemble.HistGradientBoostingRegressor, neighbors.KNeighborsRegressor
        make_tree = tree.DecisionTreeRegressor
    for d in (2, 4, None):
        models[f"rf_depth{d}"] = make_rf(n_estimators=60, max_depth=d, random_state=seed)
        models[f"tree_depth{d}"] = make_tree(max_depth=d, random_state=seed)
    models["extra_trees"] = make_et(n_estimators=60, random_state=seed)
    for it in (30, 100):
        models[f"hgb_{it}"] = make_hgb(max_iter=it, random_state=seed)
    for k in (1, 5, 15):
        models[f"knn_{k}"] = make_knn(n_neighbors=k)
    return models


# The reference pipelines (the normalisation's top anchor), keyed by "is classification".
REFERENCE_NAMES = {True: ("logreg_C1.0", "rf_depthNone", "hgb_100"),
                   False: ("ridge_a1.0", "rf_depthNone", "hgb_100")}


def fit_predict(model, X_train: pd.DataFrame, y_train: pd.Series, X_eval: pd.DataFrame, kind: str,
                classes: Sequence | None) -> np.ndarray:
    """Fits `model` behind a standard preprocessor and predicts in the submission's format
    ([rows] labels/values, or [rows, classes] probabilities in the order of `classes`)."""
    from sklearn.pipeline import make_pipeline
    pipe = make_pipeline(_preprocess(X_train), model).fit(X_train, y_train)
    if kind in ("label", "value"):
        return pipe.predict(X_eval)
    proba = pipe.predict_proba(X_eval)  # [rows, fitted classes]
    order = [list(pipe.classes_).index(c) for c in classes]
    return proba[:, order]


METRIC_NAMES = {
    "accuracy": "accuracy (the fraction of correctly predicted classes)",
    "qwk": "quadratic weighted Cohen's kappa between predicted and true ordinal classes",
    "roc_auc": "the area under the ROC curve (ROC-AUC) of the predicted probabilities",
    "columnwise_roc_auc": "the mean column-wise ROC-AUC of the predicted probabilities",
    "log_loss": "multi-class logarithmic loss (cross-entropy) of the predicted probabilities; each row is "
                "clipped to [1e-15, 1] and renormalised to sum to 1",
    "rmse": "root mean squared error (RMSE)",
    "rmsle": "root mean squared logarithmic error (RMSLE), sqrt(mean((log(1 + p) - log(1 + y))^2))",
    "mae": "mean absolute error (MAE)",
    "r2": "the coefficient of determination R^2",
}
