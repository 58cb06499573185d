"""Training rewards of self-iteration steps and the learnability score (paper §4, Appendix A).

- Math and tool use: binary correctness of the new iterate, for base, improve and diverge steps alike.
- MLE: the normalised score r_k for base, diverge and curriculum steps; the improvement reward
  r_imp = max(0, (r_k − r_{k−1}) / (1 − r_{k−1})) for improve and debug steps (paper Appendix A.4).
- Learnability S = variance of the group's rewards (paper §4.1), population variance (ddof 0).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

# Steps that use the improvement reward when the domain asks for it; "debug" is an improve step with
# a failed previous iterate, so it is recorded as step "improve" (see episodes.Episode.debug).
IMPROVEMENT_STEPS = ("improve",)


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return value


def improvement(score: float, previous_score: float) -> float:
    """r_imp = max(0, (r_k − r_{k−1}) / (1 − r_{k−1})), both normalised to [0, 1] (paper Appendix A).

    At r_{k−1} = 1 no improvement is possible (Δ ≤ 0), so the guarded value is 0 (docs/paper.md §5).
    From a failed script (r_{k−1} = 0) it equals r_k.
    """
    r_k = _check_unit("score r_k", score)
    r_prev = _check_unit("previous score r_{k-1}", previous_score)
    if r_prev >= 1.0:
        return 0.0
    return max(0.0, (r_k - r_prev) / (1.0 - r_prev))


def step_reward(step: str, score: float, previous_score: Optional[float] = None,
                improvement_reward: bool = False) -> float:
    """The training reward of one rollout.

    score: the domain's quality of the new iterate in [0, 1] (correctness for math and tool use,
    normalised score for MLE). improvement_reward: True for MLE, where improve/debug steps earn r_imp.
    """
    if improvement_reward and step in IMPROVEMENT_STEPS:
        if previous_score is None:
            raise ValueError(f"An {step!r} step with the improvement reward needs the previous score "
                             "r_(k-1).")
        return improvement(score, previous_score)
    return _check_unit("score", score)


def group_rewards(step: str, scores: Sequence[float], previous_score: Optional[float] = None,
                  improvement_reward: bool = False) -> np.ndarray:
    """Rewards float64 [G] of one GRPO group, all from the same starting point."""
    return np.asarray([step_reward(step, s, previous_score, improvement_reward) for s in scores],
                      np.float64)


def learnability(rewards) -> float:
    """S = var(r) over the group, ddof 0 (paper §4.1). With rewards in [0, 1], S ≤ 0.25."""
    r = np.asarray(rewards, np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("learnability needs at least one reward.")
    return float(np.var(r))
