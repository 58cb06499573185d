"""Ahead-of-time TPU compilation on this CPU host (libtpu's compiler, no TPU): a run's programs compile for
real TPU topologies, fit, and report costs; launch/compile.py prints the table and fails in one sentence."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from exit_jax.models.config import preset
from exit_jax.rl import parallel
from exit_jax.rl.learner import LearnerConfig
from exit_jax.tpu import aot, chips

pytest.importorskip("libtpu", reason="the TPU compiler: pip install -e '.[tpu]'")
LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
TPU_CFG = LearnerConfig(parallel="fsdp", compute_dtype="bfloat16", remat=True, scan_layers=True,
                        micro_batch_size=2, kl_beta=0.001, group_size=4, vocab_chunk=16)


def test_topology_names_resolve_and_bad_ones_say_what_is_expected():
    assert chips.topology_name("v5e-8") == "v5e:2x4" and chips.topology_name("v4:2x2x1") == "v4:2x2x1"
    usable = [chips.chip_of(t).hbm_bytes / chips.GIB for t in ("v4-8", "v5e-8", "v6e-8", "v5p-8")]
    assert 15 < usable[1] < 16 < usable[0] < 32 and usable[-1] > 90  # v5e < v4 < v6e < v5p
    assert len(aot.tpu_devices("v4-8")) == 4 and len(aot.tpu_devices("v5p-8")) == 4  # one per chip
    with pytest.raises(ValueError, match="slice name"):
        chips.topology_name("v9-8")


@pytest.mark.parametrize("topology,tensor", [("v5e:2x2", 1), ("v4:2x2x1", 1), ("v5e:2x2", 2)])
def test_a_multi_layer_iteration_compiles_for_tpu_and_fits(topology, tensor):
    """Prefill and update through the Pallas splash kernel (the TPU default), on a 1-D mesh and on a
    data x tensor mesh."""
    config = dataclasses.replace(preset("tiny"), num_layers=4, hidden_size=128, intermediate_size=256,
                                 num_heads=4, num_kv_heads=2, head_dim=32, name="tiny-4-layer")
    shape = aot.RunShape(prompts=8, group=4, prompt_len=64, new_tokens=32)
    cfg = dataclasses.replace(TPU_CFG, tensor_parallel=tensor)
    reports = {r.name: r for r in aot.compile_iteration(config, cfg, shape, aot.tpu_devices(topology))}
    assert set(reports) == {"prefill", "decode", "update"}
    chip = chips.chip_of(topology)
    for r in reports.values():
        assert 0 < r.total_bytes < chip.hbm_bytes and r.flops > 0 and r.bytes_accessed > 0
    # Training FLOPs of the update: at least 6 x params x tokens, split over the chips.
    tokens = shape.prompts * shape.group * (shape.prompt_len + shape.new_tokens)
    n = len(aot.tpu_devices(topology))
    assert reports["update"].flops >= 6 * config.num_params() * tokens / n * 0.5
    assert reports["decode"].repeats == shape.new_tokens - 1
    # The learner state is sharded over the chips and charged to the sampler while it runs.
    state = aot.abstract_state(config, cfg, parallel.make_mesh(aot.tpu_devices(topology), tensor))
    assert reports["decode"].resident_bytes == aot.per_chip_bytes(state)
    assert aot.per_chip_bytes(state) < 1.2 * 12 * config.num_params() / n + 2e6  # f32 params + 2 moments


def run_compile(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, os.path.join(LAUNCH, "compile.py"), "--gin_file=quickstart.gin",
                           "--gin_file=models/smoke.gin", "--gin.learner.LearnerConfig.parallel='fsdp'",
                           "--gin.learner.LearnerConfig.scan_layers=True", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_compile_cli_prints_the_table_and_fails_in_one_sentence(tmp_path):
    out = tmp_path / "fit.json"
    ok = run_compile("--topology=v5e-4", f"--json={out}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "fits: peak" in ok.stdout and "update MFU" in ok.stdout
    rec = json.loads(out.read_text())
    assert rec["chips"] == 4 and [p["name"] for p in rec["programs"]] == ["prefill", "decode", "update"]
    # A prompt cap that cannot fit: exit 1 with the program and the overshoot, no traceback.
    big = run_compile("--topology=v5e-4", "--gin.policy.SamplingConfig.max_prompt_tokens=65536",
                      "--gin.loop.RunConfig.prompts_per_iteration=64")
    assert big.returncode == 1 and "Traceback" not in big.stderr
    assert "does not fit a v5e device" in big.stderr and "HBM" in big.stderr
    bad = run_compile("--topology=v9-8")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "slice name" in bad.stderr


def test_chunked_head_costs_match_the_whole_vocabulary_probe():
    """A probe that cannot hold the whole vocabulary's logits runs its head in chunks under a loop, which
    the cost analysis counts once; the measured per-chunk correction restores the FLOPs."""
    config = dataclasses.replace(preset("tiny"), num_layers=1, hidden_size=128, intermediate_size=256,
                                 num_heads=4, num_kv_heads=2, head_dim=32, vocab_size=4096, name="tiny-vocab")
    mesh = parallel.make_mesh(aot.tpu_devices("v5e:2x2"))
    cfg = dataclasses.replace(TPU_CFG, scan_layers=False, epochs=1, micro_batch_size=1, vocab_chunk=8)
    shape = aot.RunShape(prompts=4, group=1, prompt_len=32, new_tokens=64)
    state, batch = aot.abstract_state(config, cfg, mesh), aot.abstract_batch(shape, mesh)
    whole = aot._costs(aot._compile(parallel.make_update(config, dataclasses.replace(cfg, vocab_chunk=0), mesh),
                                    state, batch)[0])
    looped = aot._costs(aot._compile(parallel.make_update(config, cfg, mesh), state, batch)[0])
    corrected = aot._chunked_costs(config, cfg, state, batch, mesh, shape.new_tokens)
    assert looped[0] < 0.8 * whole[0]  # the loop hides most of the head (7 of 8 chunks)
    # The chunked head really does more: its logits are recomputed in the backward pass.
    assert whole[0] < corrected[0] < 1.4 * whole[0], (corrected, whole)
    # Whatever the chunk size, the same total.
    other = aot._chunked_costs(config, dataclasses.replace(cfg, vocab_chunk=16), state, batch, mesh, shape.new_tokens)
    assert abs(other[0] / corrected[0] - 1) < 0.02, (other, corrected)


def test_lora_state_and_sampler_compile_with_a_bfloat16_base():
    config = dataclasses.replace(preset("tiny"), num_layers=2, hidden_size=128, intermediate_size=256,
                                 num_heads=4, num_kv_heads=2, head_dim=32, name="tiny-2-layer")
    shape = aot.RunShape(prompts=8, group=4, prompt_len=64, new_tokens=32)
    cfg = dataclasses.replace(TPU_CFG, lora_rank=4)
    reports = {r.name: r for r in aot.compile_iteration(config, cfg, shape, aot.tpu_devices("v5e:2x2"))}
    assert not any(r.error for r in reports.values())
    state = aot.abstract_state(config, cfg, parallel.make_mesh(aot.tpu_devices("v5e:2x2")))
    full = aot.abstract_state(config, dataclasses.replace(cfg, lora_rank=0), parallel.make_mesh(
        aot.tpu_devices("v5e:2x2")))
    # bfloat16 base (2 bytes per param) + small adapters, instead of 12 (float32 params, 2 moments) + 2.
    assert aot.per_chip_bytes(state) < 0.25 * aot.per_chip_bytes(full)
