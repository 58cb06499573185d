"""The model's tool calls run in a child process under a time and memory budget.

Why a process: a tool call is model-chosen Python on model-chosen arguments, and some of them run for
minutes inside C code that holds the GIL (`round_number(5, -10**9)` builds 10**(10**9); an `int ** int`
or a huge decimal precision the argument guards in `executor` did not foresee). In the trainer that
stalls every thread. Here the call runs in a worker process; when it takes longer than the budget the
worker is killed and replaced, and the model gets a tool error while the episode goes on.

The parent keeps the rollout's instances: each request carries the one instance that owns the call
(pickled, a few kB) and the reply brings back the result and that instance as the call left it. A call
that is stopped therefore changes nothing, as if it had never run. Ground-truth calls (trusted data) keep
running in-process (`executor.execute_calls`).

Workers are started as `python -m exit_jax.envs.tool_use.isolated`, not with `multiprocessing`, so they
neither fork a process holding jax's threads nor re-import the parent's `__main__`; one is started per
concurrent caller and reused. A worker dies with the trainer (PR_SET_PDEATHSIG), even one stuck in a call:
a kill -9 of the trainer leaves nothing running.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from exit_jax.envs.tool_use import executor

DEFAULT_TIME_LIMIT_S = 5.0  # BFCL's tools answer in milliseconds; a budget of seconds only stops runaways
MEMORY_LIMIT_MB = 2048  # address space of a worker: a call that allocates more fails with MemoryError
_STARTUP_TIMEOUT_S = 60.0
_HEADER = struct.Struct("<Q")


def _write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


class _Worker:
    """One worker process and the bytes it has sent but we have not read."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, close_fds=True)
        self._buf = b""
        if self._reply(time.monotonic() + _STARTUP_TIMEOUT_S) != "ready":
            self.kill()
            raise RuntimeError("The tool-call worker (python -m exit_jax.envs.tool_use.isolated) did not start; "
                               "run it by hand to see why (bfcl-eval must be importable).")

    def _read(self, n: int, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def call(self, request: Any, timeout_s: float) -> Any:
        """Sends one request and returns the reply, or None when the worker took too long or died."""
        try:
            _write_frame(self.proc.stdin.fileno(), pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            return None
        return self._reply(time.monotonic() + timeout_s)

    def _reply(self, deadline: float) -> Any:
        header = self._read(_HEADER.size, deadline)
        body = header and self._read(_HEADER.unpack(header)[0], deadline)
        return None if body is None else pickle.loads(body)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


_idle: queue.SimpleQueue = queue.SimpleQueue()
_all: list[_Worker] = []


# Workers are started from this one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that
# started a process ends, and the callers' threads (an evaluation's pool) come and go.
_spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tool-worker-spawner")


def _take() -> _Worker:
    try:
        return _idle.get_nowait()
    except queue.Empty:
        worker = _spawner.submit(_Worker).result()
        _all.append(worker)
        return worker


@atexit.register
def close() -> None:
    """Stops every worker (they also exit by themselves when the parent's pipe closes)."""
    while True:
        try:
            _idle.get_nowait()
        except queue.Empty:
            break
    while _all:
        worker = _all.pop()
        if worker.proc.poll() is None:
            worker.kill()


def execute_call(call: executor.Call, instances: dict, owners: Mapping[str, str],
                 time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> str:
    """`executor.execute_call` in a worker: the owning instance in `instances` is replaced by the one the
    call left behind; a call over `time_limit_s` returns a tool error and leaves the instance as it was."""
    owner = owners.get(call.name)
    if call.error is not None or owner not in instances:
        return executor.execute_call(call, instances, owners)  # an error string; nothing runs
    worker = _take()
    reply = worker.call((call, owner, instances[owner]), time_limit_s)
    if reply is None:
        died = worker.proc.poll() is not None
        worker.kill()
        _all.remove(worker)
        if died:
            return executor.ERROR_PREFIX + f"the process running {call.name} stopped"
        return executor.ERROR_PREFIX + (f"{call.name} did not finish within the {time_limit_s:g} s time "
                                        "budget for a tool call and was stopped")
    _idle.put(worker)
    result, instances[owner] = reply
    return result


def execute_calls(calls: Sequence[executor.Call], instances: dict, owners: Mapping[str, str],
                  time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> list[str]:
    return [execute_call(call, instances, owners, time_limit_s) for call in calls]


def _serve() -> None:
    """The worker's loop: (call, owner, instance) in, (result, instance) out, until stdin closes."""
    import ctypes
    import resource
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the trainer
    if os.getppid() != int(sys.argv[1]):  # it died before the line above
        return
    limit = MEMORY_LIMIT_MB << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    replies = os.dup(1)
    # Tool code may print; only our frames may reach the parent's pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    requests = sys.stdin.buffer
    _write_frame(replies, pickle.dumps("ready"))
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        call, owner, instance = pickle.loads(requests.read(_HEADER.unpack(header)[0]))
        instances = {owner: instance}
        result = executor.execute_call(call, instances, {call.name: owner})  # a MemoryError becomes a string
        _write_frame(replies, pickle.dumps((result, instances[owner]), protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    _serve()
