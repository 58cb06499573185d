"""exit_jax: Exploratory Iteration (ExIt, arXiv 2509.04575) in JAX/Flax.

Subpackages: models (decoder, checkpoints, tokenizers), sampling (jitted batched sampler), rl (GRPO),
curriculum (the ExIt buffer, episodes, prompts, rewards, diversity bonus), envs (math, tool use, MLE),
training (the loop), evaluation (self-improvement curves, greedy search, plots).
"""
__version__ = "0.1.0"
