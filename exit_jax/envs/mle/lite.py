"""MLE-lite: offline Kaggle-style tasks from data that installed packages ship (domains.md §3.2).

Each task is laid out like an MLE-bench competition: `description.md`, `train.csv`, `test.csv` (no target)
and `sample_submission.csv` in a public dir that the sandbox mounts at PUBLIC_RESOURCE_PATH; the solution
writes `./submission.csv`. The answers stay in this process's memory, never on disk. `test.csv` also holds
the features of a validation split: the grader scores those rows separately (`validation_score`, used to
pick nodes in greedy search, paper_notes §13.10) and reports the private test rows as the score.

Anchors (constant-prediction baseline, best reference pipeline, a synthetic leaderboard of pipeline
variants for medals) are computed once per task and cached as JSON next to the public files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import sklearn
import threadpoolctl

from exit_jax.envs.base import Task
from exit_jax.envs.mle import grading, sandbox
from exit_jax.envs.mle.grading import GradeResult, InvalidSubmission

_FORMAT_VERSION = 2  # bump when files or anchors change meaning: it keys the cache
ID_COL = "id"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "exit_jax", "mle_lite")


@dataclasses.dataclass(frozen=True)
class LiteSpec:
    id: str
    title: str
    goal: str  # what to predict, in a sentence or two
    metric: str  # a key of grading.METRICS
    target: str
    load: Callable[[], tuple] = dataclasses.field(compare=False, repr=False)  # () -> (X frame, y series)
    max_rows: int = 2000  # CI speed: larger sources are subsampled (domains.md §3.2)
    time_limit_s: float = 60.0
    memory_mb: int = 2048
    seed: int = 0

    def __post_init__(self):
        if self.metric not in grading.METRICS:
            raise ValueError(f"task {self.id!r}: metric {self.metric!r} is not one of {sorted(grading.METRICS)}.")


# ----------------------------------------------------------------------------------------- sources


def _sklearn(name: str):
    def load():
        from sklearn import datasets
        bunch = getattr(datasets, f"load_{name}")(as_frame=True)
        return bunch.data, bunch.target
    return load


def _penguins():
    import palmerpenguins
    df = palmerpenguins.load_penguins().dropna(subset=["body_mass_g"]).reset_index(drop=True)
    return df.drop(columns=["body_mass_g"]), df["body_mass_g"]


def _statsmodels(name: str, target: str, transform=None):
    def load():
        import statsmodels.api as sm
        df = getattr(sm.datasets, name).load_pandas().data
        y = transform(df[target]) if transform else df[target]
        return df.drop(columns=[target]), y
    return load


def _make_classification(n_samples: int, n_features: int, n_informative: int, n_classes: int,
                         class_sep: float, flip_y: float, weights: tuple | None, seed: int):
    def load():
        from sklearn.datasets import make_classification
        X, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                                   n_redundant=min(2, n_features - n_informative), n_classes=n_classes,
                                   class_sep=class_sep, flip_y=flip_y, weights=list(weights) if weights else None,
                                   random_state=seed)
        return pd.DataFrame(X, columns=[f"f{i}" for i in range(n_features)]), pd.Series(y)
    return load


def _make_regression(n_samples: int, n_features: int, n_informative: int, noise: float, seed: int,
                     n_bins: int = 0, nonnegative: bool = False):
    def load():
        from sklearn.datasets import make_regression
        X, y = make_regression(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                               noise=noise, random_state=seed)
        if n_bins:  # an ordinal target for quadratic weighted kappa
            y = np.digitize(y, np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
        elif nonnegative:  # RMSLE needs y >= 0: shift to start at 0
            y = y - y.min()
        return pd.DataFrame(X, columns=[f"x{i}" for i in range(n_features)]), pd.Series(y)
    return load


def synthetic_classification(id: str, n_samples: int = 1500, n_features: int = 20, n_informative: int = 5,
                             n_classes: int = 2, class_sep: float = 1.0, flip_y: float = 0.02,
                             weights: tuple | None = None, metric: str = "accuracy", seed: int = 7301
                             ) -> LiteSpec:
    """A make_classification task; lower class_sep, higher flip_y and skewed weights make it harder."""
    kind = grading.METRICS[metric][1]
    what = {"label": f"the class `target` (one of {n_classes})",
            "proba": f"the probability of each of the {n_classes} classes of `target`",
            "proba_binary": "the probability that `target` is 1"}[kind]
    return LiteSpec(id, f"Synthetic classification ({id})",
                    f"For each row, predict {what} from {n_features} anonymous numeric features.", metric, "target",
                    _make_classification(n_samples, n_features, n_informative, n_classes, class_sep, flip_y,
                                         weights, seed), seed=seed)


def synthetic_regression(id: str, n_samples: int = 1500, n_features: int = 15, n_informative: int = 6,
                         noise: float = 20.0, metric: str = "rmse", n_bins: int = 0, seed: int = 5113
                         ) -> LiteSpec:
    """A make_regression task; more noise and fewer informative features make it harder. With n_bins the
    target is binned into ordered classes (use metric="qwk"); for RMSLE it is shifted to be non-negative."""
    what = f"the ordinal class `target` (0..{n_bins - 1})" if n_bins else "the real value `target`"
    return LiteSpec(id, f"Synthetic regression ({id})",
                    f"For each row, predict {what} from {n_features} anonymous numeric features.", metric,
                    "target", _make_regression(n_samples, n_features, n_informative, noise, seed, n_bins,
                                               nonnegative=metric == "rmsle"),
                    seed=seed)


def specs() -> list:
    """The default MLE-lite suite (every id listed in issue 7, plus synthetic difficulty variants)."""
    return [
        LiteSpec("digits", "Handwritten digits", "Classify 8x8 images of handwritten digits (pixel columns "
                 "pixel_0_0..pixel_7_7, values 0-16) into the digit `target` 0-9.", "accuracy", "target",
                 _sklearn("digits")),
        LiteSpec("breast_cancer", "Breast cancer diagnosis", "Predict the probability that a tumour is benign "
                 "(`target` = 1) from 30 measurements of cell nuclei.", "roc_auc", "target",
                 _sklearn("breast_cancer")),
        LiteSpec("wine", "Wine cultivars", "Predict the probability of each of the 3 cultivars (`target` "
                 "0, 1, 2) of a wine from its chemical analysis.", "log_loss", "target", _sklearn("wine")),
        LiteSpec("diabetes", "Diabetes progression", "Predict `target`, a quantitative measure of diabetes "
                 "progression one year after baseline, from 10 standardised patient variables.", "rmse",
                 "target", _sklearn("diabetes")),
        LiteSpec("penguins", "Palmer penguins body mass", "Predict the body mass in grams (`body_mass_g`) of "
                 "a penguin from its species, island, bill and flipper size, sex and year. Some values are "
                 "missing.", "mae", "body_mass_g", _penguins),
        LiteSpec("fair", "Extramarital affairs (1974 survey)", "Predict the probability that a respondent "
                 "reported any extramarital affair (`had_affair` = 1) from marriage, age, children, religion, "
                 "education and occupation answers.", "roc_auc", "had_affair",
                 _statsmodels("fair", "affairs", lambda s: (s > 0).astype(int).rename("had_affair"))),
        LiteSpec("randhie", "RAND health insurance experiment", "Predict the number of outpatient doctor "
                 "visits (`mdvis`) of a person from insurance plan and health variables.", "rmsle", "mdvis",
                 _statsmodels("randhie", "mdvis")),
        synthetic_classification("synth_clf_easy", class_sep=1.5, flip_y=0.01),
        synthetic_classification("synth_clf_hard", n_features=40, n_informative=4, class_sep=0.6, flip_y=0.1,
                                 weights=(0.8, 0.2), metric="roc_auc"),
        synthetic_classification("synth_multiclass", n_classes=4, n_informative=8, class_sep=0.8,
                                 metric="log_loss"),
        synthetic_regression("synth_reg", noise=40.0, metric="r2"),
        synthetic_regression("synth_ordinal", noise=30.0, n_bins=5, metric="qwk"),
    ]


# Metrics of procedural tasks (every single-target metric of grading.METRICS): the warm start's corpus
# sees each prediction kind on many tasks, so it must read the kind from the task's description.
PROCEDURAL_METRICS = ("accuracy", "qwk", "roc_auc", "log_loss", "rmse", "rmsle", "mae", "r2")


def procedural_specs(n: int, seed: int = 0) -> list:
    """n synthetic tasks `proc_<seed>_<i>` with random size, difficulty and metric (cycling through
    PROCEDURAL_METRICS): a task stream for supervised warm starts, apart from specs()."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        metric, task_seed = PROCEDURAL_METRICS[i % len(PROCEDURAL_METRICS)], 100_000 + 1_000 * seed + i
        id = f"proc_{seed}_{i}"
        n_samples, n_features = int(rng.integers(300, 1501)), int(rng.integers(4, 31))
        n_informative = int(rng.integers(2, n_features + 1))
        if grading.METRICS[metric][1] == "value" or metric == "qwk":
            out.append(synthetic_regression(id, n_samples, n_features, n_informative,
                                            noise=float(rng.choice([5.0, 20.0, 40.0, 80.0])), metric=metric,
                                            n_bins=int(rng.integers(3, 7)) if metric == "qwk" else 0,
                                            seed=task_seed))
        else:
            n_classes = 2 if metric == "roc_auc" else int(rng.integers(2, 6))
            # make_classification needs 2 clusters per class <= 2 ** n_informative
            n_informative = max(n_informative, int(np.ceil(np.log2(2 * n_classes))))
            out.append(synthetic_classification(id, n_samples, n_features, n_informative, n_classes,
                                                class_sep=float(rng.choice([0.5, 1.0, 1.5])),
                                                flip_y=float(rng.choice([0.0, 0.05, 0.1])), metric=metric,
                                                seed=task_seed))
    return out


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
