"""MLE-lite: offline Kaggle-style tasks from data that installed packages ship (docs/domains.md §3.2).

Each task is laid out like an MLE-bench competition: `description.md`, `train.csv`, `test.csv` (no target)
and `sample_submission.csv` in a public dir that the sandbox mounts at PUBLIC_RESOURCE_PATH; the solution
writes `./submission.csv`. The answers stay in this process's memory, never on disk. `test.csv` also holds
the features of a validation split: the grader scores those rows separately (`validation_score`, used to
pick nodes in greedy search, docs/paper.md §13.10) and reports the private test rows as the score.

Anchors (constant-prediction baseline, best reference pipeline, a synthetic leaderboard of pipeline
variants for medals) are computed once per task and cached as JSON next to the public files. The tasks
themselves (data source, goal, metric) are defined in `exit_jax.envs.mle.lite_specs`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np
import pandas as pd
import sklearn
import threadpoolctl

from exit_jax.envs.base import Task
from exit_jax.envs.mle import grading, sandbox
from exit_jax.envs.mle.grading import GradeResult, InvalidSubmission
from exit_jax.envs.mle.lite_specs import LiteSpec, procedural_specs, specs

_FORMAT_VERSION = 2  # bump when files or anchors change meaning: it keys the cache
ID_COL = "id"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "exit_jax", "mle_lite")


# ------------------------------------------------------------------------------------------- tasks


# Four significant digits: enough to see each column's scale and type. Synthetic tasks store floats with
# 16-17 digits, which (digit-split by most tokenizers) tripled the preview's tokens for nothing.
FLOAT_FORMAT = "%.4g"


def preview_files(public_dir: str, rows: int = 3, max_cols: int = 12) -> str:
    """The `{preview_contents}` of the MLE prompt: each CSV's shape and first rows and columns."""
    parts = []
    order = {"train.csv": 0, "test.csv": 1}
    for name in sorted(os.listdir(public_dir), key=lambda n: (order.get(n, 2), n)):
        path = os.path.join(public_dir, name)
        if not name.endswith(".csv") or not os.path.isfile(path):
            if name != "description.md":  # the description is its own prompt slot
                parts.append(f"-> {name}")
            continue
        df = pd.read_csv(path, nrows=rows)
        with open(path, "rb") as f:
            n_rows = sum(1 for _ in f) - 1
        shown = df.iloc[:, :max_cols]
        more = f", first {max_cols} columns" if df.shape[1] > max_cols else ""
        parts.append(f"-> {name} ({n_rows} rows x {df.shape[1]} columns; first {rows} rows{more}):\n"
                     f"{shown.to_csv(index=False, float_format=FLOAT_FORMAT).strip()}")
    return "\n\n".join(parts)


def _split(y: pd.Series, classification: bool, seed: int) -> tuple:
    """Row indices of train / validation / test: 60 / 20 / 20, stratified for classification."""
    from sklearn.model_selection import train_test_split
    idx = np.arange(len(y))
    strat = y if classification else None
    rest, test = train_test_split(idx, test_size=0.2, random_state=seed, stratify=strat)
    train, val = train_test_split(rest, test_size=0.25, random_state=seed,
                                  stratify=y.iloc[rest] if classification else None)
    return train, val, test


