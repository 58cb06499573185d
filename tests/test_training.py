"""End-to-end training: every method on smoke settings, resume exactness, launcher errors."""
import dataclasses
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from exit_jax import models
from exit_jax.curriculum import buffer
from exit_jax.curriculum.config import preset
from exit_jax.rl import learner as learner_lib, parallel
from exit_jax.rl.learner import LearnerConfig
from exit_jax.envs import domains
from exit_jax.training import loop
from exit_jax.training.checkpointing import CheckpointMismatchError
from exit_jax.training.metrics import read_metrics
from exit_jax.sampling.text_policy import SamplingConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_SAMPLING = SamplingConfig(max_new_tokens=16, max_prompt_tokens=512)
SMOKE_LEARNER = LearnerConfig(learning_rate=1e-3, warmup_steps=0)
# Wall-clock and throughput figures differ between runs; everything else must match exactly.
VOLATILE = ("time/", "throughput/")


@pytest.fixture(scope="module")
def math_domain():
    return domains.math_domain(num_train=24, num_eval=4, levels=(1, 2))


def _run(workdir, domain, method, iterations, sampling=SMOKE_SAMPLING, **overrides):
    curriculum = preset(domain.name, method, overrides={"b_min": 4, "capacity": 32}
                        if method != "grpo" else None)
    run = loop.RunConfig(workdir=str(workdir), num_iterations=iterations, prompts_per_iteration=2,
                         group_size=4, progress=False, **overrides)
    return loop.train(run, "smoke", domain, curriculum, SMOKE_LEARNER, sampling)


def _stable(records):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


FAMILIES = {  # the tiny smoke model with each family's switches; 16-token windows, far shorter than the rows
    "mistral": dict(family="mistral", sliding_window=16, layer_types=("sliding_attention",) * 2),
    "gemma2": dict(family="gemma2", sliding_window=16, layer_types=("sliding_attention", "full_attention"),
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=16),
    "gemma3_text": dict(family="gemma3_text", sliding_window=16, layer_types=("sliding_attention", "full_attention"),
                        query_pre_attn_scalar=16, rope_theta=1e6, rope_local_theta=1e4,
                        rope_scaling=models.RopeScaling(factor=8.0, rope_type="linear")),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_a_smoke_run_and_resumes_exactly(tmp_path, math_domain, family):
    """Two iterations of GRPO with a tiny random model of each family (sliding windows binding, soft-caps,
    sandwich and q/k norms, local RoPE), then two more after a resume: the same records as four in a row."""
    from exit_jax.models.smoke import smoke_lm
    corpus = [m["content"] for t in math_domain.train_tasks for m in math_domain.make_env(t).reset()]
    config = dataclasses.replace(models.preset("tiny"), **FAMILIES[family])
    lm = smoke_lm(corpus, str(tmp_path / "tokenizer"), config=config)

    def train(workdir, iterations):
        run = loop.RunConfig(workdir=str(workdir), num_iterations=iterations, prompts_per_iteration=2,
                             group_size=4, checkpoint_every=2, progress=False)
        return loop.train(run, lm, math_domain, preset("math", "grpo"), SMOKE_LEARNER, SMOKE_SAMPLING)

    train(tmp_path / "straight", 4)
    train(tmp_path / "resumed", 2)
    train(tmp_path / "resumed", 4)
    records = read_metrics(str(tmp_path / "straight"))
    assert len(records) == 4 and all(np.isfinite(r["learner/loss"]) for r in records)
    assert records[0]["rollout/mean_prompt_tokens"] > 16  # the windows bind
    assert _stable(read_metrics(str(tmp_path / "resumed"))) == _stable(records)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["grpo", "curriculum", "improve", "diverge", "exit"])
def test_every_method_trains_and_fills_the_buffer(tmp_path, math_domain, method):
    _run(tmp_path, math_domain, method, iterations=4)
    records = read_metrics(str(tmp_path))
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    for key in ("reward/mean", "learner/loss", "learner/kl", "rollout/completion_tokens",
                "curriculum/buffer_size", "time/iteration_s"):
        assert key in records[-1], key
    assert os.listdir(tmp_path / "checkpoints")
    replay = [r["curriculum/replay_fraction"] for r in records]
    if method == "grpo":
        assert all(r["curriculum/buffer_size"] == 0 for r in records) and not any(replay)
    else:
        # Self-iteration stores every rollout (2 groups x 4); Curriculum stores each starting point once.
        first = records[0]["curriculum/buffer_size"]
        assert first == (records[0]["curriculum/distinct_tasks_in_episodes"] if method == "curriculum" else 8)
        assert replay[0] == 0.0  # replay only once the buffer holds B_min = 4 entries
        assert any(replay)
    if method in ("improve", "diverge", "exit"):
        assert max(r["curriculum/episode_depth"] for r in records) > 0  # improve steps happened
    if method == "curriculum":
        assert all(r["curriculum/episode_depth"] == 0 for r in records)
    if method == "exit":
        assert records[-1]["advantage/multiplier_mean"] > 0


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path, math_domain):
    _run(tmp_path / "full", math_domain, "exit", iterations=4)
    _run(tmp_path / "split", math_domain, "exit", iterations=2)
    _run(tmp_path / "split", math_domain, "exit", iterations=4)  # resumes at iteration 2
    full, split = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "split"))
    assert _stable(full) == _stable(split)


