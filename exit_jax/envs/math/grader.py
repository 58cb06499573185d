"""Binary math reward with math-verify's extraction (paper §5: a math-verify reward; docs/math_grading.md).

Pipeline per response: a fast path for the one case it provably agrees with math-verify (a single box,
no "final answer" phrasing, a plain number equal to a plain-number gold answer) -> otherwise the whole
response (its last `max_response_chars`) goes to math-verify's `parse` + `verify` in a worker process
with a hard timeout. Verdicts are cached by (response, gold). `check_batch` grades the G x P responses of
a training iteration with one round trip to the worker.

A response whose grading times out is retried once with longer timeouts; if it times out again it is
*ungraded* (`GradeResult.graded` False): the training loop leaves it out of its group instead of
scoring it 0, since a timeout says more about the machine's load than about the answer.

Untrusted text never raises here: every failure is reward 0 (or ungraded) with a reason.
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

from exit_jax.envs.math.answers import as_fraction, last_boxed, normalize
from exit_jax.envs.math.verify_worker import ANCHORLESS  # the worker's modes (docs/math_grading.md)

log = logging.getLogger(__name__)

_WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify_worker.py")


def math_verify_version() -> str:
    """Installed math-verify version (the paper cites 0.6.1; record what a run actually used)."""
    try:
        return metadata.version("math-verify")
    except metadata.PackageNotFoundError:
        return "missing"


_HANGS = ("timeout", "worker_died", "worker_protocol_error", "worker_unavailable")  # say nothing of the answer


@dataclasses.dataclass(frozen=True)
class GraderConfig:
    soft_timeout_s: float = 2.0  # per pair, enforced inside the worker by a timer signal
    hard_timeout_s: float = 6.0  # per pair, enforced by killing the worker (C-level hangs)
    startup_timeout_s: float = 120.0  # importing sympy on a loaded 2-core machine can be slow
    retry_timeout_factor: float = 4.0  # a timed-out pair is retried once with timeouts this much longer
    max_response_chars: int = 4000  # math-verify reads the response's tail: answers come last
    # Answers without an anchor (a box, "final answer is", "answer:"): "latex" counts LaTeX environments
    # anywhere and a plain number only when it is the whole reply (no last-number fallback, which rewards
    # text that merely ends in the gold number); "math_verify" is math-verify's default; "none".
    anchorless: str = "latex"
    cache_size: int = 200_000
    use_math_verify: bool = True  # False: fast path only (no subprocess)
    num_workers: int = 1  # worker processes sharing a batch; more helps on many-core hosts

    def __post_init__(self):
        if self.anchorless not in ANCHORLESS:
            raise ValueError(f"GraderConfig.anchorless must be one of {ANCHORLESS}, got {self.anchorless!r}.")
        if self.num_workers < 1:
            raise ValueError(f"GraderConfig.num_workers must be >= 1, got {self.num_workers}")


@dataclasses.dataclass(frozen=True)
class GradeResult:
    reward: float  # 1.0 or 0.0
    reason: str  # exact_match | fraction_match | math_verify | mismatch | no_answer | timeout | ...
    extracted: str | None  # the answer the response committed to, as extracted
    extraction: str  # fast_box | math_verify | none
    graded: bool = True  # False: grading kept timing out; the sample says nothing about the policy


def fast_path(response: str, gold: str) -> GradeResult | None:
    """Reward 1 without math-verify where it provably agrees: exactly one box and no "final answer"
    phrasing (so math-verify's extraction picks that box too), both sides plain numbers of equal value
    (which math-verify's numeric comparison also accepts). Anything else goes to math-verify."""
    if response.count("\\boxed") + response.count("\\fbox") != 1 or "final answer" in response.lower():
        return None
    pred, status = last_boxed(response)
    if status != "boxed":
        return None
    p, g = normalize(pred), normalize(gold)
    fp, fg = as_fraction(p), as_fraction(g)
    if fp is None or fg is None or fp != fg:
        return None
    return GradeResult(1.0, "exact_match" if p == g else "fraction_match", pred, "fast_box")


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

    def verify(self, items: Sequence[tuple[str, str]], anchorless: str,
               scale: float = 1.0) -> list[tuple[bool, str, str | None]]:
        """[(is_equivalent, reason, extracted)] for (gold, response) items; a hang is (False, "timeout")."""
        results: list[tuple[bool, str, str | None]] = []
        while len(results) < len(items):
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.kill()
                    self.restarts += 1
                if not self._start():
                    results.extend([(False, "worker_unavailable", None)] * (len(items) - len(results)))
                    break
            todo = items[len(results):]
            request = {"items": [list(p) for p in todo], "timeout": self._config.soft_timeout_s * scale,
                       "anchorless": anchorless}
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.kill()
                self.restarts += 1
                results.append((False, "worker_died", None))  # skip the item that was being sent
                continue
            for k in range(len(todo)):
                msg, status = self._read_line(self._config.hard_timeout_s * scale)
                if msg is None or msg.get("i") != k:
                    # A hang (or crash) on item k: the rest go to a fresh worker.
                    results.append((False, status if msg is None else "worker_protocol_error", None))
                    self.kill()
                    self.restarts += 1
                    break
                results.append((bool(msg.get("ok")), str(msg.get("reason", "mismatch")), msg.get("extracted")))
        return results


class Grader:
    """Grades responses against gold answers. Holds the worker process and the (pred, gold) cache."""

    def __init__(self, config: GraderConfig = GraderConfig()):
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
        for i, (response, gold) in enumerate(zip(responses, answers)):
            gold = str(gold).strip()
            if not gold:
                results[i] = GradeResult(0.0, "empty_gold", None, "none")
            elif not isinstance(response, str) or not response.strip():
                results[i] = GradeResult(0.0, "empty_response", None, "none")
            else:
                results[i] = fast_path(response, gold)
                if results[i] is None:
                    pending.setdefault((response[-self.config.max_response_chars:], gold), []).append(i)
        if pending:
            with self._lock:
                verdicts = self._slow_path(list(pending))
            for key, (ok, reason, extracted) in zip(pending, verdicts):
                graded = reason not in _HANGS
                result = GradeResult(1.0 if ok else 0.0, reason if graded else f"ungraded: {reason}", extracted,
                                     "math_verify" if extracted is not None else "none", graded)
                for i in pending[key]:
                    results[i] = result
        return results  # type: ignore[return-value]

    def _slow_path(self, keys: list[tuple[str, str]]) -> list[tuple[bool, str, str | None]]:
        if not self.config.use_math_verify:
            return [(False, "mismatch", None)] * len(keys)
        out: dict = {}
        misses = []
        for key in keys:
            if key in self._cache:
                self._cache.move_to_end(key)
                out[key] = self._cache[key]
                self.cache_hits += 1
            else:
                misses.append(key)
        verdicts = self._verify(misses) if misses else []
        retry = [j for j, v in enumerate(verdicts) if v[1] in _HANGS]
        if retry:  # once, with longer timeouts: on a loaded machine a fair answer can be slow
            again = self._verify([misses[j] for j in retry], self.config.retry_timeout_factor)
            for j, verdict in zip(retry, again):
                verdicts[j] = verdict
        for key, verdict in zip(misses, verdicts):
            out[key] = verdict
            if verdict[1] not in _HANGS:  # a hang is the machine's state, not the pair's: never cache it
                self._cache[key] = verdict
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return [out[key] for key in keys]

    def _verify(self, keys: list[tuple[str, str]], scale: float = 1.0) -> list:
        items = [(gold, response) for response, gold in keys]
        n = min(len(self._workers), len(items))
        if n <= 1:
            return self._workers[0].verify(items, self.config.anchorless, scale)
        # Strided chunks balance slow items across workers; each worker is driven by one thread.
        chunks = [items[i::n] for i in range(n)]
        with ThreadPoolExecutor(max_workers=n) as pool:
            outs = list(pool.map(lambda wc: wc[0].verify(wc[1], self.config.anchorless, scale),
                                 zip(self._workers, chunks)))
        verdicts: list = [None] * len(items)
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
