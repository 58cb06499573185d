"""Compile one training iteration for a TPU slice ahead of time, on this (CPU) host, and check that it fits.

    python launch/compile.py --gin_file=tool_use.gin --gin_file=models/qwen2_5_7b.gin --topology=v5p-8
    python launch/compile.py --gin_file=math.gin --gin_file=models/llama3_2_3b.gin --topology=v5e-16 \\
        --gin.learner.LearnerConfig.micro_batch_size=2 [--num_slices=1] [--json=out.json]

Same gin flags as launch/train.py. Needs the TPU compiler (pip install -e ".[tpu]"), no TPU and no
weights (shapes come from the model preset or a local config.json). Prints, per program and per chip, the
HBM it needs (arguments, temporaries, outputs, and the learner state that stays resident while sampling),
its FLOPs and bytes, a roofline time, then an estimate of one iteration and of the update's MFU. Exits 1
with one sentence when a program does not fit a chip's HBM. See docs/tpu.md.
"""
import argparse
import json
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU is only described, never opened
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off a TPU VM

import gin  # noqa: E402

import gin_cli  # noqa: E402

GB = 2 ** 30  # GiB, as the TPU compiler counts


def run_shape():
    from exit_jax.sampling import prompt_bucket
    from exit_jax.tpu.aot import RunShape
    from exit_jax.sampling import text_policy as policy
    from exit_jax.training import loop
    run = gin.get_configurable(loop.RunConfig)()
    sampling = gin.get_configurable(policy.SamplingConfig)()
    try:
        dtype = gin.query_parameter("loop.train.model_dtype")
    except ValueError:
        dtype = "float32"
    return RunShape(run.prompts_per_iteration, run.group_size,
                    prompt_bucket(sampling.max_prompt_tokens, sampling.min_bucket), sampling.max_new_tokens,
                    dtype, sampling.prefill_chunks, sampling.prompts_per_call, sampling.attention)


def model_flops(config, cfg, shape) -> float:
    """Model FLOPs of one update, as launch/bench_e2e.py counts them: 6 per parameter per token through
    the decoder and through the vocabulary head for the scored (response) tokens only, 2 more per
    parameter per token for a reference forward; no attention, no recomputation. With LoRA the frozen
    weights take no gradient: 4 per parameter (the adapters' own FLOPs are under 1% at rank 64)."""
    rows = shape.prompts * shape.group
    body, head = config.matmul_params()
    per_token = (6 if cfg.lora is None else 4) + (2 if cfg.kl_beta > 0 else 0)
    return per_token * cfg.epochs * rows * (body * (shape.prompt_len + shape.new_tokens) + head * shape.new_tokens)


def main(argv):
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--topology", required=True, help="v4-8, v5e-8, v5p-8, v6e-8, v5e-16, ... or v5e:2x4")
    p.add_argument("--num_slices", type=int, default=1)
    p.add_argument("--json", default="", help="also write the reports to this file")
    ours, rest = p.parse_known_args(argv)
    args = gin_cli.parse_args(rest, __doc__)
    gin_cli.parse(args)
    import dataclasses
    from exit_jax.models import load_config
    from exit_jax.rl.learner import LearnerConfig
    from exit_jax.tpu import aot, chips
    try:
        chip = chips.chip_of(ours.topology)
        devices = aot.tpu_devices(ours.topology, ours.num_slices)
        config = load_config(gin_cli.query_macro("MODEL", args))
        shape = run_shape()
        cfg = dataclasses.replace(gin.get_configurable(LearnerConfig)(), group_size=shape.group)
        if cfg.parallel != "fsdp":
            raise ValueError(f"LearnerConfig.parallel={cfg.parallel!r}: a TPU slice runs the 'fsdp' learner "
                             "(the model gins under gin/models/ set it).")
        cfg = aot.planned(config, cfg, shape, len(devices) // cfg.tensor_parallel, chip.hbm_bytes)
        reports = aot.compile_iteration(config, cfg, shape, devices)
    except (ValueError, RuntimeError) as e:
        raise gin_cli.ConfigError(str(e).strip().splitlines()[0]) from None
    n = len(devices)
    print(f"{config.name} ({config.num_params() / 1e9:.2f}B params) on {ours.topology} x{ours.num_slices}: "
          f"{n} {chip.name} devices, {chip.hbm_bytes / GB:.2f} GiB of HBM usable each | P={shape.prompts} "
          f"G={shape.group} prompt {shape.prompt_len} + response {shape.new_tokens} tokens, model {shape.model_dtype} "
          f"| learner compute {cfg.compute_dtype}, params {cfg.param_dtype}, remat {cfg.remat} "
          f"({cfg.remat_policy}), scan {cfg.scan_layers}, micro-batch {cfg.micro_batch_size}, kl {cfg.kl_beta}, "
          f"epochs {cfg.epochs}, tensor {cfg.tensor_parallel}, attention {cfg.attention}")
    head = ("program", "args GiB", "temp GiB", "out GiB", "resident GiB", "total GiB", "% HBM", "TFLOP",
            "HBM GiB", "roofline s", "compile s")
    print("  ".join(f"{h:>11s}" for h in head))
    for r in reports:
        name = r.name + (f" x{r.repeats}" if r.repeats > 1 else "")
        if r.error:
            print(f"{name:>11s}  does not fit: {r.error}")
            continue
        cells = (r.argument_bytes / GB, r.temp_bytes / GB, (r.output_bytes - r.alias_bytes) / GB,
                 r.resident_bytes / GB, r.total_bytes / GB, 100 * r.total_bytes / chip.hbm_bytes,
                 r.flops / 1e12, r.bytes_accessed / GB, r.roofline_s(chip), r.compile_s)
        print(f"{name:>11s}  " + "  ".join(f"{c:11.2f}" for c in cells))
    failed = [r for r in reports if r.error]
    iteration = sum(r.roofline_s(chip) for r in reports)
    update = next(r for r in reports if r.name == "update")
    mfu = model_flops(config, cfg, shape) / n / (update.roofline_s(chip) * chip.bf16_flops) if update.flops else 0
    if not failed:
        print(f"iteration >= {iteration:.1f} s (roofline, no collectives or host work); update MFU <= {mfu:.0%}")
    if ours.json:
        with open(ours.json, "w") as f:
            json.dump({"topology": ours.topology, "num_slices": ours.num_slices, "chip": chip.name,
                       "chips": n, "model": config.name, "shape": dataclasses.asdict(shape),
                       "learner": dataclasses.asdict(cfg), "iteration_roofline_s": iteration, "update_mfu": mfu,
                       "programs": [dataclasses.asdict(r) | {"total_bytes": r.total_bytes} for r in reports]},
                      f, indent=1)
    if failed:
        print(f"error: {failed[0].name} does not fit a {chip.name} device's HBM: the TPU compiler reports "
              f"{failed[0].error}.", file=sys.stderr)
        return 1
    worst = max(reports, key=lambda r: r.total_bytes)
    if worst.total_bytes > chip.hbm_bytes:
        over = worst.total_bytes - chip.hbm_bytes
        print(f"error: {worst.name} needs {worst.total_bytes / GB:.2f} GiB per {chip.name} device, "
              f"{over / GB:.2f} GiB ({math.ceil(100 * over / chip.hbm_bytes)}%) more than the "
              f"{chip.hbm_bytes / GB:.2f} GiB the compiler allows.", file=sys.stderr)
        return 1
    print(f"fits: peak {worst.total_bytes / GB:.2f} GiB ({worst.name}), headroom "
          f"{1 - worst.total_bytes / chip.hbm_bytes:.0%} of {chip.hbm_bytes / GB:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
