"""Several processes (multi-host) on one CPU machine: two processes of `launch/train.py` with 2 devices
each, joined by jax.distributed over gloo, train exactly as one process with 4 devices does, and each
samples and grades only its half of the groups. (Multi-turn rounds split over processes:
tests/test_rollout.py; a multi-turn domain here would take minutes.)"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.NUM_ITERATIONS=2",
        "--gin.domains.math_domain.num_train=24", "--gin.learner.LearnerConfig.parallel='fsdp'",
        "--gin.loop.train.evaluate=None"]
TIMING = ("time/", "throughput/")


def _train(workdir: str, devices: int, processes: int = 1, extra: tuple = ()) -> list:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
    return [subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "train.py"), *ARGS, *extra,
                              f"--gin.WORKDIR='{workdir}'"], cwd=ROOT, env=dict(env, JAX_PROCESS_ID=str(i)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i in range(processes)]


def _metrics(workdir: str) -> list:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _checkpoint(workdir: str) -> tuple[dict, dict]:
    step = os.path.join(workdir, "checkpoints", "2")
    with open(os.path.join(step, "host", "metadata")) as f:
        host = json.load(f)
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(os.path.join(step, "state")).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return host, checkpointer.restore(os.path.join(step, "state"), restore_args=as_numpy)["params"]


@pytest.mark.slow
def test_two_processes_train_as_one_with_half_the_rollouts_each(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    procs = _train(one, devices=4) + _train(two, devices=2, processes=2)
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), [log[-3000:] for log in logs]

    want, got = _metrics(one), _metrics(two)  # written once, by the first process
    assert [m["iteration"] for m in got] == [0, 1]
    for w, g in zip(want, got):
        assert sorted(w) == sorted(g)
        for key in w:
            if isinstance(w[key], str):
                assert g[key] == w[key], key
            elif not key.startswith(TIMING):
                np.testing.assert_allclose(g[key], w[key], rtol=1e-4, atol=1e-5, err_msg=key)
    host_one, params_one = _checkpoint(one)
    host_two, params_two = _checkpoint(two)
    assert host_two["buffer"] == host_one["buffer"] and host_two["instances_seen"] == host_one["instances_seen"]
    for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_two), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)

    # Each process sampled and graded its half of the 4 groups, in both iterations.
    shares = []
    for name in ("train.log", "train.process1.log"):
        with open(os.path.join(two, name)) as f:
            shares.append(re.findall(r"process (\d) of 2 samples and grades groups (\d)-(\d) of 4", f.read()))
    assert shares == [[("1", "0", "1")] * 2, [("2", "2", "3")] * 2]
    assert not os.path.exists(os.path.join(one, "train.process1.log"))
    print("rollout s per iteration: one process", [round(m["time/rollout_s"], 2) for m in want],
          "two processes", [round(m["time/rollout_s"], 2) for m in got])


@pytest.mark.slow
def test_a_stop_signal_to_one_process_stops_both_after_the_same_iteration(tmp_path):
    workdir = str(tmp_path / "run")
    procs = _train(workdir, devices=2, processes=2, extra=["--gin.NUM_ITERATIONS=50",
                                                          "--gin.loop.RunConfig.checkpoint_every=100"])
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and os.path.getsize(metrics)) and time.time() < deadline:
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # the second process only, as a preempted host might
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, [log[-2000:] for log in logs]
    done = len(_metrics(workdir))
    assert 1 <= done < 50 and os.listdir(os.path.join(workdir, "checkpoints")) == [str(done)]
    assert f"another process received a stop signal: stopped after iteration {done}" in logs[0]
    assert f"SIGTERM received: stopped after iteration {done}" in logs[1]
