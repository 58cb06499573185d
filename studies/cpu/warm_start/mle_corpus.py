"""MLE-lite supervised corpus: attempts and self-iterations of short, generic scikit-learn scripts.

The warm-start model must learn three things before RL: the reply format (one ```python fence holding
solution.py), a script that works on any MLE-lite task, and what each self-iteration goal asks for. So
every target is rendered from one small grammar (`Spec`) into one fixed layout: the same lines in the
same order; only two imports, the preprocessing, the model and the prediction line vary. The scripts
read the task's files at run time and infer the id / target columns from them, so nothing task-specific
is copied from the prompt except the prediction kind (labels, probabilities or values), which the
description states.

Prompts are never typed here: attempts are `env.reset()`, self-iterations are built by
`evaluation.greedy_search.iterate_conversation` around the previous script's code (ExIt replay episodes
render the same template around the same code), and
debug traces come from running the buggy script through the env, as a failed rollout records them.
Improve and diverge targets are drawn from the grammar without looking at scores: which revision helps
is for RL to find, not for SFT to copy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Sequence

import numpy as np

from exit_jax.envs.base import Env, Task
from exit_jax.evaluation import greedy_search
from studies.cpu.warm_start.example import Example

# grading.METRICS kind -> how the script predicts. proba_binary and proba share one line, because
# predict_proba(...)[:, -len(cols):] is P(positive) for one column and every class for several.
MODE_OF_KIND = {"label": "label", "proba_binary": "proba", "proba": "proba", "value": "value"}


class Family(NamedTuple):
    """A model family of the grammar. Choices are few and round so the BPE sees each value many times."""
    module: str  # sklearn submodule
    classifier: str
    regressor: str
    clf_grid: dict  # {param: choices}, in the order the model line lists them
    reg_grid: dict
    clf_fixed: str = ""  # keyword text every script of the family carries
    reg_fixed: str = ""


_TREES = {"n_estimators": (50, 100, 200), "max_depth": (None, 4, 8)}
_BOOST = {"n_estimators": (50, 100), "learning_rate": (0.05, 0.1, 0.3), "max_depth": (2, 3)}
_HIST = {"max_iter": (50, 100, 200), "learning_rate": (0.05, 0.1, 0.3)}
_KNN = {"n_neighbors": (3, 5, 15, 31), "weights": ("uniform", "distance")}
_SEED = "random_state=0"
FAMILIES = {
    "linear": Family("linear_model", "LogisticRegression", "Ridge", {"C": (0.01, 0.1, 1.0, 10.0)},
                     {"alpha": (0.1, 1.0, 10.0, 100.0)}, "max_iter=1000"),
    "forest": Family("ensemble", "RandomForestClassifier", "RandomForestRegressor", _TREES, _TREES, _SEED,
                     _SEED),
    "extra_trees": Family("ensemble", "ExtraTreesClassifier", "ExtraTreesRegressor", _TREES, _TREES, _SEED,
                          _SEED),
    "boosting": Family("ensemble", "GradientBoostingClassifier", "GradientBoostingRegressor", _BOOST, _BOOST,
                       _SEED, _SEED),
    # no seed: below 10k rows HistGradientBoosting neither early-stops nor subsamples, so it is deterministic
    "hist_boosting": Family("ensemble", "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
                            _HIST, _HIST),
    "knn": Family("neighbors", "KNeighborsClassifier", "KNeighborsRegressor", _KNN, _KNN),
    "tree": Family("tree", "DecisionTreeClassifier", "DecisionTreeRegressor", {"max_depth": (3, 6, None)},
                   {"max_depth": (3, 6, None)}, _SEED, _SEED),
}
IMPUTERS = ("mean", "median")
SCALERS = {"standard": "StandardScaler", "minmax": "MinMaxScaler", "none": ""}

# Kinds of examples and their default shares of the corpus (ExIt on MLE: p_div = 0.5, docs/paper.md §10).
DEFAULT_MIX = {"attempt": 0.35, "improve": 0.3, "debug": 0.15, "diverge": 0.2}
# Share of diverge examples whose previous iterate is a buggy script.
DIVERGE_FROM_BUGGY = 0.2


@dataclasses.dataclass(frozen=True)
class Spec:
    """One point of the grammar: everything that varies between two solution scripts."""
    mode: str  # "label" | "proba" | "value"
    family: str  # a key of FAMILIES
    params: tuple  # ((name, value), ...) in the family's order
    imputer: str  # numeric SimpleImputer strategy
    scaler: str  # a key of SCALERS

    @property
    def estimator(self) -> str:
        fam = FAMILIES[self.family]
        return fam.regressor if self.mode == "value" else fam.classifier

    @property
    def module(self) -> str:
        return FAMILIES[self.family].module


def task_mode(task: Task) -> str:
    """How solutions of `task` must predict, from its grader's metric (the description states it too)."""
    mle = (task.data or {}).get("mle_task")
    if mle is None:
        from exit_jax.envs.mle import lite
        mle = lite.tasks([task.id])[0]
    return MODE_OF_KIND[mle.kind]


