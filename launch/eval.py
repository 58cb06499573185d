"""Evaluate a run's latest checkpoint (or the untrained model) on held-out tasks; compare runs.

    python launch/eval.py --gin_file=math.gin                          # latest checkpoint of WORKDIR
    python launch/eval.py --gin_file=math.gin --gin.WORKDIR="'runs/base'" --initial  # the untrained model
    python launch/eval.py --compare runs/math_grpo runs/math_exit --out_dir runs/compare

Evaluation is the training command with no iterations left to run: the same gin files restore the same
model, domain and checkpoint, then `evaluate.evaluate_and_report` writes WORKDIR/eval.json and the plots
(paper: math K=16, tool use K=4, MLE greedy search K=16). A WORKDIR without a checkpoint is refused (a
mistyped path would otherwise evaluate the untrained model without a word); `--initial` evaluates the
initial model there on purpose (the paper's "Base model" row).
"""
import sys

import gin_cli


def main(argv):
    if argv and argv[0] == "--compare":
        from exit_jax.evaluation import compare
        return compare.main(argv[1:])
    initial = "--initial" in argv
    args = gin_cli.parse_args([a for a in argv if a != "--initial"], __doc__)
    args.gin_bindings.append("loop.RunConfig.num_iterations = 0")  # restore and evaluate only
    # Keep every checkpoint: evaluation must never delete anything.
    args.gin_bindings.append("loop.RunConfig.keep_checkpoints = None")
    gin_cli.maybe_initialize_distributed()
    gin_cli.enable_compilation_cache()
    gin_cli.tune_malloc()
    gin_cli.parse(args)
    from exit_jax import storage
    from exit_jax.training import loop
    workdir = gin_cli.run_workdir(args)  # a local directory or a bucket (gs://)
    if not initial and not storage.relative_files(storage.join(workdir, "checkpoints")):
        raise gin_cli.ConfigError(f"WORKDIR {workdir} holds no checkpoint: check the path, or pass --initial "
                                  "to evaluate the untrained model there.")
    gin_cli.call(loop.train)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
