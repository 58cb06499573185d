"""exit_jax: Exploratory Iteration (ExIt, arXiv 2509.04575) in JAX/Flax.

Rooms, bottom up (each imports only those before it; README, "Layout"): storage, models (decoder,
checkpoints, tokenizers), sampling (the jitted batched sampler, TextPolicy), envs (math, tool use, MLE;
domains), curriculum (the ExIt buffer, episodes, prompts, rewards, diversity bonus), rl (GRPO), tpu
(ahead-of-time compilation), training (the loop), evaluation (self-improvement curves, greedy search,
plots), testing (fakes for tests).
"""
__version__ = "0.1.0"
