"""The process that runs model-written solutions, from inside the sandbox (stdlib only).

`sandbox.py` starts this file under bwrap (or, on explicit opt-in, as a plain subprocess). It reads one JSON
job per line on stdin and answers one JSON line per job. For each job it forks a child that enters the job's
fresh directory, sets its own rlimits, drops to the job's unprivileged uid and runs `solution.py` with
`runpy`. Started with `--preload numpy,pandas,sklearn` it imports those once, so every child inherits them
already imported: that is the fast path (a fork costs milliseconds, a cold `python` + imports about a
second). With `--once` it runs a single job and exits (the cold path).

This file cannot import exit_jax: only it, the interpreter and the public data are mounted in the sandbox.
Why the worker, not the child, stays root (inside bwrap, with only CAP_SETUID/SETGID/KILL/SYS_PTRACE): a solution
running as the same uid as its supervisor could ptrace it or signal it and so tamper with later jobs.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import runpy
import selectors
import signal
import sys
import time
import traceback

_POLL_S = 0.05  # how often the supervisor checks memory, disk and the clock
_CHECK_EVERY_S = 0.2  # disk usage walks are slower: do them less often
_MAX_FILES = 20000  # inode exhaustion guard: more files than this in the job dirs counts as "disk"
_PR_SET_NO_NEW_PRIVS = 38


def _tail_append(buf: bytearray, chunk: bytes, limit: int) -> None:
    buf += chunk
    if len(buf) > limit:
        del buf[: len(buf) - limit]


def _proc_table() -> list[tuple[int, int, int, str]]:
    """(pid, real uid, rss kB, state) of every visible process."""
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        uid = int(fields.get("Uid", "-1 ").split()[0])
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        state = fields.get("State", "?").strip()[:1]
        rows.append((int(name), uid, rss, state))
    return rows


def _own_status() -> dict:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k.startswith("Vm")}


def _pss_kb(pid: int) -> int:
    """Proportional set size: pages shared with the warm worker (copy-on-write after fork) count only in
    part, so a solution that forks is not charged the preloaded libraries once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _job_memory_kb(uid: int | None, root_pid: int) -> int:
    """Total PSS of the job: every process of its uid (or just the child when no uid is used)."""
    return sum(_pss_kb(pid) for pid, puid, _, state in _proc_table()
               if state != "Z" and ((uid is not None and puid == uid) or (uid is None and pid == root_pid)))


def _mount_points() -> set:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return {line.split()[4] for line in f if len(line.split()) > 4}
    except OSError:
        return set()


def _disk_usage(paths: list[str]) -> tuple[int, int]:
    """(bytes, files) under `paths`, not following symlinks; stops counting past _MAX_FILES.

    Mount points below them are skipped: they are read-only binds (a project or venv under /tmp), not
    what the job wrote."""
    size = files = 0
    stack = list(paths)
    skip = _mount_points() - set(paths)
    while stack and files <= _MAX_FILES:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            files += 1
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.path not in skip:
                        stack.append(e.path)
                else:
                    size += e.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    return size, files