def test_fsdp_run_samples_from_the_sharded_params_like_a_single_device_run(tmp_path, math_domain):
    """parallel="fsdp" on the 4 fake devices (4 x 1 and 2 x 2 data x tensor meshes), layers scanned: the
    sampler splits the prompts over the learner's mesh and reads its sharded params in place; the run
    computes what one device computes."""
    out = {}
    fsdp = dataclasses.replace(SMOKE_LEARNER, parallel="fsdp", scan_layers=True)
    for name, learner in (("single", SMOKE_LEARNER), ("fsdp", fsdp),
                          ("fsdp_tensor", dataclasses.replace(fsdp, tensor_parallel=2))):
        run = loop.RunConfig(workdir=str(tmp_path / name), num_iterations=2, prompts_per_iteration=2,
                             group_size=4, progress=False)
        loop.train(run, "smoke", math_domain, preset("math", "grpo"), learner, SMOKE_SAMPLING)
        out[name] = read_metrics(str(tmp_path / name))
    for a, b, c in zip(out["single"], out["fsdp"], out["fsdp_tensor"]):
        for x in (b, c):  # the 2 x 2 (data x tensor) mesh too
            assert a["rollout/completion_tokens"] == x["rollout/completion_tokens"]
            assert a["reward/mean"] == x["reward/mean"]
            np.testing.assert_allclose(a["learner/loss"], x["learner/loss"], rtol=1e-4, atol=1e-7)
    # What the fsdp policy is given: the learner's sharded params cast in place, never a host copy.
    cfg = dataclasses.replace(SMOKE_LEARNER, parallel="fsdp", scan_layers=True)
    mesh = parallel.make_mesh()
    state = parallel.place_state(learner_lib.init_state({"layers_0": {"w": np.ones((2, 8, 4), np.float32)}},
                                                        cfg), cfg, mesh)
    params = parallel.sampler_params(state.params, np.dtype("bfloat16"), mesh)
    w = params["layers_0"]["w"]
    assert w.dtype == np.dtype("bfloat16") and w.sharding.spec == parallel.P(None, learner_lib.AXIS)


def test_sampled_token_budget_stops_the_run_and_survives_resume(tmp_path, math_domain):
    """Equal compute across methods: the run stops once the sampled completion tokens reach the
    budget, whatever NUM_ITERATIONS says; a rerun with a larger budget resumes and goes on."""
    _run(tmp_path, math_domain, "grpo", iterations=50, sampled_token_budget=100)
    records = read_metrics(str(tmp_path))
    totals = [r["rollout/sampled_tokens_total"] for r in records]
    assert totals == list(np.cumsum([r["rollout/completion_tokens"] for r in records]))
    assert totals[-1] >= 100 and (len(totals) == 1 or totals[-2] < 100) and len(totals) < 50
    _run(tmp_path, math_domain, "grpo", iterations=50, sampled_token_budget=totals[-1] + 1)
    more = read_metrics(str(tmp_path))
    assert len(more) == len(records) + 1 and _stable(more[:-1]) == _stable(records)


def test_the_update_compiles_once_ahead_of_its_batch_while_the_rollout_runs(tmp_path, math_domain, caplog):
    """One model call per rollout: the batch's layout is known before the rollout, so the update compiles
    on another thread while the sampler runs, and the update's own call reuses that executable."""
    sampling = dataclasses.replace(SMOKE_SAMPLING, min_bucket=256)  # one layout for every iteration
    jax.config.update("jax_log_compiles", True)  # global: a config context would not reach the thread
    try:
        with caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
            _run(tmp_path, math_domain, "grpo", iterations=2, sampling=sampling)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r for r in caplog.records if "XLA compilation of jit(update_step)" in r.getMessage()]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]
    assert compiles[0].threadName != threading.main_thread().name
    assert len(read_metrics(str(tmp_path))) == 2


