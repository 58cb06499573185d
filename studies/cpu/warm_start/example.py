"""One supervised example: a chat prompt and the assistant reply to learn."""
from __future__ import annotations

from typing import NamedTuple, Optional


class Example(NamedTuple):
    # The conversation up to the reply, exactly as training / evaluation would present it to the
    # policy (env.reset() messages, or a self-iteration conversation built by the same helpers).
    messages: list
    # The assistant reply; SFT loss covers its tokens and the end-of-turn token only.
    target: str
    # What kind of example this is ("attempt", "improve", "debug", "diverge", ...), for corpus stats.
    kind: str = "attempt"
    # The grade the generator meant the target to earn (1.0 right, 0.0 wrong), when it knows it; the
    # corpus tests check it against the domain's grader.
    reward: Optional[float] = None
