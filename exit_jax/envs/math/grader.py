"""Binary math reward: last `\\boxed{}` answer vs gold (domains.md §1.3; paper §5, math-verify reward).

Pipeline per response: extract the answer (answers.extract_answer) -> fast path (normalised string or
exact Fraction equality; may only say "equal") -> math-verify in a worker process with a hard timeout.
Results of the slow path are cached by (prediction, gold). `check_batch` grades the G x P responses of a
training iteration with one round trip to the worker.

Untrusted text never raises here: every failure is reward 0 with a reason.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Sequence

from exit_jax.envs.math.answers import extract_answer, fast_equal

log = logging.getLogger(__name__)

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify_worker.py")


def math_verify_version() -> str:
    """Installed math-verify version (the paper cites 0.6.1; record what a run actually used)."""
    try:
        return metadata.version("math-verify")
    except metadata.PackageNotFoundError:
        return "missing"


@dataclasses.dataclass(frozen=True)
class GraderConfig:
    soft_timeout_s: float = 2.0  # per pair, enforced inside the worker by a timer signal
    hard_timeout_s: float = 6.0  # per pair, enforced by killing the worker (C-level hangs)
    startup_timeout_s: float = 120.0  # importing sympy on a loaded 2-core machine can be slow
    max_answer_chars: int = 1000  # longer "answers" are not answers; never hand them to sympy
    cache_size: int = 200_000
    use_math_verify: bool = True  # False: fast path only (no subprocess)
    num_workers: int = 1  # worker processes sharing a batch; more helps on many-core hosts


@dataclasses.dataclass(frozen=True)
class GradeResult:
    reward: float  # 1.0 or 0.0
    reason: str  # exact_match | fraction_match | math_verify | mismatch | timeout | no_answer | ...
    extracted: str | None  # the answer the response committed to
    extraction: str  # boxed | final_answer | last_number | no_box | malformed_box | ...


class _Worker:
    """One math-verify child process, started lazily and replaced after a hang or crash."""

    def __init__(self, config: GraderConfig):
        self._config = config
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self.versions: dict = {}
        self.restarts = 0

    def _start(self) -> bool:
        self._buf = b""
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-u", _WORKER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            log.warning("math-verify worker could not start: %s", e)
            self._proc = None
            return False
        msg, status = self._read_line(self._config.startup_timeout_s)
        if msg is None or not msg.get("ready"):
            log.warning("math-verify worker did not become ready (%s); grading falls back to 0", status)
            self.kill()
            return False
        self.versions = msg.get("versions", {})
        log.info("math-verify worker ready: %s", self.versions)
        return True

    def _read_line(self, timeout: float) -> tuple[dict | None, str]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, "timeout"
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None, "timeout"
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None, "worker_died"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line), "ok"
        except ValueError:
            return None, "worker_protocol_error"

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except (OSError, AttributeError):
                    pass
            self._proc = None
            self._buf = b""

    def verify(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[bool, str]]:
        """[(is_equivalent, reason)] for (gold, pred) pairs; a pair that hangs is ("timeout")."""
        results: list[tuple[bool, str]] = []
        while len(results) < len(pairs):
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.kill()
                    self.restarts += 1
                if not self._start():
                    results.extend([(False, "worker_unavailable")] * (len(pairs) - len(results)))
                    break
            todo = pairs[len(results):]
            request = {"pairs": [list(p) for p in todo], "timeout": self._config.soft_timeout_s}
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.kill()
                self.restarts += 1
                results.append((False, "worker_died"))  # skip the pair that was being sent
                continue
            for k in range(len(todo)):
                msg, status = self._read_line(self._config.hard_timeout_s)
                if msg is None or msg.get("i") != k:
                    # A hang (or crash) on pair k: it scores 0; the rest go to a fresh worker.
                    results.append((False, status if msg is None else "worker_protocol_error"))
                    self.kill()
                    self.restarts += 1
                    break
                results.append((bool(msg.get("ok")), str(msg.get("reason", "mismatch"))))
        return results


class Grader:
    """Grades responses against gold answers. Holds the worker process and the (pred, gold) cache."""

    def __init__(self, config: GraderConfig = GraderConfig()):
        if config.num_workers < 1:
            raise ValueError(f"GraderConfig.num_workers must be >= 1, got {config.num_workers}")
        self.config = config
        self._workers = [_Worker(config) for _ in range(config.num_workers)]
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0

    @property
    def versions(self) -> dict:
        """Versions reported by the worker (math-verify, latex2sympy2_extended, sympy) once it started."""
        return dict(self._workers[0].versions) or {"math-verify": math_verify_version()}

    @property
    def worker_restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                w.kill()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check(self, response: str, answer: str) -> GradeResult:
        return self.check_batch([response], [answer])[0]

    def check_batch(self, responses: Sequence[str], answers: Sequence[str]) -> list[GradeResult]:
        """Grades responses[i] against answers[i]; math-verify sees each distinct pair once."""
        if len(responses) != len(answers):
            raise ValueError(f"check_batch needs one answer per response, got {len(responses)} responses "
                             f"and {len(answers)} answers")
        results: list[GradeResult | None] = [None] * len(responses)
        pending: dict[tuple[str, str], list[int]] = {}
        extracted: list[tuple[str | None, str]] = []
        for i, (response, gold) in enumerate(zip(responses, answers)):
            gold = str(gold).strip()
            pred, how = extract_answer(response if isinstance(response, str) else "")
            extracted.append((pred, how))
            if not gold:
                results[i] = GradeResult(0.0, "empty_gold", pred, how)
            elif pred is None:
                results[i] = GradeResult(0.0, how, None, how)
            else:
                # The cheap exact checks run whatever the length (a long gold answer must still match
                # itself); only sympy / math-verify, whose cost grows with the text, are spared long ones.
                fast = fast_equal(pred, gold)
                if fast is not None:
                    results[i] = GradeResult(1.0, fast, pred, how)
                elif len(pred) > self.config.max_answer_chars:
                    results[i] = GradeResult(0.0, "answer_too_long", pred[:80], how)
                else:
                    pending.setdefault((pred, gold), []).append(i)
        if pending:
            with self._lock:
                verdicts = self._slow_path(list(pending))
            for key, (ok, reason) in zip(pending, verdicts):
                for i in pending[key]:
                    pred, how = extracted[i]
                    results[i] = GradeResult(1.0 if ok else 0.0, reason, pred, how)
        return results  # type: ignore[return-value]

    def _slow_path(self, keys: list[tuple[str, str]]) -> list[tuple[bool, str]]:
        if not self.config.use_math_verify:
            return [(False, "mismatch")] * len(keys)
        out: dict[tuple[str, str], tuple[bool, str]] = {}
        misses = []
        for key in keys:
            if key in self._cache:
                self._cache.move_to_end(key)
                out[key] = self._cache[key]
                self.cache_hits += 1
            else:
                misses.append(key)
        if misses:
            verdicts = self._verify([(gold, pred) for pred, gold in misses])
            for key, verdict in zip(misses, verdicts):
                out[key] = verdict
                # A missing worker is an outage, not a property of the pair: do not remember it.
                if verdict[1] != "worker_unavailable":
                    self._cache[key] = verdict
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return [out[key] for key in keys]

    def _verify(self, pairs: list[tuple[str, str]]) -> list[tuple[bool, str]]:
        n = min(len(self._workers), len(pairs))
        if n <= 1:
            return self._workers[0].verify(pairs)
        # Strided chunks balance slow pairs across workers; each worker is driven by one thread.
        chunks = [pairs[i::n] for i in range(n)]
        with ThreadPoolExecutor(max_workers=n) as pool:
            outs = list(pool.map(lambda wc: wc[0].verify(wc[1]), zip(self._workers, chunks)))
        verdicts: list = [None] * len(pairs)
        for i, out in enumerate(outs):
            verdicts[i::n] = out
        return verdicts


# One grader per process: the worker is an OS resource shared by every caller of `grade`.
_default: Grader | None = None
_default_lock = threading.Lock()


def default_grader() -> Grader:
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
            atexit.register(_default.close)
        return _default


def grade(response: str, answer: str) -> float:
    """1.0 if the response's final answer is equivalent to `answer`, else 0.0. Never raises on `response`."""
    return default_grader().check(response, answer).reward


def grade_with_info(response: str, answer: str) -> tuple[float, str]:
    """(reward, reason), e.g. (1.0, "math_verify") or (0.0, "no_answer")."""
    result = default_grader().check(response, answer)
    return result.reward, result.reason


def grade_batch(responses: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Rewards for many responses with one math-verify round trip."""
    return [r.reward for r in default_grader().check_batch(responses, answers)]