def _kill_job(pid: int, uid: int | None, in_pidns: bool) -> dict:
    """Kills the child's process group and every other process the job started (double-forked daemons
    included); returns when none is left alive, with the exit statuses it reaped ({pid: status})."""
    reaped = {}
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    for _ in range(200):
        if in_pidns:
            # Inside our own pid namespace kill(-1) reaches everything but init (bwrap) and ourselves.
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            alive = [p for p, _, _, s in _proc_table() if p not in (1, me) and s != "Z"]
        elif uid is not None:
            # No pid namespace (unsafe fallback): kill(-1) as the job's uid reaches only that uid.
            helper = os.fork()
            if helper == 0:
                try:
                    os.setresuid(uid, uid, uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(helper, 0)
            alive = [p for p, u, _, s in _proc_table() if u == uid and s != "Z"]
        else:
            return reaped  # same uid as us and no pid namespace: the process group is all we can reach
        _reap(reaped)
        if not alive:
            return reaped
        time.sleep(0.01)
    return reaped


def _remove_sysv_ipc(uid: int) -> None:
    """Deletes the System V shared memory, semaphores and message queues the job created: unlike its
    processes they outlive it, and would carry data (or hold memory) into the next run of a warm worker.
    Runs as the job's uid, so it can only ever remove the job's own objects."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setresuid(uid, uid, uid)
            libc = ctypes.CDLL(None, use_errno=True)
            for kind, rm in (("shm", lambda i: libc.shmctl(i, 0, None)), ("sem", lambda i: libc.semctl(i, 0, 0)),
                             ("msg", lambda i: libc.msgctl(i, 0, None))):  # 0 = IPC_RMID
                try:
                    with open(f"/proc/sysvipc/{kind}") as f:
                        ids = [int(line.split()[1]) for line in list(f)[1:] if line.strip()]
                except OSError:
                    continue
                for i in ids:
                    rm(i)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


def _reap(into: dict) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        into[pid] = status


def _child(job: dict, out_w: int, err_w: int) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 1 << 16)  # the protocol pipes must not reach the solution
        mb = 1 << 20
        limits = {
            resource.RLIMIT_CPU: (job["cpu_s"], job["cpu_s"] + 2),  # SIGXCPU first, SIGKILL 2 s later
            # On top of what the supervisor (and, warm, its preloaded libraries) already holds at the fork.
            resource.RLIMIT_DATA: (job["base_data_kb"] * 1024 + job["memory_mb"] * mb,) * 2,
            # Address space: generous on top of DATA, to stop shared anonymous maps that DATA misses.
            resource.RLIMIT_AS: ((job["base_vm_kb"] >> 10) + job["memory_mb"] + job["as_headroom_mb"]) * mb,
            resource.RLIMIT_FSIZE: (job["fsize_mb"] * mb,) * 2,
            resource.RLIMIT_NPROC: (job["nproc"],) * 2,  # enforced because the child is not root
            resource.RLIMIT_CORE: (0, 0),
            resource.RLIMIT_NOFILE: (256, 256),
        }
        for what, value in limits.items():
            resource.setrlimit(what, value if isinstance(value, tuple) else (value, value))
        uid = job.get("uid")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.chdir(job["dir"])  # after the uid drop: the supervisor has no CAP_DAC_OVERRIDE for the 0700 dir
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.environ.clear()
        os.environ.update(job["env"])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python process: BrokenPipeError instead
        sys.argv = [job["script"]]
        sys.path[0] = job["dir"]
        try:
            runpy.run_path(job["script"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException as e:
            # Show the trace as `python solution.py` would: from the solution's own frames on.
            tb = e.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != job["script"]:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb)
            code = 1
    except BaseException:  # a failure while entering the sandbox: report it, never fall back into the loop
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 126
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF if code >= 0 else 1)


def run_job(job: dict) -> dict:
    """Forks, supervises and cleans up one solution run; returns the reply dict."""
    status_now = _own_status()
    job = {**job, "base_data_kb": status_now["VmData"], "base_vm_kb": status_now["VmSize"]}
    base_pss_kb = _pss_kb(os.getpid())
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(job, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    tail = job["tail_bytes"]
    bufs = {out_r: bytearray(), err_r: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = start + job["time_limit_s"]
    uid = job.get("uid")
    status = None
    reason = ""
    next_check = start
    while status is None:
        for key, _ in sel.select(timeout=_POLL_S):
            try:
                chunk = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            if chunk:
                _tail_append(bufs[key.fd], chunk, tail)
            else:
                sel.unregister(key.fd)
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        now = time.monotonic()
        if now >= deadline:
            reason = "timeout"
            break
        if now >= next_check:
            next_check = now + _CHECK_EVERY_S
            if _job_memory_kb(uid, pid) > job["memory_mb"] * 1024 + base_pss_kb:
                reason = "memory"
                break
            used, files = _disk_usage(job["disk_paths"])
            if used > job["disk_mb"] * (1 << 20) or files > _MAX_FILES:
                reason = "disk"
                break
    runtime = time.monotonic() - start
    reaped = _kill_job(pid, uid, job["in_pidns"])
    if uid is not None:
        _remove_sysv_ipc(uid)
    if status is None:
        status = reaped[pid] if pid in reaped else os.waitpid(pid, 0)[1]
    for fd in list(bufs):
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                _tail_append(bufs[fd], chunk, tail)
        except OSError:
            pass
        os.close(fd)
    sel.close()
    if os.WIFSIGNALED(status):
        rc = -os.WTERMSIG(status)
        if not reason and os.WTERMSIG(status) == signal.SIGXCPU:
            reason = "cpu"
        elif not reason and os.WTERMSIG(status) == signal.SIGXFSZ:
            reason = "file_size"
    else:
        rc = os.WEXITSTATUS(status)
    return {
        "returncode": rc,
        "timed_out": reason in ("timeout", "cpu"),
        "reason": reason,
        "runtime_s": runtime,
        "stdout": bufs[out_r].decode("utf-8", "replace"),
        "stderr": bufs[err_r].decode("utf-8", "replace"),
    }


def main(argv: list[str]) -> None:
    preload = []
    once = "--once" in argv
    if "--preload" in argv:
        preload = [m for m in argv[argv.index("--preload") + 1].split(",") if m]
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of imported libraries must not corrupt the protocol
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    for name in preload:
        try:
            __import__(name)
        except ImportError as e:
            print(f"warm_worker: could not preload {name}: {e}", file=sys.stderr)
    proto.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        proto.write(json.dumps(run_job(json.loads(line))) + "\n")
        if once:
            break


if __name__ == "__main__":
    main(sys.argv[1:])