def _grid(family: str, mode: str) -> dict:
    fam = FAMILIES[family]
    return fam.reg_grid if mode == "value" else fam.clf_grid


def sample_spec(rng: np.random.Generator, mode: str, family: str | None = None) -> Spec:
    """A uniform draw from the grammar (uniform family unless given)."""
    if family is None:
        family = str(rng.choice(sorted(FAMILIES)))
    params = tuple((k, v[int(rng.integers(len(v)))]) for k, v in _grid(family, mode).items())
    return Spec(mode, family, params, str(rng.choice(IMPUTERS)), str(rng.choice(sorted(SCALERS))))


def improve_spec(spec: Spec, rng: np.random.Generator) -> Spec:
    """A revision: one hyperparameter, the preprocessing, or (less often) the model family changes.
    The direction is random on purpose (see module docstring); it never returns `spec` itself."""
    while True:
        r = rng.random()
        if r < 0.55:
            name, _ = spec.params[int(rng.integers(len(spec.params)))]
            value = _grid(spec.family, spec.mode)[name]
            pick = value[int(rng.integers(len(value)))]
            params = tuple((k, pick if k == name else v) for k, v in spec.params)
            new = dataclasses.replace(spec, params=params)
        elif r < 0.8:
            new = dataclasses.replace(spec, imputer=str(rng.choice(IMPUTERS)),
                                      scaler=str(rng.choice(sorted(SCALERS))))
        else:
            new = sample_spec(rng, spec.mode)
        if new != spec:
            return new


def diverge_spec(spec: Spec, rng: np.random.Generator) -> Spec:
    """A radically different approach: another model family, fresh hyperparameters and preprocessing."""
    family = str(rng.choice(sorted(set(FAMILIES) - {spec.family})))
    return sample_spec(rng, spec.mode, family)


# ------------------------------------------------------------------------------------------ rendering


def model_line(spec: Spec) -> str:
    fam = FAMILIES[spec.family]
    fixed = fam.reg_fixed if spec.mode == "value" else fam.clf_fixed
    # repr: None, 0.1, 'distance' are valid Python literals with one spelling each
    args = [f"{k}={v!r}" for k, v in spec.params] + ([fixed] if fixed else [])
    return f"    model = make_pipeline(*prep, {spec.estimator}({', '.join(args)}))"


_PREDICT = {
    "label": "    sub[cols[0]] = model.predict(X_test)",
    "proba": "    sub[cols] = model.predict_proba(X_test)[:, -len(cols):]",
    # clipping to the training range keeps counts non-negative (RMSLE) and tames linear extrapolation
    "value": "    sub[cols[0]] = model.predict(X_test).clip(y.min(), y.max())",
}


