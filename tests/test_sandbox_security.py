"""The sandbox attacked the way a reward-hacking or buggy solution would: every attack must be contained,
the host process unharmed and nothing left running. Resource bombs run only after a bounded probe of the
same limit has passed (an escaped bomb would freeze the shared machine)."""
import ctypes
import os
import socket

import psutil
import pytest

from exit_jax.envs.mle import sandbox

pytestmark = pytest.mark.skipif(not sandbox.bwrap_available(), reason="bwrap cannot create namespaces here")

_PR_SET_CHILD_SUBREAPER = 36
CFG = sandbox.SandboxConfig(time_limit_s=5, memory_mb=256, nproc=16, fsize_mb=8, disk_mb=32)


def _job_processes():
    """Live processes of sandboxed jobs that this test process started. Only our own descendants count:
    another pytest-xdist worker may be running sandboxed jobs of its own at the same moment, under uids from
    the same range. As a child subreaper (below) we inherit any orphan that left its sandbox's namespace, so
    an escaped daemon would still be our descendant."""
    lo, hi = sandbox._UID_RANGE
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if lo <= p.uids().real <= hi and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:  # ended between the listing and the look
            pass
    return found


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    (root / "public").mkdir()
    (root / "public" / "train.csv").write_text("id,x,y\n1,0.5,1\n")
    (root / "private").mkdir()
    (root / "private" / "answers.csv").write_text("id,y\n1,SECRET_ANSWER_4242\n")
    return root


@pytest.fixture(scope="module")
def box(data_dir):
    with sandbox.WarmSandbox(str(data_dir / "public"), CFG) as b:
        yield b


@pytest.fixture(autouse=True)
def nothing_left_running():
    yield
    assert _job_processes() == [], "a sandboxed process outlived its run"


