"""The policy interface the evaluation drives, and the one check every reply batch goes through.

The real policy wraps the jitted batched sampler (one prefill per conversation, `num_samples` continuations
each); the evaluation functions batch every chain of a self-iteration step into one `generate` call so that
the sampler sees the largest batch it can.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable


@runtime_checkable
class Policy(Protocol):
    def generate(self, conversations: Sequence[list[dict]], num_samples: int = 1) -> list[list[str]]:
        """[len(conversations)][num_samples] reply texts; conversations are chat message lists."""


def generate_checked(policy: Policy, conversations: Sequence[list[dict]],
                     num_samples: int = 1) -> list[list[str]]:
    """Calls `policy.generate` and checks the reply grid's shape, naming what came back otherwise."""
    if not conversations:
        return []
    replies = policy.generate(list(conversations), num_samples=num_samples)
    if len(replies) != len(conversations) or any(len(row) != num_samples for row in replies):
        shape = [len(row) for row in replies]
        raise ValueError(
            f"policy.generate returned rows of lengths {shape[:8]}{'...' if len(shape) > 8 else ''} for "
            f"{len(conversations)} conversations; expected {len(conversations)} rows of {num_samples} "
            "replies")
    # A sampler may hand back None for an empty decode; treat every reply as text from here on.
    return [[r if isinstance(r, str) else ("" if r is None else str(r)) for r in row] for row in replies]