def render(spec: Spec) -> str:
    """The solution.py of `spec` (no trailing newline). One layout for every spec, 28-29 lines.

    Categorical columns are one-hot encoded with get_dummies over train and test together (so both get
    the same columns); numeric gaps are imputed inside the pipeline.
    """
    scaler = SCALERS[spec.scaler]
    prep = [f"SimpleImputer(strategy={spec.imputer!r})"] + ([f"{scaler}()"] if scaler else [])
    lines = [
        "import os",
        "",
        "import pandas as pd",
        f"from sklearn.{spec.module} import {spec.estimator}",
        "from sklearn.impute import SimpleImputer",
        "from sklearn.pipeline import make_pipeline",
        *([f"from sklearn.preprocessing import {scaler}"] if scaler else []),
        "",
        "",
        "def main():",
        "    path = os.environ.get('PUBLIC_RESOURCE_PATH')",
        "    train = pd.read_csv(os.path.join(path, 'train.csv'))",
        "    test = pd.read_csv(os.path.join(path, 'test.csv'))",
        "    sample = pd.read_csv(os.path.join(path, 'sample_submission.csv'))",
        "    id_col, cols = sample.columns[0], list(sample.columns[1:])",
        "    target = [c for c in train.columns if c not in test.columns][0]",
        "    data = pd.concat([train.drop(columns=[target]), test]).drop(columns=[id_col])",
        "    data = pd.get_dummies(data, dtype=float)",
        "    X, X_test, y = data.iloc[:len(train)], data.iloc[len(train):], train[target]",
        f"    prep = [{', '.join(prep)}]",
        model_line(spec),
        "    model.fit(X, y)",
        "    sub = pd.DataFrame({id_col: test[id_col]})",
        _PREDICT[spec.mode],
        "    sub.to_csv('submission.csv', index=False)",
        "",
        "",
        "if __name__ == '__main__':",
        "    main()",
    ]
    return "\n".join(lines)


def reply(code: str) -> str:
    """The assistant reply the env parses (MLEEnv / greedy_search.extract_code): one python fence."""
    return f"```python\n{code}\n```"


# ----------------------------------------------------------------------------------------------- bugs

# Misspelt keyword arguments: estimators reject unknown keywords when they are built (TypeError).
_TYPOS = {"C": "c", "alpha": "alphas", "n_estimators": "n_estimator", "max_depth": "maxdepth",
          "learning_rate": "lr", "max_iter": "iterations", "n_neighbors": "k", "weights": "weight"}


def _swap(code: str, old: str, new: str) -> str:
    if old not in code:
        raise ValueError(f"bug injection expects {old!r} in the script; the template and BUGS disagree.")
    return code.replace(old, new, 1)


def _drop_line(code: str, prefix: str) -> str:
    lines = code.split("\n")
    keep = [ln for ln in lines if not ln.startswith(prefix)]
    if len(keep) != len(lines) - 1:
        raise ValueError(f"bug injection expects one line starting with {prefix!r} in the script.")
    return "\n".join(keep)


def _wrong_method(code: str, spec: Spec) -> str:
    if spec.mode == "proba":
        return _swap(code, "model.predict_proba(X_test)", "model.predict(X_test)")
    return _swap(code, "model.predict(X_test)", "model.predict_proba(X_test)")


# Bugs a first draft typically has; each makes the script crash or its submission invalid, on every task.
BUGS: dict[str, Callable[[str, Spec], str]] = {
    "file_name": lambda c, s: _swap(c, "'train.csv'", "'training.csv'"),
    "name_error": lambda c, s: _swap(c, "model.fit(X, y)", "model.fit(X, Y)"),
    "missing_import": lambda c, s: _drop_line(c, f"from sklearn.{s.module} import"),
    "bad_param": lambda c, s: _swap(c, f"{s.params[0][0]}=", f"{_TYPOS[s.params[0][0]]}="),
    "syntax": lambda c, s: _swap(c, model_line(s), model_line(s)[:-1]),
    "wrong_column": lambda c, s: _swap(c, "train[target]", "train['label']"),
    "wrong_method": _wrong_method,
    "no_submission": lambda c, s: _swap(c, "'submission.csv'", "'predictions.csv'"),
}


def inject_bug(spec: Spec, bug: str) -> str:
    """The script of `spec` with bug `bug` (a key of BUGS)."""
    return BUGS[bug](render(spec), spec)


# ------------------------------------------------------------------------------------------- examples


def run_reply(task: Task, make_env: Callable[[Task], Env], code: str) -> dict:
    """Runs `code` as one rollout would (a fresh env, reset, step) and returns the step's info."""
    env = make_env(task)
    env.reset()
    return dict(env.step(reply(code)).info)


def bug_trace(task: Task, make_env: Callable[[Task], Env], code: str) -> str | None:
    """The error trace a failed rollout of `code` stores (training/rollout.py: info["error"]); None when
    the script ran fine. Raises when the run failed for a reason other than the script (a sandbox error,
    a timeout): that trace would teach the model to fix the wrong thing."""
    info = run_reply(task, make_env, code)
    if not info.get("failed"):
        return None
    trace = str(info.get("error", ""))
    # A crash of the script shows a traceback through solution.py (the head may be cut by error_tail).
    if not (trace.startswith("invalid submission:") or '"solution.py", line' in trace):
        raise RuntimeError(f"running a buggy script on MLE task {task.id!r} failed outside the script: "
                           f"{trace[:300]!r}")
    return trace