def test_checkpoint_from_another_config_is_refused(tmp_path, math_domain):
    _run(tmp_path, math_domain, "exit", iterations=1)
    with pytest.raises(CheckpointMismatchError, match="different run"):
        _run(tmp_path, math_domain, "improve", iterations=2)


def test_host_state_round_trip():
    state = buffer.init(4)
    state, _ = buffer.insert(state, [{"task_id": "a", "turns": [{"response": "x"}]}], [0.25],
                             task_id=[7], depth=[1], turn=[1], parent=[-1], created_at=3)
    host = loop.HostState(3, state, frozenset({"k1", "k2"}), sampled_tokens=11)
    saved = json.loads(json.dumps(host.to_json({"model": "m"})))
    back = loop.HostState.from_json(saved)
    assert (back.iteration, back.instances_seen, back.sampled_tokens) == (3, host.instances_seen, 11)
    assert buffer.equal(back.buffer, state)
    # A checkpoint of an older version (a generator state, the instances under "seen") still resumes.
    older = {**{k: v for k, v in saved.items() if k != "instances_seen"}, "seen": ["k1", "k2"], "rng": {}}
    old = loop.HostState.from_json(older)
    assert old.instances_seen == back.instances_seen and buffer.equal(old.buffer, state)


def _train_cmd(workdir, *extra):
    return [sys.executable, os.path.join(REPO, "launch", "train.py"), "--gin_file=math.gin",
            "--gin_file=smoke.gin", f"--gin.WORKDIR='{workdir}'", "--gin.domains.math_domain.num_train=24",
            "--gin.loop.RunConfig.prompts_per_iteration=2", *extra]


NO_EVAL = "--gin.loop.train.evaluate=None"
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref")
    subprocess.run(_train_cmd(ref, "--gin.NUM_ITERATIONS=5", NO_EVAL), check=True, env=ENV,
                   capture_output=True, timeout=600)
    return _stable(read_metrics(str(ref)))


def _start_and_signal(workdir, sig, *extra):
    """Starts a 5-iteration run and sends `sig` once two iterations are logged; returns the process."""
    proc = subprocess.Popen(_train_cmd(workdir, "--gin.NUM_ITERATIONS=5", NO_EVAL, *extra), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_metrics(str(workdir))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)  # somewhere inside iteration 2 or 3
    proc.wait(timeout=300)
    return proc


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path, uninterrupted):
    proc = _start_and_signal(tmp_path, signal.SIGKILL, "--gin.loop.RunConfig.checkpoint_every=1")
    assert proc.returncode == -signal.SIGKILL and len(read_metrics(str(tmp_path))) < 5
    subprocess.run(_train_cmd(tmp_path, "--gin.NUM_ITERATIONS=5", NO_EVAL), check=True, env=ENV,
                   capture_output=True, timeout=600)
    assert _stable(read_metrics(str(tmp_path))) == uninterrupted


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_iteration_then_resumes_exactly(tmp_path, uninterrupted):
    # No periodic checkpoint in 5 iterations: whatever the rerun restores, the SIGTERM wrote.
    proc = _start_and_signal(tmp_path, signal.SIGTERM, "--gin.loop.RunConfig.checkpoint_every=100")
    stderr = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    done = len(read_metrics(str(tmp_path)))
    assert 2 <= done < 5 and f"SIGTERM received: stopped after iteration {done}" in stderr
    assert os.listdir(tmp_path / "checkpoints") == [str(done)]
    rerun = subprocess.run(_train_cmd(tmp_path, "--gin.NUM_ITERATIONS=5", NO_EVAL), check=True,
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert f"resumed from iteration {done}" in rerun.stderr
    with open(tmp_path / "train.log", encoding="utf-8") as f:
        assert f"resumed from iteration {done}" in f.read()
    assert _stable(read_metrics(str(tmp_path))) == uninterrupted


@pytest.mark.slow
def test_launcher_trains_evaluates_and_plots(tmp_path):
    out = subprocess.run(_train_cmd(tmp_path, "--gin.NUM_ITERATIONS=2"), capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("config.gin", "metrics.jsonl", "eval.json", "curriculum.png", "train.log"):
        assert (tmp_path / name).exists(), name
    assert "loop.RunConfig.prompts_per_iteration = 2" in (tmp_path / "config.gin").read_text()
    record = json.loads((tmp_path / "eval.json").read_text())
    curve = record["evaluations"]["self_improvement"]["curves"]["accuracy"]
    assert len(curve) == 3  # k = 0, 1, 2 (smoke.gin: K = 2)
    assert any(f.endswith(".png") and f.startswith("eval_") for f in os.listdir(tmp_path))
    # launch/eval.py restores the same run's last checkpoint and evaluates it again, training nothing
    # and deleting nothing (a record past the checkpoint, as a kill leaves, stays).
    (tmp_path / "eval.json").unlink()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 2, "note": "written after the last checkpoint"}) + "\n")
    cmd = _train_cmd(tmp_path, "--gin.NUM_ITERATIONS=2")
    cmd[1] = os.path.join(REPO, "launch", "eval.py")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["iteration"] == 2 and len(read_metrics(str(tmp_path))) == 3
    compare = subprocess.run([sys.executable, os.path.join(REPO, "launch", "eval.py"), "--compare",
                              str(tmp_path), "--out_dir", str(tmp_path / "cmp")],
                             capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert (tmp_path / "cmp" / "comparison.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--gin.loop.RunConfig.no_such_field=1"], "no_such_field"),
    (["--gin_file=nope.gin"], "not found"),
    (["--gin.WORKDIR"], "needs a value"),
    (["--gin.NUM_ITERATONS=3"], "did you mean NUM_ITERATIONS?"),  # a typo must not define a new macro
    (["--gin.sampling.SamplingConfig.temperature=0.5"], "did you mean SamplingConfig?"),  # the wrong module
    (["--gin.curriculum.preset.overrides={'replay_prop': 0.2}"], "did you mean 'replay_prob'?"),
])
def test_bad_gin_gives_one_clear_error(tmp_path, args, message):
    out = subprocess.run(_train_cmd(tmp_path, *args), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--gin_file=smoke.gin"], "goes after a domain file"),  # an overlay alone
    ("eval.py", ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.WORKDIR='{tmp}/no_run'"],
     "holds no checkpoint"),
    ("train.py", ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.WORKDIR='{tmp}/w'",
                  "--gin.NUM_ITERATIONS='abc'"], "a RunConfig setting has the wrong type"),
    ("train.py", ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.WORKDIR='{tmp}/file'"],
     "is a file, not a directory"),
    ("generate.py", ["--model={tmp}/no_such_model"], "is not a preset"),
    ("generate.py", ["--dtype=float8"], "dtype 'float8' is not supported"),
])
def test_launcher_mistakes_end_in_one_sentence(tmp_path, script, args, message):
    (tmp_path / "file").write_text("not a directory")
    cmd = [sys.executable, os.path.join(REPO, "launch", script)] + [a.format(tmp=tmp_path) for a in args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]