def test_network_is_unreachable_even_loopback(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import socket
for addr in [("127.0.0.1", {port}), ("8.8.8.8", 53), ("::1", {port})]:
    try:
        socket.create_connection(addr, timeout=1); print("CONNECTED", addr)
    except OSError as e:
        print("blocked", type(e).__name__)
"""
    r = box.run_python(code)
    assert r.ok and "CONNECTED" not in r.stdout and r.stdout.count("blocked") == 3
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()


def test_host_files_private_answers_and_env_are_invisible(box, data_dir, tmp_path):
    secret_file = tmp_path / "host_secret.txt"
    secret_file.write_text("HOST_SECRET_1337")
    os.environ["EXIT_JAX_TEST_SECRET"] = "ENV_SECRET_99"
    try:
        code = f"""
import os, sys
skip = ("/proc", "/usr", "/dev", "/sys", sys.base_prefix)
hits = []
for top, dirs, files in os.walk("/"):
    if top.startswith(skip) or "site-packages" in top or "/lib/python" in top:
        dirs[:] = []
        continue
    for f in files:
        try:
            data = open(os.path.join(top, f), "rb").read(1 << 20)
        except OSError:
            continue
        if any(m in data for m in (b"SECRET_ANSWER_4242", b"HOST_SECRET_1337", b"ENV_SECRET_99")):
            hits.append(os.path.join(top, f))
print("HITS", hits)
for p in [{str(secret_file)!r}, {str(data_dir / "private" / "answers.csv")!r}, "/etc/passwd", "/root/.bashrc"]:
    print(p, os.path.exists(p))
print("ENV", "EXIT_JAX_TEST_SECRET" in os.environ, os.environ.get("EXIT_JAX_TEST_SECRET"))
try:
    print(open("/proc/1/environ", "rb").read())
except OSError as e:
    print("environ blocked", type(e).__name__)
"""
        r = box.run_python(code)
    finally:
        del os.environ["EXIT_JAX_TEST_SECRET"]
    out = r.stdout
    assert r.ok, r.stderr
    assert "HITS []" in out and "True" not in out and "ENV_SECRET_99" not in out and "environ blocked" in out


def test_bundled_datasets_are_hidden(box):
    r = box.run_python("from sklearn.datasets import load_digits\nload_digits()\n")
    assert r.returncode != 0 and ("FileNotFoundError" in r.stderr or "No such file" in r.stderr)


def test_writes_outside_the_work_dir_fail(box, data_dir):
    code = """
import os, sys
targets = [os.environ["PUBLIC_RESOURCE_PATH"] + "/train.csv", os.environ["PUBLIC_RESOURCE_PATH"] + "/new.csv",
           "/usr/x", "/x", "/sbx/x", "/sbx/jobs/x", os.path.dirname(sys.executable) + "/x", "/etc/x"]
for t in targets:
    try:
        open(t, "a").write("pwned")
        print("WROTE", t)
    except OSError as e:
        print("blocked", t)
open("ok.txt", "w").write("fine")
"""
    r = box.run_python(code)
    assert r.ok and "WROTE" not in r.stdout and r.outputs["ok.txt"] == b"fine"
    assert sorted(os.listdir(data_dir / "public")) == ["train.csv"]
    assert (data_dir / "public" / "train.csv").read_text() == "id,x,y\n1,0.5,1\n"


def test_fork_limit_probe_then_fork_bomb(box):
    probe = """
import os, time
made = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    made += 1
print("made", made)
"""
    r = box.run_python(probe)
    made = int(r.stdout.split()[-1])
    assert 0 < made < CFG.nproc  # bounded probe: RLIMIT_NPROC holds for the job's uid
    assert _job_processes() == []  # the sleeping children were killed when the run ended
    r = box.run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                       time_limit_s=2)
    assert r.timed_out and r.reason in ("timeout", "cpu")
    assert box.run_python("print('alive')").stdout == "alive\n"


def test_memory_probe_then_bombs(box):
    probe = """
blocks = []
try:
    for i in range(64):
        blocks.append(bytearray(16 << 20))
except MemoryError:
    pass
print("MB", 16 * len(blocks))
"""
    r = box.run_python(probe)
    assert r.ok and int(r.stdout.split()[-1]) <= CFG.memory_mb  # bounded probe: RLIMIT_DATA holds
    r = box.run_python("x = bytearray(4 << 30)\n")
    assert r.returncode != 0 and "MemoryError" in r.stderr
    # Shared anonymous maps escape RLIMIT_DATA; the supervisor's summed-PSS watchdog catches them.
    r = box.run_python("import mmap\nm = []\nwhile True:\n    x = mmap.mmap(-1, 32 << 20)\n"
                       "    x.write(b'x' * (32 << 20))\n    m.append(x)\n")
    assert r.returncode != 0
    assert r.reason == "memory" or "Cannot allocate memory" in r.stderr or "MemoryError" in r.stderr


def test_busy_loop_and_sleep_hit_the_wall_clock(box):
    r = box.run_python("while True:\n    pass\n", time_limit_s=1)
    assert r.timed_out and r.returncode < 0 and 0.9 < r.runtime_s < 3
    r = box.run_python("import time\ntime.sleep(60)\n", time_limit_s=1)
    assert r.timed_out and r.reason == "timeout" and r.runtime_s < 3


def test_double_forked_daemon_does_not_outlive_the_run(box):
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
    os._exit(0)
time.sleep(0.3)
print("parent done")
"""
    r = box.run_python(code)
    assert r.ok and r.stdout == "parent done\n"
    assert _job_processes() == []


def test_killing_the_parent_and_everyone_fails(box):
    code = """
import os, signal
for target in [os.getppid(), 1, -1]:
    try:
        os.kill(target, signal.SIGKILL)
        print("signalled", target)
    except OSError as e:
        print("blocked", target, type(e).__name__)
"""
    r = box.run_python(code)
    # kill(-1) is allowed but reaches only the job's own processes (itself excluded by the kernel).
    assert "signalled %d" % 1 not in r.stdout and "blocked 1" in r.stdout
    assert box.run_python("print('worker alive')").stdout == "worker alive\n"


def test_proc_shows_only_the_sandbox(box):
    host_cmdline = open("/proc/self/cmdline", "rb").read()  # this pytest process, as /proc shows it
    code = f"""
import os
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("N", len(pids))
cmds = []
for p in pids:
    try:
        cmds.append(open(f"/proc/{{p}}/cmdline", "rb").read())
    except OSError:
        pass
print("HOST PROCESS" if {host_cmdline!r} in cmds else "clean")
try:
    open("/proc/2/mem", "rb").read(1)
    print("READ SUPERVISOR")
except OSError:
    print("mem blocked")
"""
    r = box.run_python(code)
    assert r.ok and "clean" in r.stdout and "mem blocked" in r.stdout
    assert int(r.stdout.split("N ")[1].split()[0]) < 10


def test_pid_1_shows_no_host_path(box, data_dir):
    r = box.run_python("print(open('/proc/1/cmdline', 'rb').read().replace(b'\\0', b' ').decode())")
    assert r.ok and r.stdout.startswith("bwrap --args ")
    assert str(data_dir) not in r.stdout and sandbox.ROOT_PREFIX not in r.stdout and "/sbx/warm_worker.py" in r.stdout


def test_system_calls_a_breakout_needs_are_refused(box):
    code = """
import ctypes, errno, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
for name, call in [("unshare", lambda: libc.unshare(CLONE_NEWUSER)),
                   ("unshare net", lambda: libc.unshare(CLONE_NEWNET)),
                   ("ptrace", lambda: libc.ptrace(16, os.getppid(), 0, 0)),  # PTRACE_ATTACH
                   ("keyctl", lambda: libc.syscall(250, 0, 0, 0, 0, 0)),
                   ("bpf", lambda: libc.syscall(321, 0, 0, 0)),
                   ("io_uring_setup", lambda: libc.syscall(425, 1, 0)),
                   ("perf_event_open", lambda: libc.syscall(298, 0, 0, -1, -1, 0))]:
    rc = call()
    print(name, "refused" if rc == -1 and ctypes.get_errno() == errno.EPERM else f"rc={rc} errno={ctypes.get_errno()}")
print("threads", subprocess.run(["python3", "-c", "import threading; t = threading.Thread(target=print, args=('ok',)); "
                                 "t.start(); t.join()"], capture_output=True, text=True).stdout.strip())
"""
    r = box.run_python(code)
    assert r.ok, r.stderr
    lines = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
    assert lines == {"unshare": "refused", "unshare net": "refused", "ptrace": "refused", "keyctl": "refused",
                     "bpf": "refused", "io_uring_setup": "refused", "perf_event_open": "refused", "threads": "ok"}


def test_huge_stdout_keeps_only_the_tail(box):
    r = box.run_python("import sys\nfor i in range(200000):\n    sys.stdout.write('x' * 250 + '\\n')\n"
                       "print('THE END')\n", time_limit_s=5)
    assert r.ok and len(r.stdout.encode()) <= CFG.tail_bytes and r.stdout.endswith("THE END\n")


def test_filling_the_disk_is_stopped(box):
    r = box.run_python("open('big.bin', 'wb').write(b'0' * (64 << 20))\n")
    # RLIMIT_FSIZE is 8 MB (Python ignores SIGXFSZ, so the write fails with EFBIG instead of a signal).
    assert r.returncode != 0 and "File too large" in r.stderr
    assert len(r.outputs.get("big.bin", b"")) <= CFG.fsize_mb << 20
    r = box.run_python("import os\ni = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(os.urandom(4 << 20))\n"
                       "    i += 1\n", time_limit_s=5)
    assert r.reason == "disk"


def test_symlinks_and_fifos_do_not_leak_host_files(box, tmp_path):
    secret = tmp_path / "host_only.txt"
    secret.write_text("HOST_ONLY_CONTENT")
    code = f"""
import os
os.symlink({str(secret)!r}, "submission.csv")
os.symlink("/proc/self/environ", "env.txt")
os.mkfifo("pipe.csv")
try:
    os.link("/sbx/warm_worker.py", "hard.txt")
except OSError as e:
    print("hardlink blocked")
"""
    r = box.run_python(code)
    assert r.ok
    assert r.outputs == {} or all(b"HOST_ONLY" not in v for v in r.outputs.values())
    assert "submission.csv" not in r.outputs and "pipe.csv" not in r.outputs


def test_cold_run_is_contained_too(data_dir):
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\nprint(os.getuid() != 0)\n"
    r = sandbox.run_python(code, data_dir=str(data_dir / "public"), time_limit_s=5, config=CFG)
    assert r.ok and r.stdout == "True\n" and not r.warm
    assert _job_processes() == []


def test_sysv_shared_memory_does_not_carry_over_between_runs(box):
    code = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
shmid = libc.shmget(0x5EC12E7, 4096, {flags})
print("SHM", shmid, ctypes.get_errno())
"""
    first = box.run_python(code.format(flags="0o1000 | 0o666"))  # IPC_CREAT
    assert first.ok and int(first.stdout.split()[1]) >= 0
    second = box.run_python(code.format(flags="0o666"))  # look the segment up only
    assert second.ok and int(second.stdout.split()[1]) == -1  # ENOENT: removed with the first run
