"""The math-verify worker: a separate process, run as a script (`python verify_worker.py`).

Why a process: math-verify (the paper's grader) times itself out with `signal.alarm`, which only works on
a main thread, and sympy can hang inside C code (a huge integer power) where no signal helps. So the
grader (grader.py) runs this script as a child, talks JSON lines over its stdin/stdout, and kills and
restarts it when an answer takes too long. It is started as a plain script, not with `multiprocessing`,
so it neither forks a process that holds jax threads nor re-imports the parent's `__main__`.

Protocol (one JSON object a line):
  child -> parent at start:  {"ready": true, "versions": {...}}
  parent -> child:           {"pairs": [[gold, pred], ...], "timeout": seconds}
  child -> parent, per pair: {"i": index, "ok": bool, "reason": str}
"""
from __future__ import annotations

import json
import os
import signal
import sys


class _SoftTimeout(BaseException):
    """Raised by our own timer. A BaseException so that math-verify's `except Exception` cannot eat it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _versions() -> dict:
    from importlib import metadata
    out = {}
    for name in ("math-verify", "latex2sympy2_extended", "sympy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _check(parse, verify, gold: str, pred: str, timeout: float) -> tuple[bool, str]:
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        # Wrapping in \boxed{} gives math-verify's LaTeX extractor an anchor; bare strings such as
        # `\frac12` are otherwise not found. Its own alarms are off (None): our timer replaces them.
        g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
        if not g:
            return False, "gold_unparsed"
        if not p:
            return False, "pred_unparsed"
        ok = bool(verify(g, p, timeout_seconds=None))
        return ok, "math_verify" if ok else "mismatch"
    except _SoftTimeout:
        return False, "timeout"
    except Exception as e:  # noqa: BLE001 -- a grader must turn any failure into reward 0
        return False, "verify_error:" + type(e).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    # Keep the protocol stream clean: anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import logging
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify
    signal.signal(signal.SIGALRM, _on_alarm)
    proto.write(json.dumps({"ready": True, "versions": _versions()}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            pairs, timeout = request["pairs"], float(request["timeout"])
        except (ValueError, KeyError, TypeError):
            continue
        for i, (gold, pred) in enumerate(pairs):
            try:
                ok, reason = _check(parse, verify, str(gold), str(pred), timeout)
            except _SoftTimeout:  # the timer fired between the try blocks
                ok, reason = False, "timeout"
            proto.write(json.dumps({"i": i, "ok": ok, "reason": reason}) + "\n")


if __name__ == "__main__":
    main()