def test_missing_required_macro_is_named(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"), "--gin_file=base.gin"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "macro" in out.stderr and "--gin." in out.stderr


@pytest.mark.slow
def test_tool_use_and_mle_domains_train(tmp_path):
    # BFCL prompts keep their function docs whole (5.8-10.2k smoke tokens here): the budget must hold them.
    tool = domains.tool_use_domain(num_train=4, num_eval=2, train_max_responses=3)
    _run(tmp_path / "tool", tool, "exit", iterations=2, filter_invalid_responses=True,
         drop_zero_variance_groups=True,  # tool_use.gin's filter, and DAPO's group dropping on top
         sampling=dataclasses.replace(SMOKE_SAMPLING, max_prompt_tokens=12288))
    records = read_metrics(str(tmp_path / "tool"))
    assert len(records) == 2 and records[-1]["rollout/model_calls"] >= 8
    # The random model rarely closes a call or ends a request: most responses are filtered out; a batch
    # with nothing left trains nothing (loss exactly 0, no step skipped as non-finite).
    for r in records:
        assert 0 < r["rollout/invalid_responses"] <= 1 and r["learner/skipped"] == 0
        assert r["rollout/invalid_responses"] < 1 or r["learner/loss"] == 0
    mle = domains.mle_domain(train_ids=["breast_cancer"], eval_ids=["wine"], time_limit_s=20.0)
    _run(tmp_path / "mle", mle, "improve", iterations=3,  # no divergence: replays improve or debug
         sampling=dataclasses.replace(SMOKE_SAMPLING, max_prompt_tokens=4096))  # the task's whole description
    records = read_metrics(str(tmp_path / "mle"))
    assert len(records) == 3
    # A random model writes no runnable solution: every iterate fails, so replays become debug steps.
    assert records[-1]["reward/mean"] == 0.0
    assert max(r["curriculum/debug_fraction"] for r in records) > 0


def test_ungraded_rollouts_train_nothing_and_are_counted(tmp_path, math_domain):
    """A grader that keeps timing out (here: a 0.1 ms budget) leaves its samples ungraded: they are
    counted, left out of their groups, and never trained on as if they had scored 0."""
    from exit_jax.envs.math import Grader, GraderConfig, MathEnv
    with Grader(GraderConfig(soft_timeout_s=1e-4)) as grader:
        domain = dataclasses.replace(math_domain, make_env=functools.partial(MathEnv, grader=grader))
        _run(tmp_path, domain, "exit", iterations=1)
    record = read_metrics(str(tmp_path))[0]
    assert record["rollout/ungraded"] == 8  # 2 prompts x 4 rollouts; a random model never boxes the answer
    assert record["learner/loss"] == 0.0 and record["reward/mean"] == 0.0


def test_launcher_reports_a_missing_checkpoint_in_one_sentence(tmp_path):
    out = subprocess.run(_train_cmd(tmp_path, f"--gin.MODEL='{tmp_path}/no_such_model'"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no_such_model" in out.stderr.strip().splitlines()[-1]


def test_evaluation_seeds_follow_the_run_seed(tmp_path, math_domain):
    # An untrained policy evaluated under seeds 0 and 1 must sample independently (the study's base rows),
    # and the same seed must give the same evaluation (resume exactness).
    lm = loop.load_model("smoke", math_domain, str(tmp_path))
    policy = loop.TextPolicy(lm, SMOKE_SAMPLING)
    seen = []

    def evaluate(policy, **_):
        seen.append(policy.seed)
        replies = policy.generate([[{"role": "user", "content": "1 + 1 = ?"}]], num_samples=4)
        return {"evaluations": {"e": {"headline": "c", "curves": {"c": ["|".join(replies[0])]}}}}

    def run(seed):
        cfg = loop.RunConfig(workdir=str(tmp_path), num_iterations=0, seed=seed)
        return loop._evaluate(evaluate, policy, lm.params, math_domain, cfg, preset("math", "grpo"), 0)

    first, again, other = run(0), run(0), run(1)
    assert seen == [0, 0, loop.EVAL_SEED_STRIDE] and first == again and first != other


def test_sampling_in_parts_draws_what_one_call_draws(tmp_path, math_domain):
    """SamplingConfig.prompts_per_call bounds the decode's memory; row keys follow the prompt's index, so
    the completions are those of one call over all prompts."""
    lm = loop.load_model("smoke", math_domain, str(tmp_path))
    chats = [math_domain.make_env(t).reset() for t in math_domain.train_tasks[:3]]
    whole = loop.TextPolicy(lm, SMOKE_SAMPLING).sample(lm.params, chats, num_samples=2, seed=7)
    parts = loop.TextPolicy(lm, dataclasses.replace(SMOKE_SAMPLING, prompts_per_call=2)).sample(
        lm.params, chats, num_samples=2, seed=7)
    assert [[c.token_ids for c in row] for row in parts] == [[c.token_ids for c in row] for row in whole]
    assert len({c.token_ids for row in whole for c in row}) > 1
    with pytest.raises(ValueError, match="prompts_per_call"):
        SamplingConfig(prompts_per_call=-1)


def test_an_accelerator_sized_config_started_on_a_cpu_names_the_cpu_sized_one():
    """launch/train.py's CPU notice for the card's `mle.gin` (its failure would be silent: the notice is
    advisory, so the launcher swallows its errors)."""
    import gin
    sys.path.insert(0, os.path.join(REPO, "launch"))
    try:
        import gin_cli
        import train
        gin_cli.parse(gin_cli.parse_args(["--gin_file=mle.gin"], ""))
        notice = train.cpu_notice()
        assert "sized for an accelerator" in notice and "studies/cpu/run.py" in notice
        gin.clear_config()
        gin_cli.parse(gin_cli.parse_args(["--gin_file=quickstart.gin"], ""))
        assert train.cpu_notice() is None
    finally:
        gin.clear_config()
        sys.path.remove(os.path.join(REPO, "launch"))


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(REPO, "gin", "models")) if f != "smoke.gin"))
def test_every_model_gin_file_parses_after_a_domain_file(name):
    """The launchers' parse of `--gin_file=math.gin --gin_file=models/NAME`; its MODEL has a config
    (a preset for hub ids) that launch/compile.py can compile without weights."""
    import gin
    sys.path.insert(0, os.path.join(REPO, "launch"))
    try:
        import gin_cli
        gin_cli.parse(gin_cli.parse_args(["--gin_file=math.gin", f"--gin_file=models/{name}"], ""))
        assert models.load_config(gin.query_parameter("%MODEL")).num_params() > 0
    finally:
        gin.clear_config()
        sys.path.remove(os.path.join(REPO, "launch"))
