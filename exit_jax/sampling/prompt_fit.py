"""Fitting a conversation into the prompt budget without losing its head (docs/prompts.md).

A prompt over `SamplingConfig.max_prompt_tokens` keeps its leading system messages (the tool docs of
tool use live there), the latest user request and the newest steps after it; whole messages in the
middle go, oldest first, and the first message after the gap starts with `MARKER`. Cutting tokens at
the head, as a plain left truncation does, would drop the function docs of nearly every BFCL prompt.

Droppable units, oldest first: earlier turns (a user message and what followed it), then the steps of
the current turn (an assistant reply and the tool results after it) except the newest one.
"""
from __future__ import annotations

from typing import Callable, Sequence

MARKER = "[{n} earlier messages omitted to fit the context window]"


def _units(messages: Sequence[dict]) -> tuple[int, list]:
    """(number of head messages, droppable [start, end) ranges oldest first)."""
    head = 0
    while head < len(messages) and messages[head].get("role") == "system":
        head += 1
    users = [i for i in range(head, len(messages)) if messages[i].get("role") == "user"]
    current = users[-1] if users else head
    turn_starts = sorted({head, *[i for i in users if i < current]})
    units = [(a, b) for a, b in zip(turn_starts, turn_starts[1:] + [current]) if a < b]
    steps = [i for i in range(current + 1, len(messages)) if messages[i].get("role") == "assistant"]
    units += list(zip(steps, steps[1:]))  # every step but the newest
    return head, units


def drop_middle(messages: Sequence[dict], k: int) -> tuple[list, int]:
    """The conversation without its k oldest droppable units; (messages, number of messages dropped)."""
    head, units = _units(messages)
    drop = {i for a, b in units[:k] for i in range(a, b)}
    kept = [dict(m) for i, m in enumerate(messages) if i not in drop]
    if drop:
        after = max(drop) + 1 - len(drop)  # index in `kept` of the first message after the gap
        if after < len(kept):
            kept[after]["content"] = MARKER.format(n=len(drop)) + "\n\n" + str(kept[after]["content"])
    return kept, len(drop)


def fit(messages: Sequence[dict], count: Callable[[Sequence[dict]], int], limit: int) -> tuple[list, int]:
    """The fewest oldest units dropped so that `count(messages) <= limit` (as many as there are when even
    that is too long); returns (messages, messages dropped). `count` gives a conversation's prompt tokens.
    """
    if count(messages) <= limit:
        return list(messages), 0
    lo, hi = 1, len(_units(messages)[1])  # fewer units dropped never makes a prompt shorter
    while lo < hi:
        mid = (lo + hi) // 2
        if count(drop_middle(messages, mid)[0]) <= limit:
            hi = mid
        else:
            lo = mid + 1
    return drop_middle(messages, lo)
