"""A run directory in a bucket (gs://), against a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py):
checkpoints go straight to the bucket, the small files through a local working copy; a run killed with
SIGKILL resumes on an empty disk from the bucket alone, with the metrics of an uninterrupted run."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--gin_file=math.gin", "--gin_file=smoke.gin", "--gin.NUM_ITERATIONS=3",
        "--gin.domains.math_domain.num_train=24", "--gin.loop.train.evaluate=None",
        "--gin.loop.RunConfig.checkpoint_every=1"]
TIMING = ("time/", "throughput/")


@pytest.fixture
def bucket_env(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), str(port), "bucket"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    # gcsfs and orbax's paths read STORAGE_EMULATOR_HOST, tensorstore TENSORSTORE_GCS_HTTP_URL (with a
    # test token instead of Google credentials).
    # One compilation cache for every run (each gets its own empty HOME): the resumed run compiles nothing.
    yield dict(os.environ, JAX_PLATFORMS="cpu", STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator", EXIT_JAX_COMPILATION_CACHE=str(tmp_path / "xla"))
    server.kill()
    server.wait()


def _train(workdir: str, env: dict, home: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "train.py"), *ARGS, *extra,
                             f"--gin.WORKDIR='{workdir}'"], cwd=ROOT, env=dict(env, HOME=home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stable(lines: list) -> list:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMING)} for line in lines]


@pytest.mark.slow
def test_a_run_in_a_bucket_killed_resumes_on_an_empty_disk_with_identical_metrics(tmp_path, bucket_env):
    reference = _train(str(tmp_path / "local"), bucket_env, str(tmp_path / "home0"))
    first = _train("gs://bucket/run", bucket_env, str(tmp_path / "home1"))
    # The local working copy of the first machine: kill it once it has trained an iteration.
    from exit_jax import storage
    os.environ["HOME"], home = str(tmp_path / "home1"), os.environ.get("HOME", "")
    try:
        metrics = os.path.join(storage.local_copy("gs://bucket/run"), "metrics.jsonl")
    finally:
        os.environ["HOME"] = home
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.2)  # two iterations: the first one's checkpoint is in the bucket, sealed
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert reference.wait(timeout=600) == 0

    # Another machine, its disk empty: only the bucket holds the run. It also evaluates at the end.
    resumed = _train("gs://bucket/run", bucket_env, str(tmp_path / "home2"),
                     "--gin.loop.train.evaluate=@evaluate.evaluate_and_report")
    log = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from iteration 1 " in log or "resumed from iteration 2 " in log, log[-3000:]
    assert "done: gs://bucket/run" in log

    reader = subprocess.run([sys.executable, "-c", (
        "import fsspec, sys; fs = fsspec.filesystem('gs'); sys.stdout.write(fs.cat_file("
        "'bucket/run/metrics.jsonl').decode()); print('\\n' + ' '.join(sorted(fs.ls('bucket/run'))))")],
        env=bucket_env, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    listing = reader[-1].split()
    with open(tmp_path / "local" / "metrics.jsonl") as f:
        assert _stable(reader[:-2]) == _stable(f.read().splitlines())
    for name in ("checkpoints", "config.gin", "metrics.jsonl", "tb", "train.log", "eval.json", "curriculum.png"):
        assert f"bucket/run/{name}" in listing, listing


def test_a_checkpoint_in_a_bucket_loads_as_from_disk(tmp_path, bucket_env):
    """MODEL=gs://…: the checkpoint is fetched once into a local cache, then loaded as a local one."""
    fixture = os.path.join(ROOT, "tests", "fixtures", "parity", "llama_gqa_tied")
    script = f"""
import fsspec, jax, numpy as np
from exit_jax import models, storage
fsspec.filesystem("gs").put({fixture!r}, "bucket/models/tiny", recursive=True)
remote, local = models.load("gs://bucket/models/tiny"), models.load({fixture!r})
for a, b in zip(jax.tree.leaves(remote.params), jax.tree.leaves(local.params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
assert remote.tokenizer.encode("hello world") == local.tokenizer.encode("hello world")
print(storage.fetch("gs://bucket/models/tiny"))
"""
    out = subprocess.run([sys.executable, "-c", script], env=dict(bucket_env, HOME=str(tmp_path)), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    cached = out.stdout.strip().splitlines()[-1]
    assert cached.startswith(str(tmp_path)) and os.path.exists(os.path.join(cached, "model.safetensors"))
