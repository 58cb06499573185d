"""The sandbox's functional contract: files in and out, clean environment, fresh dirs, exit codes, the warm
worker's speed and restart, and back-end selection. Attacks are in test_sandbox_security.py."""
import concurrent.futures
import logging
import os
import statistics
import sys
import time

import pytest

from exit_jax.envs.mle import bwrap, sandbox

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")
CFG = sandbox.SandboxConfig(time_limit_s=10, memory_mb=512)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("public")
    (d / "train.csv").write_text("id,x\n1,2\n")
    os.chmod(d, 0o755)
    return str(d)


@pytest.fixture(scope="module")
def box(data_dir):
    with sandbox.WarmSandbox(data_dir, CFG) as b:
        yield b


IO_CODE = """
import os, sys
print(open(os.path.join(os.environ["PUBLIC_RESOURCE_PATH"], "train.csv")).read().strip())
os.mkdir("sub")
open("sub/inner.csv", "w").write("no")
open("submission.csv", "w").write("id,y\\n1,0\\n")
print("numpy preloaded", "numpy" in sys.modules)
print("ENV", sorted(os.environ))
print("THREADS", os.environ["OMP_NUM_THREADS"], os.environ["JAX_PLATFORMS"], os.environ["HF_HUB_OFFLINE"])
"""


@needs_bwrap
@pytest.mark.parametrize("warm", [True, False])
def test_files_in_and_out_and_clean_env(box, data_dir, warm):
    r = box.run_python(IO_CODE) if warm else sandbox.run_python(IO_CODE, data_dir=data_dir, config=CFG)
    assert r.ok and r.backend == "bwrap" and r.warm == warm, r.stderr
    assert r.stdout.splitlines()[0] == "id,x"
    assert f"numpy preloaded {warm}" in r.stdout
    assert r.outputs == {"submission.csv": b"id,y\n1,0\n"}  # top-level files only, solution.py excluded
    env = eval(r.stdout.split("ENV ")[1].splitlines()[0])
    assert set(env) == set(sandbox._base_env("/", "/", "/x"))
    assert "THREADS 1 cpu 1" in r.stdout


@needs_bwrap
def test_each_run_gets_a_fresh_dir_and_tmp(box):
    box.run_python("open('left.txt', 'w').write('x')\nopen('/tmp/left.txt', 'w').write('x')\n")
    r = box.run_python("import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))\n")
    # Only the directories that carry binds of a venv or checkout living under /tmp (as in CI) remain.
    skeleton = sorted({m.split(os.sep)[0] for m in bwrap.tmp_mounts()})
    assert r.stdout == f"['solution.py'] {skeleton}\n"


@needs_bwrap
def test_exit_codes_and_traces(box):
    assert box.run_python("import sys\nsys.exit(3)\n").returncode == 3
    r = box.run_python("def f():\n    raise ValueError('boom')\nf()\n")
    assert r.returncode == 1 and not r.ok
    assert r.stderr.startswith("Traceback") and 'File "solution.py", line 3' in r.stderr
    assert "warm_worker" not in r.stderr  # the supervisor's own frames are cut from the trace
    r = box.run_python("def f(:\n")
    assert r.returncode == 1 and "SyntaxError" in r.stderr
    r = box.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert r.returncode == -15


@needs_bwrap
def test_warm_overhead_beats_cold_and_worker_restarts(box, data_dir):
    box.run_python("pass")
    warm = []
    for _ in range(5):
        t = time.perf_counter()
        box.run_python("import numpy, pandas, sklearn")
        warm.append(time.perf_counter() - t)
    t = time.perf_counter()
    sandbox.run_python("import numpy, pandas, sklearn", data_dir=data_dir, config=CFG)
    cold = time.perf_counter() - t
    assert statistics.median(warm) < cold
    os.killpg(box._worker.proc.pid, 9)  # the worker dies between runs: the next run starts a new one
    box._worker.proc.wait()
    assert box.run_python("print('again')").stdout == "again\n"


@needs_bwrap
def test_pool_keys_workers_by_data_dir(data_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "only_here.csv").write_text("z\n")
    code = "import os\nprint(sorted(os.listdir(os.environ['PUBLIC_RESOURCE_PATH'])))\n"
    with sandbox.WarmPool(CFG, max_workers=1) as pool:
        assert pool.run_python(code, data_dir).stdout == "['train.csv']\n"
        first_root = next(iter(pool._boxes.values()))[0]._worker.root
        assert pool.run_python(code, str(other)).stdout == "['only_here.csv']\n"
        assert len(pool._boxes) == 1 and not os.path.exists(first_root)  # evicted worker cleaned up
        last_root = next(iter(pool._boxes.values()))[0]._worker.root
    assert not os.path.exists(last_root)


@needs_bwrap
def test_pool_runs_concurrently_with_several_workers_per_dir(data_dir):
    with sandbox.WarmPool(CFG, workers_per_dir=2) as pool:
        pool.run_python("pass", data_dir)  # start the first worker outside the timing
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda _: pool.run_python("pass", data_dir), range(2)))  # start the second
            t = time.perf_counter()
            runs = list(ex.map(lambda _: pool.run_python("import time\ntime.sleep(1.5)", data_dir), range(2)))
            wall = time.perf_counter() - t
    assert all(r.ok for r in runs) and wall < 2.8  # overlapping, not 2 x 1.5 s in turn


def test_backend_selection_never_silently_unsafe(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "bwrap_available", lambda: False)
    with pytest.raises(RuntimeError, match="unsafe_subprocess"):
        sandbox.resolve_backend(sandbox.SandboxConfig())
    with caplog.at_level(logging.WARNING):
        cfg = sandbox.SandboxConfig(backend="unsafe_subprocess", time_limit_s=10)
        r = sandbox.run_python("import os\nprint(os.getuid() != 0 or os.geteuid() != 0 or 'root')\n", config=cfg)
    assert r.ok and r.backend == "unsafe_subprocess", r.stderr
    assert "UNSAFE" in caplog.text
    if os.geteuid() == 0 and sandbox._others_can_read(sys.base_prefix):
        assert r.stdout == "True\n"  # even unisolated, the solution runs under an unprivileged uid


def test_unsafe_backend_still_enforces_limits():
    cfg = sandbox.SandboxConfig(backend="unsafe_subprocess", time_limit_s=1)
    r = sandbox.run_python("import time\ntime.sleep(30)\n", config=cfg)
    assert r.timed_out and r.runtime_s < 5


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        sandbox.SandboxConfig(backend="docker")
    with pytest.raises(ValueError, match="memory_mb"):
        sandbox.SandboxConfig(memory_mb=0)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        sandbox.run_python("pass", data_dir=str(tmp_path / "missing"),
                           config=sandbox.SandboxConfig(backend="unsafe_subprocess"))


def test_directories_of_killed_runs_are_swept(tmp_path):
    """A trainer killed with SIGKILL leaves its sandbox's host directories; the next run removes those
    whose owner is gone, and never a live process's."""
    import subprocess
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{sandbox.ROOT_PREFIX}{dead.pid}_abc"
    live = tmp_path / f"{sandbox.ROOT_PREFIX}{os.getppid()}_def"
    other = tmp_path / "exit_jax_sbx_notapid"
    for d in (stale, live, other):
        (d / "jobs").mkdir(parents=True)
    assert sandbox.sweep_stale_roots(str(tmp_path)) == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()
