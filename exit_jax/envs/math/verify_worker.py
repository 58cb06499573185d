"""The math-verify worker: a separate process, run as a script (`python verify_worker.py`).

Why a process: math-verify (the paper's grader) times itself out with `signal.alarm`, which only works on
a main thread, and sympy can hang inside C code (a huge integer power) where no signal helps. So the
grader (grader.py) runs this script as a child, talks JSON lines over its stdin/stdout, and kills and
restarts it when an answer takes too long. It is started as a plain script, not with `multiprocessing`,
so it neither forks a process that holds jax threads nor re-imports the parent's `__main__`.

Protocol (one JSON object a line):
  child -> parent at start:  {"ready": true, "versions": {...}}
  parent -> child:           {"items": [[gold, response], ...], "timeout": seconds, "anchorless": mode}
  child -> parent, per item: {"i": index, "ok": bool, "reason": str, "extracted": str or null}

The whole response goes to math-verify's extraction (boxes, "final answer is", "answer:", LaTeX
environments, in math-verify's priority order), not an answer we picked out first. `anchorless` says
which answers without an anchor count (docs/math_grading.md): "math_verify" as math-verify's default
(any LaTeX environment, any number), "latex" (any LaTeX environment; a plain number only when it is the
whole reply: no last-number fallback), "none" (anchored answers only).
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


ANCHORLESS = ("math_verify", "latex", "none")
_BARE_REPLY_CHARS = 40  # "1,000.99", "x = 5 cm": a reply that is nothing but its answer


def _gold_text(gold: str) -> str:
    # A bare gold answer (`\frac12`, `(1, 2)`) is LaTeX without delimiters: a box gives math-verify's
    # extractor its anchor. Gold that already carries delimiters is parsed as written.
    delimited = any(t in gold for t in ("$", "\\boxed", "\\(", "\\["))
    return gold if delimited else "\\boxed{" + gold + "}"


def _extractors(anchorless: str) -> tuple:
    """(the configs for the whole reply, the configs for a bare reply or None)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig
    full = [LatexExtractionConfig(), ExprExtractionConfig()]
    if anchorless == "math_verify":
        return full, None
    latex = anchorless == "latex"
    return ([LatexExtractionConfig(try_extract_without_anchor=latex),
             ExprExtractionConfig(try_extract_without_anchor=False)], full if latex else None)


def _answer_text(parsed) -> str | None:
    """The extracted answer as text (math-verify returns [sympy value, matched string])."""
    strings = [x for x in parsed if isinstance(x, str)]
    return strings[-1] if strings else (str(parsed[0]) if parsed else None)


def _check(parse, verify, gold: str, response: str, timeout: float, anchorless: str,
           gold_cache: dict) -> tuple[bool, str, str | None]:
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        # math-verify's own alarms are off (None): our timer replaces them.
        if gold not in gold_cache:
            gold_cache[gold] = parse(_gold_text(gold), parsing_timeout=None)
        g = gold_cache[gold]
        if not g:
            return False, "gold_unparsed", None
        full, bare = _extractors(anchorless)
        p = parse(response, full, parsing_timeout=None)
        text = response.strip()
        if not p and bare is not None and len(text) <= _BARE_REPLY_CHARS and "\n" not in text:
            # A reply that is nothing but its answer, plain (`1,000.99`) or undelimited LaTeX (`\sqrt{2}/2`).
            p = parse(text, bare, parsing_timeout=None) or (
                parse("$" + text + "$", bare, parsing_timeout=None) if "\\" in text and "$" not in text else [])
        if not p:
            return False, "no_answer", None
        ok = bool(verify(g, p, timeout_seconds=None))
        # Only a string came back (math-verify's fallback: the matched text did not parse as math).
        parsed = any(not isinstance(x, str) for x in p)
        return ok, "math_verify" if ok else ("mismatch" if parsed else "no_answer"), _answer_text(p)
    except _SoftTimeout:
        return False, "timeout", None
    except Exception as e:  # noqa: BLE001 -- a grader must turn any failure into reward 0
        return False, "verify_error:" + type(e).__name__, None
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
    gold_cache: dict = {}  # gold answers repeat G times per prompt and every iteration
    for line in sys.stdin:
        try:
            request = json.loads(line)
            items, timeout = request["items"], float(request["timeout"])
            anchorless = request["anchorless"] if request["anchorless"] in ANCHORLESS else "none"
        except (ValueError, KeyError, TypeError):
            continue
        if len(gold_cache) > 100_000:
            gold_cache.clear()
        for i, (gold, response) in enumerate(items):
            try:
                ok, reason, extracted = _check(parse, verify, str(gold), str(response), timeout, anchorless,
                                               gold_cache)
            except _SoftTimeout:  # the timer fired between the try blocks
                ok, reason, extracted = False, "timeout", None
            proto.write(json.dumps({"i": i, "ok": ok, "reason": reason, "extracted": extracted}) + "\n")


if __name__ == "__main__":
    main()
