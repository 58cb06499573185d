"""Experiments built on exit_jax, kept out of the library: each imports `exit_jax` like any user would."""
