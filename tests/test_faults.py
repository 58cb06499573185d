"""Faults a long run meets: damaged checkpoints are skipped (never trained on, never deleted), a run that
stops learning stops, and impossible settings are refused in one sentence."""
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest

from exit_jax.curriculum.config import preset
from exit_jax.rl import learner as learner_lib
from exit_jax.rl.learner import LearnerConfig
from exit_jax.envs import domains
from exit_jax.training import checkpointing, loop
from exit_jax.training.metrics import MetricsWriteError, read_metrics
from exit_jax.sampling.text_policy import SamplingConfig
from test_training import SMOKE_LEARNER as LEARNER, SMOKE_SAMPLING as SAMPLING, _stable as _stable_records


@pytest.fixture(scope="module")
def math_domain():
    return domains.math_domain(num_train=24, num_eval=4, levels=(1, 2))


def _train(workdir, domain, learner=LEARNER, iterations=4, **run):
    cfg = loop.RunConfig(workdir=str(workdir), num_iterations=iterations, prompts_per_iteration=2, group_size=4,
                         checkpoint_every=2, keep_checkpoints=2, progress=False, **run)
    return loop.train(cfg, "smoke", domain, preset("math", "grpo"), learner, SAMPLING)


def _stable(workdir):
    return _stable_records(read_metrics(str(workdir)))


def _largest_state_file(step_dir):
    files = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(step_dir, "state")) for n in names]
    return max(files, key=os.path.getsize)


def _host_file(step_dir):
    files = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(step_dir, "host")) for n in names]
    return max(files, key=os.path.getsize)


def _flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(os.urandom(64))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {  # what a disk, a copy or a person can do to the newest checkpoint
    "random bytes in an array file": lambda step: _flip_bytes(_largest_state_file(step)),
    "truncated array file": lambda step: _truncate(_largest_state_file(step)),
    "deleted array file": lambda step: os.remove(_largest_state_file(step)),
    "truncated host JSON": lambda step: _truncate(_host_file(step)),
    "deleted manifest, then garbled host JSON": lambda step: (
        os.remove(os.path.join(step, checkpointing.MANIFEST)), _flip_bytes(_host_file(step))),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, math_domain):
    ref = tmp_path_factory.mktemp("ref")
    _train(ref, math_domain)
    assert sorted(os.listdir(ref / "checkpoints")) == ["2", "4"]
    assert os.path.exists(ref / "checkpoints" / "4" / checkpointing.MANIFEST)  # sealed when closed
    return ref


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_exactly(
        tmp_path, math_domain, uninterrupted, damage, caplog):
    work = tmp_path / "run"
    shutil.copytree(uninterrupted, work)
    DAMAGE[damage](str(work / "checkpoints" / "4"))
    with caplog.at_level(logging.WARNING, logger="exit_jax.training.checkpointing"):
        _train(work, math_domain, iterations=5)
    warning = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warning) == 1 and "iteration 4" in warning[0], warning
    # Nothing is lost: the damaged step is set aside, the good one was restored and is still there.
    assert os.listdir(work / "checkpoints_rejected") == ["4"]
    assert sorted(os.listdir(work / "checkpoints"), key=int) == ["4", "5"]
    # Iterations 3-4 were retrained from iteration 2's checkpoint: the first 4 match the clean run's.
    assert _stable(work)[:4] == _stable(uninterrupted)


def test_checkpoints_of_non_finite_states_are_refused_and_bad_settings_named(tmp_path, math_domain):
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"), max_to_keep=2)
    params = {"w": jnp.ones((3,))}
    state = learner_lib.init_state(params, LEARNER)
    ckpt.save(1, state, {"iteration": 1})
    bad = state._replace(params={"w": jnp.array([1.0, jnp.nan, 1.0])})
    with pytest.raises(ValueError, match=r"Refusing to checkpoint iteration 2: \['params'\]\['w'\] is not finite"):
        ckpt.save(2, bad, {"iteration": 2})
    ckpt.close()
    assert os.listdir(tmp_path / "c") == ["1"]
    with pytest.raises(ValueError, match="keep at least 2"):
        checkpointing.Checkpointer(str(tmp_path / "d"), max_to_keep=1)
    with pytest.raises(ValueError, match="learning_rate=inf must be a finite number"):
        LearnerConfig(learning_rate=float("1e999"))
    for kappa in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="kappa must be a finite number > 0"):
            preset("math", "exit", overrides={"kappa": kappa})
    run = loop.RunConfig(workdir=str(tmp_path / "greedy"), num_iterations=1, prompts_per_iteration=2, group_size=4)
    with pytest.raises(ValueError, match="temperature=0 samples greedily"):
        loop.train(run, "smoke", math_domain, preset("math", "grpo"), LEARNER,
                   SamplingConfig(max_new_tokens=16, temperature=0.0))


def test_a_run_whose_updates_are_all_skipped_stops_with_one_sentence(tmp_path, math_domain):
    """lr 1e30 with weight decay: the first step scales the params by ~-1e29, every later forward pass
    overflows and its step is skipped (a KL term keeps every row in the loss)."""
    learner = LearnerConfig(learning_rate=1e30, weight_decay=0.1, kl_beta=0.01, warmup_steps=0)
    with pytest.raises(loop.NonFiniteUpdates, match=r"iterations 2-3 skipped every optimizer step .* "
                                                    r"lower the learning rate \(now 1e\+30\)"):
        _train(tmp_path, math_domain, learner, iterations=6, max_skipped_iterations=2)
    assert len(read_metrics(str(tmp_path))) == 2  # the iterations before it were logged
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.domains.math_domain.num_train=24",
       "--gin.loop.train.evaluate=None", "--gin.loop.RunConfig.checkpoint_every=2"]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """The launcher's environment: one compilation cache for every run of this module."""
    return dict(os.environ, JAX_PLATFORMS="cpu", EXIT_JAX_COMPILATION_CACHE=str(tmp_path_factory.mktemp("xla")))


