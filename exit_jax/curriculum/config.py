"""Curriculum configuration: the methods of paper §5.2 are settings of one frozen dataclass, not code paths.

| Method     | use_buffer | self_iterate | p_div | diversity_bonus |
|------------|------------|--------------|-------|-----------------|
| GRPO       | no         | –            | 0     | no              |
| Curriculum | yes        | no (replays stored starting points without the self-iteration prompt) | 0 | no |
| Improve    | yes        | yes          | 0     | no              |
| Diverge    | yes        | yes          | 0.2   | no              |
| ExIt       | yes        | yes          | 0.2 math, 0.5 tool use / MLE | yes |

Buffer size N, B_min and p come from Tables 4–6 of the paper (docs/paper.md §8).
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Optional

from exit_jax.curriculum.buffer import DEFAULT_KAPPA

METHODS = ("grpo", "curriculum", "improve", "diverge", "exit")
DOMAINS = ("math", "tool_use", "mle")
TEMPLATES = ("generic", "mle")


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    use_buffer: bool = True  # False: GRPO, every group is a uniformly drawn base task
    replay_prob: float = 0.5  # p: chance that a prompt group replays a buffer entry (paper §4)
    b_min: int = 128  # B_min: no selection before the buffer holds this many entries
    capacity: int = 512  # N: total buffer size
    kappa: float = DEFAULT_KAPPA  # inverse temperature of softmax(κ·S) sampling (docs/paper.md §13.1)
    p_div: float = 0.0  # chance that a replayed group is a self-divergence step (paper §4.2)
    self_iterate: bool = True  # False: "Curriculum", replay starting points without a previous iterate
    diversity_bonus: bool = False  # multiply advantages by Eq. 6 coefficients (full ExIt only)
    template: str = "generic"  # "generic" (math, tool use) or "mle" (the MLE-bench template)
    improvement_reward: bool = False  # True for MLE: improve/debug steps earn r_imp (paper App. A)

    def __post_init__(self):
        for name in ("replay_prob", "p_div"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CurriculumConfig.{name} must be in [0, 1], got {value!r}.")
        if not 0.0 < self.kappa < float("inf"):  # kappa <= 0 inverts or flattens the priorities; inf is NaN
            raise ValueError(f"CurriculumConfig.kappa must be a finite number > 0, got {self.kappa!r}.")
        if self.capacity < 1:
            raise ValueError(f"CurriculumConfig.capacity must be ≥ 1, got {self.capacity!r}.")
        if not 1 <= self.b_min <= self.capacity:
            raise ValueError(f"CurriculumConfig.b_min must be in [1, capacity={self.capacity}], "
                             f"got {self.b_min!r}.")
        if self.template not in TEMPLATES:
            raise ValueError(f"CurriculumConfig.template must be one of {TEMPLATES}, got {self.template!r}.")
        if self.p_div > 0 and not self.self_iterate:
            raise ValueError("CurriculumConfig.p_div > 0 needs self_iterate=True: divergence is a "
                             "self-iteration step.")

    @property
    def method(self) -> str:
        """The paper's name for this configuration (for logs)."""
        if not self.use_buffer:
            return "grpo"
        if not self.self_iterate:
            return "curriculum"
        if self.diversity_bonus:
            return "exit"
        return "diverge" if self.p_div > 0 else "improve"


# The paper's settings per domain and method, Tables 4-6 (docs/paper.md §8), in one place:
# (buffer capacity N, B_min, replay probability p, p_div, learning rate). GRPO has no buffer.
PAPER_TABLE = {
    "math": {"grpo": (None, None, 0.0, 0.0, 1e-6), "curriculum": (512, 128, 0.5, 0.0, 1e-6),
             "improve": (512, 128, 0.5, 0.0, 1e-6), "diverge": (512, 128, 0.5, 0.2, 1e-6),
             "exit": (512, 128, 0.5, 0.2, 1e-6)},
    "tool_use": {"grpo": (None, None, 0.0, 0.0, 1e-6), "curriculum": (320, 320, 0.2, 0.0, 5e-7),
                 "improve": (640, 320, 0.5, 0.0, 5e-7), "diverge": (640, 320, 0.5, 0.2, 5e-7),
                 "exit": (640, 320, 0.5, 0.5, 1e-6)},
    "mle": {"grpo": (None, None, 0.0, 0.0, 1e-6), "curriculum": (3, 3, 0.5, 0.0, 1e-6),
            "improve": (24, 8, 0.5, 0.0, 1e-6), "diverge": (32, 8, 0.5, 0.2, 1e-6),
            "exit": (24, 3, 0.5, 0.5, 1e-6)},
}


def _paper_row(domain: str, method: str) -> tuple:
    if domain not in DOMAINS:
        raise ValueError(f"Unknown domain {domain!r}; expected one of {DOMAINS}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")
    return PAPER_TABLE[domain][method]


def paper_learning_rate(domain: str, method: str) -> float:
    """The learning rate the paper used for `method` on `domain` (Tables 4-6)."""
    return _paper_row(domain, method)[4]


def preset(domain: str, method: str, kappa: float = DEFAULT_KAPPA, capacity: Optional[int] = None,
           b_min: Optional[int] = None, replay_prob: Optional[float] = None, p_div: Optional[float] = None,
           overrides: Optional[dict] = None) -> CurriculumConfig:
    """The paper's configuration of `method` on `domain` (PAPER_TABLE). Each table value can be replaced
    by name (None keeps the paper's), kappa is ours (the paper does not give it: docs/paper.md §13.1),
    and `overrides` sets any other CurriculumConfig field (e.g. the prompt template)."""
    given = {k: v for k, v in dict(kappa=kappa, capacity=capacity, b_min=b_min, replay_prob=replay_prob,
                                   p_div=p_div).items() if v is not None}
    config = dataclasses.replace(_paper_preset(domain, method), **given)
    if overrides:
        fields = sorted(f.name for f in dataclasses.fields(CurriculumConfig))
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            close = difflib.get_close_matches(unknown[0], fields, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"the fields are {', '.join(fields)}."
            raise ValueError(f"Unknown CurriculumConfig field(s) {unknown} in overrides; {hint}")
        config = dataclasses.replace(config, **overrides)
    return config


def _paper_preset(domain: str, method: str) -> CurriculumConfig:
    capacity, b_min, p, p_div, _ = _paper_row(domain, method)
    domain_fields = dict(template="mle", improvement_reward=True) if domain == "mle" else {}
    if method == "grpo":
        # The buffer is unused; capacity/b_min are placeholders that keep the config valid.
        return CurriculumConfig(use_buffer=False, replay_prob=0.0, b_min=1, capacity=1,
                                self_iterate=False, **domain_fields)
    return CurriculumConfig(use_buffer=True, replay_prob=p, b_min=b_min, capacity=capacity, p_div=p_div,
                            self_iterate=method != "curriculum", diversity_bonus=method == "exit",
                            **domain_fields)
