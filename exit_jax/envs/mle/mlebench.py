"""Adapter for real MLE-bench competitions prepared by openai/mle-bench (`mlebench prepare -c <id>`).

Expected layout (docs/domains.md §3.1):

    <data_dir>/<id>/prepared/public/    the files the solution sees (sample_submission.csv, ...)
    <data_dir>/<id>/prepared/private/   the answers (never mounted in the sandbox)
    <competitions_dir>/<id>/            config.yaml, description(_obfuscated).md, leaderboard.csv
                                        (mle-bench's `mlebench/competitions/`; leaderboard.csv is a git-lfs
                                        object: run `git lfs pull` or it is a pointer file). Without
                                        competitions_dir these files are looked for in <data_dir>/<id>/;
                                        missing there, known competitions fall back on a built-in metric
                                        table and the paper's Table 3 ranges (no medals then).

Grading uses the competition's metric for the common metric types (`grading.METRICS`), with the submission
format of sample_submission.csv (first column: the id; the others: the targets). The normalised score is
(s − worst)/(best − worst) over the leaderboard, clipped to [0, 1] (docs/paper.md §13.9; the paper itself
used the fixed ranges of its Table 3), and medals follow MLE-bench's team-count thresholds.
MLE-bench has no hidden validation split here: `validation_score` is NaN (greedy search then falls back on
the test score, which the paper's setting also sees only through the grader).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import pandas as pd
import yaml

from exit_jax.envs.base import Task
from exit_jax.envs.mle import grading, lite, sandbox
from exit_jax.envs.mle.grading import GradeResult, InvalidSubmission

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mle-bench", "data")
PAPER_TIME_LIMIT_S = 300.0  # paper App. A: a 5-minute run limit

# MLE-bench grader names (config.yaml `grader.name`) -> our metric names.
GRADER_METRICS = {
    "auc-roc": "roc_auc", "roc-auc": "roc_auc", "auc": "roc_auc", "column-wise-auc": "columnwise_roc_auc",
    "column-wise-roc-auc": "columnwise_roc_auc", "mean-column-wise-auc": "columnwise_roc_auc",
    "multi-class-log-loss": "log_loss", "log-loss": "log_loss", "logloss": "log_loss",
    "rmse": "rmse", "root-mean-squared-error": "rmse", "rmsle": "rmsle",
    "mean-column-wise-rmsle": "rmsle", "accuracy": "accuracy", "quadratic-weighted-kappa": "qwk",
    "qwk": "qwk", "mean-absolute-error": "mae", "mae": "mae", "r2": "r2",
}


# Metrics of known competitions (docs/domains.md §3.1), used when no config.yaml is at hand.
KNOWN_METRICS = {
    "random-acts-of-pizza": "roc_auc", "spooky-author-identification": "log_loss",
    "detecting-insults-in-social-commentary": "roc_auc", "nomad2018-predict-transparent-conductors": "rmsle",
    "jigsaw-toxic-comment-classification-challenge": "columnwise_roc_auc",
    "aerial-cactus-identification": "roc_auc", "aptos2019-blindness-detection": "qwk",
    "denoising-dirty-documents": "rmse", "dog-breed-identification": "log_loss",
    "dogs-vs-cats-redux-kernels-edition": "log_loss", "histopathologic-cancer-detection": "roc_auc",
    "leaf-classification": "log_loss", "new-york-city-taxi-fare-prediction": "rmse",
    "plant-pathology-2020-fgvc7": "columnwise_roc_auc", "siim-isic-melanoma-classification": "roc_auc",
    "tabular-playground-series-dec-2021": "accuracy", "tabular-playground-series-may-2022": "roc_auc",
}

# Paper Table 3 (worst, best) score ranges, the fallback when no leaderboard.csv is available (then no
# medals). Spooky's printed best of 1.0 is taken as the evident typo for 0.0 (docs/paper.md §9).
PAPER_RANGES = {
    "random-acts-of-pizza": (0.0, 1.0), "spooky-author-identification": (1.5, 0.0),
    "detecting-insults-in-social-commentary": (0.0, 1.0), "nomad2018-predict-transparent-conductors": (1.0, 0.0),
    "jigsaw-toxic-comment-classification-challenge": (0.0, 1.0), "aerial-cactus-identification": (0.0, 1.0),
}


def _metric_for(competition_id: str, config: dict, path: str) -> str:
    name = str((config.get("grader") or {}).get("name", "")).lower().replace("_", "-")
    if name in GRADER_METRICS:
        return GRADER_METRICS[name]
    if not name and competition_id in KNOWN_METRICS:
        return KNOWN_METRICS[competition_id]
    raise ValueError(f"{path}: grader name {name!r} has no built-in metric; pass metric= one of "
                     f"{sorted(grading.METRICS)}.")


def _read_leaderboard(path: str) -> list:
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(f"{path} is a git-lfs pointer, not the leaderboard; run `git lfs pull` in mle-bench.")
    scores = pd.read_csv(path)
    if "score" not in scores.columns:
        raise ValueError(f"{path} has no 'score' column; expected MLE-bench's leaderboard.csv.")
    scores = scores["score"].dropna().astype(float).tolist()
    if not scores:
        raise ValueError(f"{path} lists no scores.")
    return scores


def _as_number(col: pd.Series) -> pd.Series:
    """Answer columns of probability metrics as floats (some competitions store True/False)."""
    if col.dtype == bool or col.astype(str).str.lower().isin(["true", "false"]).all():
        return col.astype(str).str.lower().eq("true").astype(float)
    return col.astype(float)


class MLEBenchTask:
    """One prepared competition, with the same interface as `lite.LiteTask`."""

    def __init__(self, competition_id: str, data_dir: str = DEFAULT_DATA_DIR, competitions_dir: str | None = None,
                 metric: str | None = None, time_limit_s: float = PAPER_TIME_LIMIT_S, memory_mb: int = 8192):
        self.id = competition_id
        self.time_limit_s, self.memory_mb = time_limit_s, memory_mb
        prepared = os.path.join(data_dir, competition_id, "prepared")
        self.public_dir, private = os.path.join(prepared, "public"), os.path.join(prepared, "private")
        if not (os.path.isdir(self.public_dir) and os.path.isdir(private)):
            raise FileNotFoundError(
                f"MLE-bench competition {competition_id!r} is not prepared under {data_dir!r} (expected "
                f"{prepared}/public and /private); run `mlebench prepare -c {competition_id}` and point the "
                "mlebench data_dir at that directory.")
        # Metadata: mle-bench's mlebench/competitions/<id>/, else files placed beside `prepared/`.
        meta = os.path.join(competitions_dir, competition_id) if competitions_dir else os.path.dirname(prepared)
        if not os.path.isdir(meta):
            raise FileNotFoundError(f"competition metadata dir {meta!r} does not exist; expected mle-bench's "
                                    "mlebench/competitions/<id>/ with leaderboard.csv and config.yaml.")
        config = {}
        config_path = os.path.join(meta, "config.yaml")
        if os.path.isfile(config_path):
            with open(config_path) as f:
                config = yaml.safe_load(f) or {}
        self.metric = metric or _metric_for(competition_id, config, config_path)
        if self.metric not in grading.METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {sorted(grading.METRICS)}.")
        self.kind = grading.METRICS[self.metric][1]
        self.description = self._description(meta)
        lb_path = os.path.join(meta, "leaderboard.csv")
        if os.path.isfile(lb_path):
            self.leaderboard = _read_leaderboard(lb_path)
            # MLE-bench: lower is better when the top of the leaderboard scores below its bottom.
            self.lower_is_better = bool(self.leaderboard[0] < self.leaderboard[-1])
            pick = (max, min) if self.lower_is_better else (min, max)
            self.worst, self.best = pick[0](self.leaderboard), pick[1](self.leaderboard)
        elif competition_id in PAPER_RANGES:
            self.leaderboard = []  # no medals without a leaderboard
            self.worst, self.best = PAPER_RANGES[competition_id]
            self.lower_is_better = self.best < self.worst
        else:
            raise FileNotFoundError(f"{lb_path} is missing; the normalised score and medals need the "
                                    "competition's leaderboard.csv (mle-bench, after `git lfs pull`).")
        sample_path = os.path.join(self.public_dir, "sample_submission.csv")
        answers_path = self._answers_path(config, data_dir, private)
        if not os.path.isfile(sample_path):
            raise FileNotFoundError(f"{sample_path} is missing; the submission format comes from it.")
        columns = list(pd.read_csv(sample_path, nrows=0).columns)
        if len(columns) < 2:
            raise ValueError(f"{sample_path} needs an id column and at least one target column.")
        self.id_col, self.target_cols = columns[0], columns[1:]
        answers = pd.read_csv(answers_path)
        missing = [c for c in columns if c not in answers.columns]
        if missing:
            raise ValueError(f"{answers_path} lacks columns {missing} of sample_submission.csv.")
        answers[self.id_col] = answers[self.id_col].astype(str)
        self._answers = answers.set_index(self.id_col)[self.target_cols]  # [rows, targets]; host memory only
        if self.kind in ("proba_binary", "proba"):
            self._answers = self._answers.apply(_as_number)

    def _description(self, meta: str | None) -> str:
        # The paper shows the compact "obfuscated" description (docs/paper.md §4.3).
        for d, name in ((meta, "description_obfuscated.md"), (meta, "description.md"),
                        (self.public_dir, "description.md")):
            if d and os.path.isfile(os.path.join(d, name)):
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    return f.read()
        raise FileNotFoundError(f"no description.md for {self.id!r} in the metadata dir or {self.public_dir}.")

    @staticmethod
    def _answers_path(config: dict, data_dir: str, private: str) -> str:
        named = (config.get("dataset") or {}).get("answers")
        if named and os.path.isfile(os.path.join(data_dir, named)):
            return os.path.join(data_dir, named)
        csvs = sorted(f for f in os.listdir(private) if f.endswith(".csv"))
        for preferred in ("answers.csv", "test.csv"):
            if preferred in csvs:
                return os.path.join(private, preferred)
        if len(csvs) == 1:
            return os.path.join(private, csvs[0])
        raise FileNotFoundError(f"cannot tell which CSV in {private} holds the answers ({csvs}); name it in "
                                "config.yaml dataset.answers.")

    def grade(self, submission: bytes | None) -> GradeResult:
        try:
            sub = grading.read_submission(submission, self.id_col, self.target_cols, self._answers.index)
            s = round(grading.score(self.metric, self._answers, sub), 5)  # MLE-bench rounds to 5 places
        except InvalidSubmission as e:
            return GradeResult.invalid(f"invalid submission: {e}")
        except Exception as e:  # noqa: BLE001  untrusted content must never crash the grader
            return GradeResult.invalid(f"invalid submission: {type(e).__name__}: {e}"[:500])
        lb = self.lower_is_better
        norm = grading.normalize(s, self.worst, self.best, lb)  # (s − worst)/(best − worst), clipped
        medal = grading.medal(s, self.leaderboard, lb) if self.leaderboard else ""
        return GradeResult(valid=True, score=s, normalized=norm if math.isfinite(s) else 0.0, medal=medal,
                           validation_score=float("nan"))

    def evaluate(self, code: str, *, config: sandbox.SandboxConfig = sandbox.SandboxConfig(),
                 pool: sandbox.WarmPool | None = None, time_limit_s: float | None = None) -> GradeResult:
        limit = time_limit_s or self.time_limit_s
        run = sandbox.run_python(code, data_dir=self.public_dir, time_limit_s=limit, memory_mb=self.memory_mb,
                                 config=config, pool=pool)
        return grading.evaluate_run(run, self.grade)

    def preview_contents(self) -> str:
        return lite.preview_files(self.public_dir)

    def as_task(self) -> Task:
        return Task(id=self.id, domain="mle", data={"task_description": self.description,
                                                    "preview_contents": self.preview_contents(),
                                                    "mle_task": self})


def tasks(data_dir: str = DEFAULT_DATA_DIR, ids: Sequence[str] | None = None,
          competitions_dir: str | None = None, **kwargs) -> list:
    """MLEBenchTask for each id (default: every competition prepared under `data_dir`), e.g. the paper's
    train split detecting-insults-in-social-commentary, spooky-author-identification, random-acts-of-pizza
    (paper App. A). kwargs: metric, time_limit_s, memory_mb."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"MLE-bench data dir {data_dir!r} does not exist; prepare competitions with "
                                "`mlebench prepare -c <id>` (Kaggle credentials needed) and pass its path.")
    if ids is None:
        ids = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d, "prepared")))
        if not ids:
            raise FileNotFoundError(f"no prepared competition (<id>/prepared/) under {data_dir!r}; run "
                                    "`mlebench prepare -c <id>` first.")
    return [MLEBenchTask(i, data_dir, competitions_dir, **kwargs) for i in ids]


