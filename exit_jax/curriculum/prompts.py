"""The paper's self-improvement and self-divergence prompts, verbatim (paper §4.2, Appendix B; docs/paper.md §4).

The MLE-bench prompt lives with its environment (`envs.mle.prompts`).

Line breaks follow the printed paper (some may be PDF wraps; the original whitespace is not published)."""
from __future__ import annotations

from exit_jax.envs.base import render

# paper §4.2 / Appendix B: self-improvement prompt, shared by math and tool use.
IMPROVE_TEMPLATE = """Improve your current response to this request:

## Request:
{instruction}

## Current response:
{previous_response}"""

# paper §4.2 / Appendix B: self-divergence prompt.
DIVERGE_TEMPLATE = """Consider your current response to this request, and provide another response that takes
an approach that SIGNIFICANTLY DIFFERS from the approach of the current response.

## Request:
{instruction}

## Current response:
{previous_response}

## Your new response format:
- First, provide a brief summary of the approach in the current response above.
- Next, state a meaningfully different approach that can be taken instead.
- Finally, provide your new response using this different approach."""


def improve_prompt(instruction: str, previous_response: str) -> str:
    return render(IMPROVE_TEMPLATE, {"instruction": instruction, "previous_response": previous_response})


def diverge_prompt(instruction: str, previous_response: str) -> str:
    return render(DIVERGE_TEMPLATE, {"instruction": instruction, "previous_response": previous_response})


def self_iteration_prompt(step: str, instruction: str, previous_response: str) -> str:
    """The generic (math, tool use) prompt for an "improve" or "diverge" step."""
    if step == "improve":
        return improve_prompt(instruction, previous_response)
    if step == "diverge":
        return diverge_prompt(instruction, previous_response)
    raise ValueError(f"Self-iteration step must be 'improve' or 'diverge', got {step!r}.")


__all__ = ["DIVERGE_TEMPLATE", "IMPROVE_TEMPLATE", "diverge_prompt", "improve_prompt", "render",
           "self_iteration_prompt"]
