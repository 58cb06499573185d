"""ML engineering domain: MLE-lite offline tasks, the MLE-bench adapter, the sandbox.

Modules: `sandbox` (bwrap runner, warm worker pool), `lite` (offline tasks), `grading` (metrics,
normalisation, medals), `mlebench` (prepared MLE-bench competitions), `prompts` (the paper's MLE-bench
prompt), `env` (MLEEnv). Import them directly: `from exit_jax.envs.mle import lite, sandbox`.
"""
