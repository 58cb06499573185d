"""The environment protocol shared by every domain (math, tool use, MLE).

A task is a frozen record with an id. An environment wraps one task: `reset()` gives the opening chat
messages, `step(reply)` takes the model's reply as text and returns what to append to the conversation,
the reward in [0, 1], whether the episode ended, and an info dict. Model text is untrusted: `step` never
raises on it; an unusable reply earns reward 0 and `info["reason"]` says why.

Multi-turn environments are restored to any turn prefix of a history by replaying the recorded replies on
a fresh environment (`replay`): that is how ExIt continues from a partial history (paper §4.1).
"""
from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, Mapping, Sequence

Message = dict  # {"role": "system"|"user"|"assistant"|"tool", "content": str}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task instance. `data` holds the domain's fields (problem and answer, BFCL entry, ...)."""
    id: str
    domain: str
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)


@dataclasses.dataclass(frozen=True)
class StepResult:
    messages: list  # messages to append after the assistant reply (tool results, the next user turn)
    reward: float  # in [0, 1]; for multi-turn tasks only the final step's reward is the episode's
    done: bool
    info: dict = dataclasses.field(default_factory=dict)


class Env(abc.ABC):
    """A stateful wrapper around one task. Create a fresh one per rollout."""

    def __init__(self, task: Task):
        self.task = task

    @abc.abstractmethod
    def reset(self) -> list:
        """Returns the opening messages (system prompt and first user request)."""

    @abc.abstractmethod
    def step(self, reply: str) -> StepResult:
        """Consumes one assistant reply. Never raises on malformed model text."""

    def instruction(self) -> str:
        """The request the current turn answers: `{instruction}` of the self-iteration prompts (§4.2)."""
        raise NotImplementedError


def replay(env: Env, replies: Sequence[str]) -> tuple[list, StepResult | None]:
    """Resets `env` and feeds it `replies`; returns the full message list and the last step result."""
    messages = list(env.reset())
    result = None
    for reply in replies:
        messages.append({"role": "assistant", "content": reply})
        result = env.step(reply)
        messages.extend(result.messages)
        if result.done:
            break
    return messages, result


# Rendering substitutes the named slots in one pass, so braces inside a response or a piece of code are
# never read as format fields (prompts quote both).
_SLOT = re.compile(r"\{([a-z_]+)\}")


def render(template: str, fields: Mapping[str, str]) -> str:
    """Fills every {slot} of `template` from `fields` in one pass."""
    needed = set(_SLOT.findall(template))
    missing = sorted(needed - set(fields))
    if missing:
        raise ValueError(f"Prompt fields {missing} are missing; the template needs {sorted(needed)}.")
    return _SLOT.sub(lambda m: str(fields[m.group(1)]), template)
