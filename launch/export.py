"""Export a run's latest checkpoint for other tools: OUT/hf (a Hugging Face directory, LoRA adapters merged
into the weights) and, for a LoRA run, OUT/adapter (a PEFT adapter folder for the base model).

    python launch/export.py --gin_file=math.gin --out=exported/math
    python launch/export.py --gin_file=mle.gin --gin.WORKDIR="'gs://bucket/runs/mle'" --out=exported/mle

The same gin files as the run restore the same model and checkpoint; nothing is trained or evaluated.
"""
import sys

import gin_cli


def main(argv):
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("--out=")]
    if len(outs) != 1 or not outs[0]:
        raise gin_cli.ConfigError("pass the export directory once, as --out=DIR.")
    args = gin_cli.parse_args([a for a in argv if not a.startswith("--out=")], __doc__)
    args.gin_bindings += ["loop.RunConfig.num_iterations = 0", "loop.RunConfig.keep_checkpoints = None",
                          f"loop.RunConfig.export_dir = {outs[0]!r}", "loop.train.evaluate = None"]
    gin_cli.maybe_initialize_distributed()
    gin_cli.enable_compilation_cache()
    gin_cli.parse(args)
    from exit_jax import storage
    from exit_jax.training import loop
    workdir = gin_cli.run_workdir(args)
    if not storage.relative_files(storage.join(workdir, "checkpoints")):
        raise gin_cli.ConfigError(f"WORKDIR {workdir} holds no checkpoint to export: check the path.")
    gin_cli.call(loop.train)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