def _launch(workdir, env, iterations: int) -> subprocess.CompletedProcess:
    """`launch/train.py` as a user runs it (a full disk is met in its own process, with orbax's threads)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"), *CLI,
                           f"--gin.NUM_ITERATIONS={iterations}", f"--gin.WORKDIR='{workdir}'"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def _tmpfs(path, size: int):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root and mount rights)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _one_sentence(proc: subprocess.CompletedProcess, pattern: str) -> None:
    """The run failed with exit code 1, its last line is `pattern`'s sentence and nothing printed a
    traceback (orbax's failed writer threads, tensorstore writes in flight, train.log on the full disk)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert re.fullmatch(pattern, proc.stderr.strip().splitlines()[-1]), out[-3000:]
    assert "Traceback" not in out and "Logging error" not in out, out[-6000:]


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_sentence(tmp_path, cli_env):
    """WORKDIR on a 400 kB tmpfs: the first checkpoint (~1 MB) cannot be written; the run stops within
    the next iteration (not one save later) with one sentence naming the iteration and the directory."""
    with _tmpfs(tmp_path / "small", 400 << 10) as small:
        proc = _launch(small / "run", cli_env, iterations=8)
        _one_sentence(proc, r"error: writing the (checkpoint|metrics) of iteration 2 to .*/run(/checkpoints)? "
                            r"failed .*rerun the same command: the checkpoints before it are intact\.")
        assert 2 <= len(read_metrics(str(small / "run"))) <= 4


def _tree_bytes(path):
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names)


@pytest.mark.slow
def test_a_disk_that_fills_after_a_checkpoint_keeps_that_checkpoint(tmp_path, cli_env):
    """WORKDIR on a tmpfs with room for one checkpoint, not two: the run stops in one sentence (the second
    checkpoint's write, or the metrics written beside it, whichever meets the full disk first) and the first
    checkpoint stays whole (it verifies)."""
    reference = _launch(tmp_path / "reference", cli_env, iterations=2)
    assert reference.returncode == 0, reference.stderr[-3000:]
    one = _tree_bytes(tmp_path / "reference" / "checkpoints" / "2")
    with _tmpfs(tmp_path / "small", int(one * 1.5) + (256 << 10)) as small:
        proc = _launch(small / "run", cli_env, iterations=8)
        _one_sentence(proc, r"error: writing the (checkpoint|metrics) of iteration [34] to .* failed .*intact\.")
        ckpt = checkpointing.Checkpointer(str(small / "run" / "checkpoints"), max_to_keep=2)
        assert ckpt.verify_files(2) is None and os.path.exists(small / "run" / "checkpoints" / "2" /
                                                                checkpointing.MANIFEST)
        ckpt.close()


def test_metrics_on_a_full_disk_end_in_one_sentence(tmp_path):
    from exit_jax.training.metrics import MetricsWriter
    with _tmpfs(tmp_path / "small", 64 << 10) as small:
        writer = MetricsWriter(str(small))
        with pytest.raises(MetricsWriteError, match=r"writing the metrics of iteration \d+ to .* failed \(No space "
                                                    r"left on device\); free space .* intact"):
            for it in range(1000):
                writer.write(it, {f"metric_{i}": float(i) for i in range(100)})
        writer.close()  # a full disk at close must not raise over the error that ended the run


_SAVER = """
import sys
import jax.numpy as jnp
from exit_jax.rl import learner
from exit_jax.training import checkpointing
ckpt = checkpointing.Checkpointer(sys.argv[1], max_to_keep=2)
state = learner.init_state({"w": jnp.zeros((1 << 21,))}, learner.LearnerConfig())  # 8 MB a copy, 3 copies
found = ckpt.restore_latest(state, {})
step = found[2] if found else 0
print("ready", step, flush=True)
while True:
    step += 1
    ckpt.save(step, state._replace(params={"w": jnp.full((1 << 21,), float(step))}), {"iteration": step})
    print("saved", step, flush=True)  # orbax writes it in the background; the next save seals it
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_of_saving_loses_no_sealed_checkpoint(tmp_path):
    """Six rounds: a process saves checkpoints back to back and is SIGKILLed at a random moment; each
    restart restores the newest checkpoint that reads back whole (at least the last sealed one), with the
    values of its step, and nothing is set aside as damaged."""
    import random
    import time
    rng = random.Random(0)
    directory = str(tmp_path / "checkpoints")
    sealed = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, directory], stdout=subprocess.PIPE, text=True)
        ready, restored = proc.stdout.readline().split()
        assert ready == "ready" and int(restored) >= sealed
        time.sleep(rng.uniform(0.0, 3.0))
        proc.kill()
        lines = proc.communicate()[0].split()
        saved = [int(n) for n in lines[1::2]]
        sealed = max([sealed] + [s - 1 for s in saved])  # the save of s sealed s - 1
    ckpt = checkpointing.Checkpointer(directory, max_to_keep=2)
    state = learner_lib.init_state({"w": jnp.zeros((1 << 21,))}, LearnerConfig())
    restored, host, step = ckpt.restore_latest(state, {})
    ckpt.close()
    assert step >= sealed > 0 and host["iteration"] == step
    assert float(restored.params["w"].min()) == float(restored.params["w"].max()) == step
    assert not os.path.exists(directory + "_rejected")