class LiteTask:
    """One MLE-lite task: public files on disk, answers in memory, grader and sandboxed evaluation."""

    def __init__(self, spec: LiteSpec, cache_dir: str | None = None):
        self.spec, self.id = spec, spec.id
        self.metric = spec.metric
        self.lower_is_better, self.kind = grading.METRICS[spec.metric]
        self.time_limit_s, self.memory_mb = spec.time_limit_s, spec.memory_mb
        X, y = spec.load()
        X = X.reset_index(drop=True)
        y = pd.Series(np.asarray(y), name=spec.target)
        if len(y) > spec.max_rows:
            keep = np.sort(np.random.default_rng(spec.seed).choice(len(y), spec.max_rows, replace=False))
            X, y = X.iloc[keep].reset_index(drop=True), y.iloc[keep].reset_index(drop=True)
        classification = self.kind != "value"
        self.classes = sorted(pd.unique(y).tolist()) if classification else None
        ids = pd.Index((np.random.default_rng(spec.seed + 1).permutation(len(y)) + 1000).astype(str))
        train, val, test = _split(y, classification, spec.seed)
        self._X = {"train": X.iloc[train], "val": X.iloc[val], "test": X.iloc[test]}
        self._y = {"train": y.iloc[train], "val": y.iloc[val], "test": y.iloc[test]}
        self._ids = {"train": ids[train], "val": ids[val], "test": ids[test]}
        self.target_cols = [str(c) for c in self.classes] if self.kind == "proba" else [spec.target]
        self.description = self._description(len(train), len(val) + len(test))
        self.dir = self._write_public(cache_dir or os.environ.get("EXIT_JAX_MLE_LITE_CACHE", DEFAULT_CACHE))
        self.public_dir = os.path.join(self.dir, "public")
        self._anchors = None

    # ----- data and files

    def _answers(self, split: str) -> pd.DataFrame:  # [rows, target_cols], indexed by id
        y = self._y[split].to_numpy()
        if self.kind == "proba":
            data = {str(c): (y == c).astype(np.float64) for c in self.classes}
        elif self.kind == "proba_binary":
            data = {self.spec.target: (y == self.classes[-1]).astype(np.int64)}
        else:
            data = {self.spec.target: y}
        return pd.DataFrame(data, index=self._ids[split])

    def _as_frame(self, pred: np.ndarray, ids: pd.Index) -> pd.DataFrame:
        if self.kind == "proba":
            return pd.DataFrame(pred, columns=self.target_cols, index=ids)
        col = pred[:, -1] if self.kind == "proba_binary" else pred
        return pd.DataFrame({self.spec.target: col}, index=ids)

    def _constant(self, n: int) -> np.ndarray:
        """The baseline: majority class, class frequencies, or the train mean (median for MAE)."""
        y = self._y["train"]
        if self.kind == "label":
            return np.full(n, y.value_counts().idxmax())
        if self.kind in ("proba", "proba_binary"):
            freq = y.value_counts(normalize=True)
            return np.tile([freq.get(c, 0.0) for c in self.classes], (n, 1))
        return np.full(n, float(y.median() if self.metric == "mae" else y.mean()))

    def _description(self, n_train: int, n_test: int) -> str:
        s = self.spec
        if self.kind == "proba":
            fmt = f"`{ID_COL}`, then one column per class ({', '.join(self.target_cols)}) holding its probability"
        elif self.kind == "proba_binary":
            fmt = f"`{ID_COL}`, `{s.target}` (the predicted probability that `{s.target}` is {self.classes[-1]})"
        else:
            fmt = f"`{ID_COL}`, `{s.target}` (the predicted {'class' if self.kind == 'label' else 'value'})"
        better = "lower" if self.lower_is_better else "higher"
        return (f"# {s.title}\n\n## Goal\n\n{s.goal}\n\n## Evaluation\n\nSubmissions are scored with "
                f"{grading.METRIC_NAMES[s.metric]} ({better} is better).\n\n## Submission format\n\n"
                f"A CSV file `submission.csv` with a header and one row for every row of test.csv, columns: "
                f"{fmt}. See sample_submission.csv.\n\n## Files\n\n- train.csv: {n_train} rows with "
                f"features and the target `{s.target}`\n- test.csv: {n_test} rows with the same features, no "
                f"target\n- sample_submission.csv: a valid submission in the right format\n")

    def _public_frames(self) -> dict:
        train = self._X["train"].assign(**{self.spec.target: self._y["train"].to_numpy()})
        train.insert(0, ID_COL, self._ids["train"])
        n_hidden = len(self._ids["val"]) + len(self._ids["test"])
        order = np.random.default_rng(self.spec.seed + 2).permutation(n_hidden)  # mix validation and test
        test_ids = self._ids["val"].append(self._ids["test"])[order]
        test = pd.concat([self._X["val"], self._X["test"]]).iloc[order]
        test.insert(0, ID_COL, test_ids)
        sample = self._as_frame(self._constant(len(test_ids)), test_ids).rename_axis(ID_COL).reset_index()
        return {"train.csv": train, "test.csv": test, "sample_submission.csv": sample}

    def _write_public(self, cache_dir: str) -> str:
        frames = self._public_frames()
        blobs = {k: v.to_csv(index=False).encode() for k, v in frames.items()}
        blobs["description.md"] = self.description.encode()
        s = self.spec  # the run budget is not part of the key: anchors do not depend on it
        key = (_FORMAT_VERSION, sklearn.__version__, s.id, s.title, s.goal, s.metric, s.target, s.max_rows, s.seed)
        h = hashlib.sha256(repr(key).encode())
        for k in sorted(blobs):
            h.update(k.encode() + blobs[k])
        h.update(pd.concat([self._answers("val"), self._answers("test")]).to_csv().encode())
        out = os.path.join(cache_dir, f"{self.id}-{h.hexdigest()[:12]}")
        if not os.path.isdir(os.path.join(out, "public")):
            os.makedirs(cache_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=cache_dir, prefix=f".{self.id}-")
            os.mkdir(os.path.join(tmp, "public"))
            for name, blob in blobs.items():
                with open(os.path.join(tmp, "public", name), "wb") as f:
                    f.write(blob)
            for d, _, files in os.walk(tmp):  # readable by the sandbox's unprivileged uid
                os.chmod(d, 0o755)
                for f in files:
                    os.chmod(os.path.join(d, f), 0o644)
            try:
                os.rename(tmp, out)  # atomic: concurrent builders agree on the content
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return out

    # ----- anchors

    @property
    def anchors(self) -> dict:
        """{"baseline", "reference", "leaderboard", "val_baseline", "val_reference"}; cached on disk."""
        if self._anchors is None:
            path = os.path.join(self.dir, "anchors.json")
            try:
                with open(path) as f:
                    self._anchors = json.load(f)
            except (OSError, ValueError):
                self._anchors = self._compute_anchors()
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(self._anchors, f, indent=1)
                os.replace(tmp, path)
        return self._anchors

    def _score(self, split: str, pred: np.ndarray) -> float:
        ids = self._ids[split]
        return grading.score(self.metric, self._answers(split), self._as_frame(pred, ids))

    def _compute_anchors(self) -> dict:
        classification = self.kind != "value"
        models = grading.reference_models(classification, self.spec.seed)
        Xtr, ytr = self._X["train"], self._y["train"]
        test, val = {}, {}
        for name, model in models.items():
            # One BLAS/OpenMP thread: on a shared 2-core machine thread pools oversubscribe ~10x slower.
            with threadpoolctl.threadpool_limits(1):
                pred = grading.fit_predict(model, Xtr, ytr, pd.concat([self._X["val"], self._X["test"]]),
                                           self.kind, self.classes)
            if self.metric == "rmsle":  # counts cannot be negative; linear models may predict so
                pred = np.maximum(pred, 0.0)
            n_val = len(self._ids["val"])
            val[name], test[name] = self._score("val", pred[:n_val]), self._score("test", pred[n_val:])
        pick = min if self.lower_is_better else max
        refs = grading.REFERENCE_NAMES[classification]
        ref = pick(refs, key=lambda n: test[n])
        baseline = self._score("test", self._constant(len(self._ids["test"])))
        return {"baseline": baseline, "reference": test[ref], "reference_model": ref,
                "val_baseline": self._score("val", self._constant(len(self._ids["val"]))),
                "val_reference": pick(val[n] for n in refs),
                # the teams: every pipeline variant plus a sample-submission (constant) entry, best first
                "leaderboard": sorted([*test.values(), baseline], reverse=not self.lower_is_better)}

    # ----- grading

    def grade(self, submission: bytes | None) -> GradeResult:
        """Grades submission.csv bytes; invalid submissions get score 0 with the reason."""
        try:
            sub = grading.read_submission(submission, ID_COL, self.target_cols,
                                          self._ids["val"].append(self._ids["test"]))
            s = grading.score(self.metric, self._answers("test"), sub.loc[self._ids["test"]])
            v = grading.score(self.metric, self._answers("val"), sub.loc[self._ids["val"]])
        except InvalidSubmission as e:
            return GradeResult.invalid(f"invalid submission: {e}")
        except Exception as e:  # noqa: BLE001  untrusted content must never crash the grader
            return GradeResult.invalid(f"invalid submission: {type(e).__name__}: {e}"[:500])
        a = self.anchors
        lb = self.lower_is_better
        return GradeResult(valid=True, score=s, normalized=grading.normalize(s, a["baseline"], a["reference"], lb),
                           medal=grading.medal(s, a["leaderboard"], lb), validation_score=v,
                           validation_normalized=grading.normalize(v, a["val_baseline"], a["val_reference"], lb))

    def evaluate(self, code: str, *, config: sandbox.SandboxConfig = sandbox.SandboxConfig(),
                 pool: sandbox.WarmPool | None = None, time_limit_s: float | None = None) -> GradeResult:
        """Runs `code` as solution.py in the sandbox (time limit: the task's unless given) and grades its
        submission.csv."""
        limit = time_limit_s or self.time_limit_s
        run = sandbox.run_python(code, data_dir=self.public_dir, time_limit_s=limit, memory_mb=self.memory_mb,
                                 config=config, pool=pool)
        return grading.evaluate_run(run, self.grade)

    def preview_contents(self) -> str:
        return preview_files(self.public_dir)

    def as_task(self) -> Task:
        """The env-protocol record; `data` carries the fields the MLE prompt needs (curriculum.episodes)."""
        return Task(id=self.id, domain="mle", data={"task_description": self.description,
                                                    "preview_contents": self.preview_contents(),
                                                    "mle_task": self})


def procedural_tasks(n: int, seed: int = 0, cache_dir: str | None = None) -> list:
    """The LiteTasks of procedural_specs(n, seed)."""
    return [LiteTask(spec, cache_dir) for spec in procedural_specs(n, seed)]


def tasks(ids: Sequence[str] | None = None, cache_dir: str | None = None, time_limit_s: float | None = None,
          memory_mb: int | None = None) -> list:
    """The MLE-lite tasks (all, or those named in `ids`, in that order); `time_limit_s` / `memory_mb`
    override every task's run budget (the paper gives MLE-bench runs 5 minutes; MLE-lite needs far less)."""
    by_id = {s.id: s for s in specs()}
    unknown = [i for i in (ids or []) if i not in by_id]
    if unknown:
        raise ValueError(f"unknown MLE-lite task ids {unknown}; known: {sorted(by_id)}.")
    budget = {k: v for k, v in (("time_limit_s", time_limit_s), ("memory_mb", memory_mb)) if v is not None}
    return [LiteTask(dataclasses.replace(by_id[i], **budget), cache_dir) for i in (ids or list(by_id))]
