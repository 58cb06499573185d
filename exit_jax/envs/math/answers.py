"""`\\boxed{}` parsing and Hendrycks-style normalisation of answers (docs/math_grading.md).

Answers are extracted from responses by math-verify (grader.py); what is here serves the grader's fast
path, gold answers of datasets and the procedural generator.

Everything here is pure string work on untrusted model text: no function raises on any input, and the
regexes are linear (no nested quantifiers), so a hostile string cannot make them backtrack for long.
"""
from __future__ import annotations

import re
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _last_box_start(text: str) -> tuple[int, int]:
    """(index of the last box command, index just after its name), or (-1, -1) when there is none."""
    best, end = -1, -1
    for cmd in _BOX_COMMANDS:
        i = text.rfind(cmd)
        # `\boxed` must not be a prefix of a longer command name such as `\boxedfoo`.
        while i >= 0 and text[i + len(cmd): i + len(cmd) + 1].isalpha():
            i = text.rfind(cmd, 0, i)
        if i > best:
            best, end = i, i + len(cmd)
    return best, end


def last_boxed(text: str) -> tuple[str | None, str]:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`, and a status.

    Status is "boxed" (found), "no_box" (no box command at all) or "malformed_box" (the last box is
    unclosed or empty, e.g. a truncated generation). Braces are matched by depth counting because answers
    nest braces (`\\boxed{\\frac{1}{2}}`).
    """
    start, pos = _last_box_start(text)
    if start < 0:
        return None, "no_box"
    n = len(text)
    while pos < n and text[pos] == " ":
        pos += 1
    if pos < n and text[pos] == "{":
        depth = 0
        for j in range(pos, n):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    content = text[pos + 1: j].strip()
                    return (content, "boxed") if content else (None, "malformed_box")
        return None, "malformed_box"
    # `\boxed 5` form: the answer runs to the next `$`, newline or end of text.
    m = re.match(r"[^$\n]*", text[pos:])
    content = m.group(0).strip().rstrip(".").strip() if m else ""
    return (content, "boxed") if content else (None, "malformed_box")


# ---------------------------------------------------------------------------------------------------
# Normalisation (hendrycks/math `_strip_string` conventions, re-implemented).

_TRAILING_TEXT_UNIT = re.compile(r"^(.+?)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}\s*$")
_SQRT_BARE = re.compile(r"\\sqrt\s*([^\s{\\])")


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`, `\\frac{1}2` -> `\\frac{1}{2}`."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part:
            continue
        args, rest = [], part
        for _ in range(2):
            if not rest:
                break
            if rest[0] == "{":
                depth = 0
                for j, c in enumerate(rest):
                    depth += c == "{"
                    depth -= c == "}"
                    if depth == 0:
                        args.append(rest[: j + 1])
                        rest = rest[j + 1:]
                        break
                else:  # unbalanced: leave the remainder untouched
                    args.append(rest)
                    rest = ""
            else:
                args.append("{" + rest[0] + "}")
                rest = rest[1:]
        out += "".join(args) + rest
    return out


def normalize(answer: str) -> str:
    """Hendrycks-style canonical string of an answer (the fast path compares these)."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "")
    s = s.replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    # Outer math delimiters and a sentence-final period are not part of the answer.
    s = s.strip().strip("$").strip()
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1]
    m = _TRAILING_TEXT_UNIT.match(s)
    if m:
        s = m.group(1)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    # `x = 5` / `k=5` -> `5`: a short variable name before a single `=`.
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = _SQRT_BARE.sub(lambda mm: "\\sqrt{" + mm.group(1) + "}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
    return s


_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_DECIMAL = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")


def as_fraction(normalized: str) -> Fraction | None:
    """Exact value of a normalised plain number (int, decimal, `\\frac{a}{b}`), else None."""
    s = normalized
    if len(s) > 64:  # not a plain number; also keeps int() away from huge digit strings
        return None
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        m = _FRAC.fullmatch(s)
        if m and int(m.group(3)) != 0:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def canonical(value) -> str:
    """Canonical gold-answer string: int, reduced `\\frac{a}{b}` (sign outside), or a tuple of those."""
    if isinstance(value, tuple):
        return "(" + ", ".join(canonical(v) for v in value) + ")"
    if isinstance(value, bool):
        raise ValueError(f"canonical answer must be a number or tuple, got bool {value!r}")
    frac = Fraction(value)
    if frac.denominator == 1:
        return str(frac.numerator)
    sign = "-" if frac < 0 else ""
    return f"{sign}\\frac{{{abs(frac.numerator)}}}{{{frac.denominator}}}"
