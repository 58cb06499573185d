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


def main(argv):
    args = gin_cli.parse_args(argv, __doc__)
    gin_cli.maybe_initialize_distributed()
    gin_cli.enable_compilation_cache()
    gin_cli.tune_malloc()
    gin_cli.parse(args)
    from exit_jax.training import loop
    workdir = gin_cli.run_workdir(args)
    gin_cli.write_operative_config(workdir)
    # force: importing jax / orbax already gave the root logger a handler (absl's), which made a plain
    # basicConfig a no-op and left train.log empty.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(os.path.join(workdir, "train.log")),
                                  logging.StreamHandler()], force=True)
    for noisy in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        metrics = gin_cli.call(loop.train)
    except loop.Interrupted as e:
        print(f"exit_jax: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(f"done: {workdir} (last reward {metrics.get('reward/mean', float('nan')):.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
