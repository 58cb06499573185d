"""MLE-lite task definitions: what each task predicts, from which data, scored how (docs/domains.md §3.2).

`specs()` is the default suite: datasets that installed packages ship (scikit-learn, palmerpenguins,
statsmodels) and synthetic difficulty variants. `procedural_specs()` draws synthetic tasks over every
metric, for supervised warm starts. `exit_jax.envs.mle.lite` turns a spec into files, answers and a grader.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd

from exit_jax.envs.mle import grading


@dataclasses.dataclass(frozen=True)
class LiteSpec:
    id: str
    title: str
    goal: str  # what to predict, in a sentence or two
    metric: str  # a key of grading.METRICS
    target: str
    load: Callable[[], tuple] = dataclasses.field(compare=False, repr=False)  # () -> (X frame, y series)
    max_rows: int = 2000  # CI speed: larger sources are subsampled (docs/domains.md §3.2)
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
    """The default MLE-lite suite: seven tasks carved from packaged datasets, five synthetic difficulty variants."""
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
