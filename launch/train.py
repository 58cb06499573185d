"""Train a policy with ExIt (or a baseline) as configured by gin.

    python launch/train.py --gin_file=math.gin                      # full ExIt on offline math
    python launch/train.py --gin_file=math.gin --gin_file=grpo.gin  # the GRPO baseline
    python launch/train.py --gin_file=mle.gin --gin.MODEL="'Qwen/Qwen2.5-7B-Instruct'"

Re-running the same command resumes from the last checkpoint in WORKDIR. SIGTERM (preemption) or Ctrl-C
checkpoints the current iteration and exits with 143 / 130; a second signal stops at once.
"""
import logging
import os
import sys

import gin_cli

# A CPU-sized run of each domain, named when a config meant for an accelerator starts on a CPU.
CPU_SIZED = {
    "math": "--gin_file=quickstart.gin",
    "mle": "python studies/cpu/run.py --preset quick --domains mle (a small pretrained model, short scripts)",
    "tool_use": ("--gin.loop.RunConfig.prompts_per_iteration=2 --gin.loop.RunConfig.group_size=4 "
                 "--gin.policy.SamplingConfig.max_new_tokens=128"),
}
LONG_ON_CPU_S = 300  # an iteration estimated longer than this on a CPU gets the notice
CPU_EFFICIENCY = 0.5  # share of the measured matmul peak our update and decoding reach on CPU (bench_e2e)


def cpu_notice():
    """One line when this config's iterations would take long on this CPU: the FLOPs of one iteration at
    its longest rows (rollout prefill and decode, the update's forward and backward, attention included)
    over half the matmul peak measured now, and the CPU-sized alternative."""
    import gin
    import jax
    if jax.default_backend() != "cpu":
        return None
    from bench_util import matmul_peak
    from exit_jax.models import load_config
    from exit_jax.rl.learner import LearnerConfig
    from exit_jax.sampling import prompt_bucket
    from exit_jax.sampling import text_policy as policy
    from exit_jax.training import loop
    run, sampling = gin.get_configurable(loop.RunConfig)(), gin.get_configurable(policy.SamplingConfig)()
    learner, config = gin.get_configurable(LearnerConfig)(), load_config(gin.query_parameter("%MODEL"))
    prompts, rows = run.prompts_per_iteration, run.prompts_per_iteration * run.group_size
    length, new = prompt_bucket(sampling.max_prompt_tokens, sampling.min_bucket), sampling.max_new_tokens
    body, head = config.matmul_params()
    attn = 4 * config.num_layers * config.num_heads * config.head_dim  # per query-key pair, forward
    rollout = 2 * body * (prompts * length + rows * new) + 2 * head * rows * new + attn * (
        prompts * length ** 2 + rows * new * (length + new))
    passes = learner.epochs * (3 + (learner.kl_beta > 0))  # forward + backward (2x), reference forward
    update = passes * (2 * body * rows * (length + new) + 2 * head * rows * new + attn * rows * (length + new) ** 2)
    seconds = (rollout + update) / (CPU_EFFICIENCY * matmul_peak(1024, 3))
    if seconds < LONG_ON_CPU_S:
        return None
    domain = gin.query_parameter("%DOMAIN")
    instead = CPU_SIZED.get(domain, "a smaller P, G and max_new_tokens")
    return (f"this {domain} config is sized for an accelerator: an iteration ({rows} rows of up to {length} + "
            f"{new} tokens, {config.name or 'the model'}) needs up to ~{(rollout + update) / 1e12:.0f} TFLOP, "
            f"about {seconds / 60:.0f} min on this CPU; for a CPU-sized run use {instead}.")


def main(argv):
    args = gin_cli.parse_args(argv, __doc__)
    gin_cli.maybe_initialize_distributed()
    gin_cli.enable_compilation_cache()
    gin_cli.tune_malloc()
    gin_cli.parse(args)
    from exit_jax import storage
    from exit_jax.training import loop
    workdir = run_dir = gin_cli.run_workdir(args)
    import jax
    log_name = f"train.process{jax.process_index()}.log" if jax.process_index() else "train.log"
    if storage.is_remote(workdir):  # config and log go to the local working copy, uploaded as it trains
        storage.Mirror(workdir).pull(only=(log_name,))  # an earlier attempt's log, to append to
        workdir = storage.local_copy(workdir)
    gin_cli.write_operative_config(workdir)
    # force: importing jax / orbax already gave the root logger a handler (absl's), which made a plain
    # basicConfig a no-op and left train.log empty. The console shows INFO and up; train.log also gets
    # the DEBUG records of errors reported otherwise (a failed checkpoint write's tracebacks).
    console = logging.StreamHandler()
    console.setLevel(logging.INFO)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(os.path.join(workdir, log_name)), console], force=True)
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not a traceback
    for noisy in ("absl", "jax._src.xla_bridge", "orbax", "fsspec", "gcsfs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        notice = cpu_notice()
    except Exception:  # noqa: BLE001 - advisory only: the run itself reports a bad config in one sentence
        notice = None
    if notice:
        logging.getLogger("exit_jax").warning(notice)
    try:
        metrics = gin_cli.call(loop.train)
    except loop.Interrupted as e:
        print(f"exit_jax: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(f"done: {run_dir} (last reward {metrics.get('reward/mean', float('nan')):.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
