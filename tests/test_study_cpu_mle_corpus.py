"""MLE-lite SFT corpus: the scripts run and score through the real env, the bugs really fail, and the
messages are the ones training and evaluation build."""
import functools

import numpy as np
import pytest

from exit_jax.curriculum import episodes
from exit_jax.envs.mle import prompts as mle_prompts
from exit_jax.curriculum.config import CurriculumConfig
from exit_jax.envs.mle import lite, lite_specs, sandbox
from exit_jax.envs.mle.env import MLEEnv, extract_code
from exit_jax.evaluation import greedy_search
from studies.cpu.warm_start import mle_corpus as mc
from studies.cpu.warm_start.example import Example

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")

# One task per way of predicting: labels, P(positive), class probabilities, values with categoricals.
IDS = ("digits", "breast_cancer", "wine", "penguins")
EXCEPTION_OF_BUG = {"file_name": "FileNotFoundError", "name_error": "NameError: name 'Y'",
                    "missing_import": "NameError", "bad_param": "unexpected keyword argument",
                    "syntax": "SyntaxError", "wrong_column": "KeyError: 'label'",
                    "wrong_method": ("IndexError", "AttributeError", "ValueError"),
                    "no_submission": "no submission.csv"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mle_corpus_cache"))


@pytest.fixture(scope="module")
def tasks(cache):
    return {t.id: t.as_task() for t in lite.tasks(IDS, cache_dir=cache)}


@pytest.fixture(scope="module")
def make_env():
    with sandbox.WarmPool(max_workers=len(IDS)) as pool:
        yield functools.partial(MLEEnv, pool=pool, time_limit_s=60)


def _specs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [mc.sample_spec(rng, mode) for _ in range(n) for mode in ("label", "proba", "value")]


def test_scripts_share_one_compact_layout():
    specs = _specs(100)
    assert {s.family for s in specs} == set(mc.FAMILIES) and {s.scaler for s in specs} == set(mc.SCALERS)
    fixed = None
    for spec in specs:
        code = mc.render(spec)
        compile(code, "solution.py", "exec")
        lines = code.split("\n")
        assert len(lines) <= 30 and max(map(len, lines)) <= 130
        assert extract_code(mc.reply(code)) == code + "\n"  # what MLEEnv.step runs
        assert greedy_search.extract_code(mc.reply(code)) == code + "\n"
        assert "if __name__ == '__main__':" in code and "os.environ.get('PUBLIC_RESOURCE_PATH')" in code
        # only the imports, the preprocessing, the model and the prediction line vary
        body = [ln for ln in lines if not ln.startswith(("from sklearn.", "    prep =", "    model =",
                                                            "    sub[cols"))]
        assert body == (fixed := fixed or body)
        assert not any(name in code for name in ("target'", "'id'", "body_mass_g"))  # nothing task-specific


def test_revisions_change_the_script_but_not_the_kind_of_prediction():
    rng = np.random.default_rng(1)
    changed = {"family": 0, "params": 0, "prep": 0}
    for spec in _specs(60):
        new = mc.improve_spec(spec, rng)
        assert new != spec and new.mode == spec.mode and mc.render(new) != mc.render(spec)
        changed["family"] += new.family != spec.family
        changed["params"] += new.family == spec.family and new.params != spec.params
        changed["prep"] += (new.imputer, new.scaler) != (spec.imputer, spec.scaler)
        other = mc.diverge_spec(spec, rng)
        assert other.family != spec.family and other.mode == spec.mode
    assert min(changed.values()) > 10  # improve mixes all three kinds of change


def test_every_bug_changes_the_script():
    for spec in _specs(20):
        clean = mc.render(spec)
        for bug in mc.BUGS:
            code = mc.inject_bug(spec, bug)
            assert code != clean
            if bug != "syntax":
                compile(code, "solution.py", "exec")


def test_task_modes_follow_the_metric(cache):
    modes = {t.id: mc.task_mode(t.as_task()) for t in lite.tasks(cache_dir=cache)}
    assert modes["digits"] == "label" and modes["synth_ordinal"] == "label"
    assert modes["breast_cancer"] == modes["wine"] == modes["synth_multiclass"] == "proba"
    assert modes["penguins"] == modes["diabetes"] == modes["randhie"] == "value"


def _stored_turn(code, failed=False, feedback=""):
    return {"response": code, "depth": 0, "score": 0.5, "failed": failed, "feedback": feedback}


def test_messages_are_what_training_and_evaluation_build(tasks):
    make_env = MLEEnv  # no code runs here
    config = CurriculumConfig(template="mle")
    rng = np.random.default_rng(2)
    seen = set()
    for i in range(24):
        task = tasks[IDS[i % len(IDS)]]
        kind = ("attempt", "improve", "diverge")[i % 3]
        ex = mc.make_example(task, make_env, rng, kind)
        assert isinstance(ex, Example) and ex.kind == kind and extract_code(ex.target)
        opening = MLEEnv(task).reset()
        if kind == "attempt":
            assert ex.messages == opening  # the base task's prompt around the starter script
            continue
        text = ex.messages[-1]["content"]
        assert len(ex.messages) == 1 and mle_prompts.MLE_GOALS[kind] in text
        previous = text.split("```python\n", 1)[1].split("\n```", 1)[0]
        # greedy search (evaluation) and ExIt replay episodes (training) build the same conversation
        assert ex.messages == greedy_search.iterate_conversation(opening, task, previous, kind)
        ep = episodes.replay_episode(task, make_env, config, [_stored_turn(previous)], 1, kind)
        assert ex.messages == list(ep.prompt)
        seen.add(kind)
    assert seen == {"improve", "diverge"}


def test_replayed_iterates_show_the_code_like_greedy_search(tasks):
    task, code = tasks["wine"], mc.render(mc.sample_spec(np.random.default_rng(0), "proba"))
    config = CurriculumConfig(template="mle")
    ep = episodes.replay_episode(task, MLEEnv, config, [_stored_turn(mc.reply(code))], 1, "improve")
    shown = greedy_search.extract_code(mc.reply(code))  # what greedy search reads out of the reply
    assert list(ep.prompt) == greedy_search.iterate_conversation(MLEEnv(task).reset(), task, shown, "improve")


@needs_bwrap
def test_generated_targets_score_through_the_env(tasks, make_env):
    ex = mc.examples(list(tasks.values()), make_env, np.random.default_rng(3), 12,
                     mix={"attempt": 1, "improve": 1, "diverge": 1})
    assert {e.kind for e in ex} == {"attempt", "improve", "diverge"}
    scores = []
    for e in ex:
        task = next(t for t in tasks.values() if t.data["task_description"] in e.messages[-1]["content"])
        env = make_env(task)
        env.reset()
        result = env.step(e.target)
        assert result.info["valid"], (task.id, result.info["error"])
        scores.append(result.reward)
    assert np.mean(np.asarray(scores) > 0) >= 0.75 and np.mean(scores) > 0.5, scores


@needs_bwrap
def test_every_bug_fails_and_debug_examples_show_its_trace(tasks, make_env):
    for task_id in ("wine", "penguins"):  # a classifier with probabilities; a regressor on categoricals
        task = tasks[task_id]
        spec = mc.sample_spec(np.random.default_rng(4), mc.task_mode(task), "forest")
        for bug, expected in EXCEPTION_OF_BUG.items():
            trace = mc.bug_trace(task, make_env, mc.inject_bug(spec, bug))
            found = trace is not None and any(e in trace for e in np.atleast_1d(expected))
            assert found, (task_id, bug, trace)
    traces = {}
    digits = tasks["digits"]
    ex = mc.examples([digits], make_env, np.random.default_rng(5), 3, mix={"debug": 1}, traces=traces)
    assert len(traces) == 3
    for e in ex:
        text = e.messages[-1]["content"]
        shown = text.split("```python\n", 1)[1].split("\n```", 1)[0]  # the code as extract_code gives it
        buggy = shown[:-1]
        trace = traces["digits", buggy]
        opening = MLEEnv(digits).reset()
        assert e.messages == greedy_search.iterate_conversation(opening, digits, shown, "debug", trace)
        ep = episodes.replay_episode(digits, MLEEnv, CurriculumConfig(template="mle"),
                                     [_stored_turn(mc.reply(buggy), True, trace)], 1, "improve")
        assert ep.debug and e.messages == list(ep.prompt)  # a failed iterate is debugged, trace shown
        fixed = extract_code(e.target)
        assert fixed != buggy + "\n" and mc.bug_trace(digits, make_env, fixed) is None


@pytest.mark.slow
@needs_bwrap
def test_every_family_runs_on_every_task(cache):
    all_tasks = [t.as_task() for t in lite.tasks(cache_dir=cache)]
    rng = np.random.default_rng(6)
    with sandbox.WarmPool(max_workers=2) as pool:
        make_env = functools.partial(MLEEnv, pool=pool, time_limit_s=60)
        for task in all_tasks:
            for family in mc.FAMILIES:
                spec = mc.sample_spec(rng, mc.task_mode(task), family)
                info = mc.run_reply(task, make_env, mc.render(spec))
                assert info["valid"], (task.id, family, info["error"])


@needs_bwrap
def test_grammar_scripts_are_valid_on_procedural_tasks_of_every_metric(cache):
    """The warm start's corpus trains on procedural tasks: its targets must be right for every metric."""
    n = len(lite_specs.PROCEDURAL_METRICS)
    procedural = [t.as_task() for t in lite.procedural_tasks(n, seed=9, cache_dir=cache)]
    rng = np.random.default_rng(6)
    with sandbox.WarmPool(max_workers=2) as pool:
        for task in procedural:
            env = MLEEnv(task, pool=pool, time_limit_s=60)
            env.reset()
            code = mc.render(mc.sample_spec(rng, mc.task_mode(task), "linear"))
            result = env.step(mc.reply(code))
            assert result.info["valid"], (task.id, result.info["error"])
