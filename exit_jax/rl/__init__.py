"""GRPO: group advantages and the clipped objective (`grpo`), and the update step (`learner`)."""
from exit_jax.rl import grpo, learner
from exit_jax.rl.learner import LearnerConfig, TrainState

__all__ = ["grpo", "learner", "LearnerConfig", "TrainState"]
