"""The bwrap back end of the MLE sandbox: the command line that builds its namespaces and mounts.

    /sbx/data            the task's public files, read-only      (PUBLIC_RESOURCE_PATH)
    /sbx/jobs/<random>   the run's fresh work dir (cwd), owned by the run's unprivileged uid
    /sbx/warm_worker.py  the supervisor (stdlib only)
    /tmp                 a per-sandbox scratch dir, emptied after every run
    /usr, the Python prefix and the venv, read-only; dataset files shipped inside packages are hidden

Everything inside runs under a seccomp filter (`seccomp_program`) that refuses the system calls a data
science job never makes and a breakout would (new namespaces, mounts, tracing, kernel keyrings, BPF, perf,
io_uring, modules, clocks). bwrap reads its options from a memfd (`--args`), so the sandbox's pid 1 shows
no host path in /proc/1/cmdline.

`exit_jax.envs.mle.sandbox` runs it; see there for the supervisor, the limits and the threat model.
"""
from __future__ import annotations

import errno
import functools
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from typing import Mapping

from exit_jax.envs.mle import warm_worker

DATA_MOUNT = "/sbx/data"
JOBS_MOUNT = "/sbx/jobs"
WORKER_MOUNT = "/sbx/warm_worker.py"


def package_data_paths() -> list[str]:
    """Dataset files shipped inside installed packages: MLE-lite carves its hidden answers from them, so a
    solution must not be able to reload them (e.g. `sklearn.datasets.load_digits()`)."""
    paths = []
    for pkg, pattern in (("sklearn", "datasets/data"), ("palmerpenguins", "data"),
                         ("statsmodels", "datasets/*/*.csv")):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            paths += sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], pattern)))
    return paths


def options(data_dir: str, jobs_dir: str, tmp_dir: str, env: Mapping[str, str],
            hide_package_data: bool = True) -> list:
    """bwrap's options for the layout in the module doc: `env` as the whole environment, the package data
    files hidden when `hide_package_data`, /sbx as the working directory."""
    prefix, base = os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)
    ro = [(p, p) for p in dict.fromkeys([base, prefix, sys.prefix]) if not p.startswith("/usr/")]
    argv = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv"]
    if os.geteuid() == 0:
        # The supervisor keeps only what it needs to drop to the job's uid, kill it, and read its memory
        # use (smaps_rollup of a non-dumpable process needs CAP_SYS_PTRACE). Children lose all of them.
        argv += ["--cap-drop", "ALL"] + [a for c in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_PTRACE")
                                          for a in ("--cap-add", c)]
    argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin", "--proc", "/proc", "--dev", "/dev",
             # /tmp first: binds below it (a project or venv that lives under /tmp) must go on top of it.
             "--bind", tmp_dir, "/tmp"]
    made = {"/", "/usr", "/tmp"}
    # bwrap creates missing parents 0700 when run as root; the job's uid must be able to traverse them.
    for _, dst in ro + [("", "/sbx/x")]:
        parts = dst.split("/")
        for i in range(2, len(parts)):
            anc = "/".join(parts[:i])
            if anc not in made:
                made.add(anc)
                argv += ["--perms", "0755", "--dir", anc]
    for src, dst in ro:
        argv += ["--ro-bind", src, dst]
    if hide_package_data:
        for p in package_data_paths():
            argv += ["--tmpfs", p] if os.path.isdir(p) else ["--ro-bind", "/dev/null", p]
    argv += ["--ro-bind", os.path.abspath(warm_worker.__file__), WORKER_MOUNT,
             "--ro-bind", data_dir, DATA_MOUNT, "--bind", jobs_dir, JOBS_MOUNT]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return argv + ["--chdir", "/sbx"]


def supervisor(python: str, worker_args: list) -> list:
    """The command bwrap runs: the supervisor with `worker_args`."""
    return [os.path.abspath(python), "-I", WORKER_MOUNT] + worker_args


# Refused with EPERM: no job needs them, a breakout starts with them. Names libseccomp does not know on
# this machine are skipped.
BLOCKED_SYSCALLS = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "iopl", "ioperm", "vhangup", "uselib", "personality", "nfsservctl")
# clone() with any of these flags makes a namespace (CLONE_NEWNS ... CLONE_NEWNET, CLONE_NEWTIME).
_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
                    0x00000080)


@functools.lru_cache(maxsize=None)
def seccomp_program() -> bytes:
    """The filter as the BPF program bwrap's `--seccomp` loads (built with libseccomp, via pyseccomp)."""
    try:
        import pyseccomp as sc
        rules = sc.SyscallFilter(defaction=sc.ALLOW)
    except (ImportError, OSError, RuntimeError) as e:
        raise RuntimeError(f"the sandbox's seccomp filter needs libseccomp ({e}); install libseccomp2, or set "
                           "SandboxConfig.seccomp=False to run without it") from None
    for name in BLOCKED_SYSCALLS:
        try:
            rules.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):
            pass
    for flag in _NAMESPACE_FLAGS:
        rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes glibc fall back to clone.
    rules.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("seccomp")
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            rules.export_bpf(f)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def command(opts: list, program: list, seccomp: bool = True) -> tuple[list, tuple]:
    """(argv, fds to pass) for `bwrap` with `opts` and `program`: the options travel in a memfd, the
    seccomp program in another. The caller closes the fds once the process has started."""
    fds = []
    def memfd(data: bytes) -> str:
        fd = os.memfd_create("bwrap")
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        fds.append(fd)
        return str(fd)
    extra = ["--seccomp", memfd(seccomp_program())] if seccomp else []
    args = memfd(b"".join(a.encode() + b"\0" for a in opts + extra))
    return ["bwrap", "--args", args] + program, tuple(fds)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether bwrap can create its namespaces here (Ubuntu 24.04's AppArmor may forbid it)."""
    if shutil.which("bwrap") is None:
        return False
    try:
        r = subprocess.run(["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
                            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                            "--symlink", "usr/lib64", "/lib64", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def tmp_mounts() -> tuple:
    """Read-only binds that lie under /tmp (a venv or checkout there), relative to /tmp."""
    roots = dict.fromkeys(os.path.realpath(p) for p in (sys.base_prefix, sys.prefix))
    return tuple(os.path.relpath(p, "/tmp") for p in roots if p.startswith("/tmp/"))


def empty_dir(path: str, mounts: tuple = ()) -> None:
    """Deletes what a job left in `path`, but not the directories that carry the sandbox's binds: deleting
    a mount point on the host unmounts it inside the sandbox (Linux >= 3.18), which would pull the venv
    out from under a warm worker."""
    for e in os.scandir(path):
        rel = os.path.relpath(e.path, path)
        inner = tuple(os.path.relpath(m, rel) for m in mounts if m.startswith(rel + os.sep))
        if rel in mounts:
            continue
        if inner and e.is_dir(follow_symlinks=False):
            empty_dir(e.path, inner)
        elif e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            try:
                os.unlink(e.path)
            except OSError:
                pass