def _conversation(task: Task, make_env, code: str, goal: str, trace: str = "") -> list:
    env = make_env(task)
    # The previous iterate as evaluation and training read it back out of the reply (trailing newline).
    code = greedy_search.extract_code(reply(code))
    return greedy_search.iterate_conversation(env.reset(), task, code, goal, trace, env)


def make_example(task: Task, make_env: Callable[[Task], Env], rng: np.random.Generator, kind: str,
                 traces: dict | None = None) -> Example | None:
    """One example of `kind` on `task`; None when a drawn bug did not make the script fail.

    traces: optional cache {(task id, buggy code): error trace or None}, so a corpus pays one sandbox
    run per distinct buggy script.
    """
    mode = task_mode(task)
    spec = sample_spec(rng, mode)
    if kind == "attempt":
        return Example(list(make_env(task).reset()), reply(render(spec)), kind)
    if kind == "improve":  # training and greedy search improve only iterates that ran (else: debug)
        new = improve_spec(spec, rng)
        return Example(_conversation(task, make_env, render(spec), kind), reply(render(new)), kind)
    if kind == "diverge":  # ExIt also diverges from failed iterates; the diverge prompt shows no trace
        previous = inject_bug(spec, _draw_bug(rng)) if rng.random() < DIVERGE_FROM_BUGGY else render(spec)
        return Example(_conversation(task, make_env, previous, kind), reply(render(diverge_spec(spec, rng))),
                       kind)
    if kind != "debug":
        raise ValueError(f"example kind must be one of {sorted(DEFAULT_MIX)}, got {kind!r}.")
    code = inject_bug(spec, _draw_bug(rng))
    traces = {} if traces is None else traces
    key = (task.id, code)  # the same script can fail with a task-specific message (shapes, columns)
    if key not in traces:
        traces[key] = bug_trace(task, make_env, code)
    if traces[key] is None:
        return None
    return Example(_conversation(task, make_env, code, "debug", traces[key]), reply(render(spec)), kind)


def _draw_bug(rng: np.random.Generator) -> str:
    return str(rng.choice(sorted(BUGS)))


def examples(tasks: Sequence[Task], make_env: Callable[[Task], Env], rng: np.random.Generator, n: int,
             mix: dict | None = None, traces: dict | None = None) -> list[Example]:
    """n examples over `tasks` (uniform), kinds drawn from `mix` (default DEFAULT_MIX).

    Debug examples run their buggy script in the env's sandbox (~0.05-1 s each: most bugs fail before
    fitting), so they need bwrap; leave "debug" out of `mix` where the sandbox cannot run. Examples are
    built task by task (then put back in draw order), so a warm sandbox pool with fewer data dirs than
    `tasks` starts each task's sandboxes once. Pass the same `traces` dict to later calls to reuse runs.
    """
    if not tasks:
        raise ValueError("mle_corpus.examples needs at least one task.")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(DEFAULT_MIX))
    if unknown or not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix must give non-negative weights over {sorted(DEFAULT_MIX)}, got {mix}.")
    kinds = sorted(mix)
    p = np.asarray([mix[k] for k in kinds], np.float64)
    traces = {} if traces is None else traces
    out: list[Example] = []
    misses = 0
    while len(out) < n:  # rounds: a debug draw whose bug ran without error is drawn again
        need = n - len(out)
        plan = [(int(rng.integers(len(tasks))), kinds[int(rng.choice(len(kinds), p=p / p.sum()))])
                for _ in range(need)]
        seeds = rng.integers(2**63, size=need)  # one stream per example: the result is order-independent
        made: list = [None] * need
        for i in sorted(range(need), key=lambda i: plan[i][0]):
            t, kind = plan[i]
            made[i] = make_example(tasks[t], make_env, np.random.default_rng(seeds[i]), kind, traces)
        out += [ex for ex in made if ex is not None]
        misses += made.count(None)
        if misses > 100 + n:  # every bug is meant to fail; a loop here is a bug
            raise RuntimeError("mle_corpus: injected bugs keep running without error; check BUGS.")
    return out
