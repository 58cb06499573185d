"""Ahead-of-time compilation of the programs one training iteration runs, for a TPU topology, on any host.

With libtpu installed (`pip install -e ".[tpu]"`), `jax.experimental.topologies` describes the devices of
a TPU slice without owning one; `jax.jit(f).lower(<abstract, sharded args>).compile()` then runs the real
TPU compiler, and the compiled program reports its memory per chip and its FLOPs and bytes per chip. No
weights are needed: shapes come from the model config. The programs and their inputs are the run's own:

    prefill  sampling.sampler._prefill_impl: the prompts of one sampler call (P, or
             SamplingConfig.prompts_per_call) at the prompt cap -> the decode state
    decode   sampling.sampler._decode_impl: the while-loop emitting up to N tokens for that call's rows
    update   rl.parallel.make_update: one GRPO iteration on [P*G, Lp + N] rows (learner.update_step)

During sampling the learner's state stays on the chips, so the sampler programs are charged for it too
("resident"). XLA's cost analysis counts a loop body once: the decode's FLOPs and bytes are one token's (the
time estimate multiplies them by N and by the sampler calls per iteration), and the update's loops (epochs,
micro-batches, scanned layers, vocabulary chunks) would hide nearly all of its work. Its costs therefore come
from two loop-free probes, one micro-batch of one epoch through 1 and through 2 unrolled layers, extrapolated
to the model's depth and multiplied by the micro-batches and epochs; its memory comes from the real program.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from exit_jax.models import flash, lora, transformer
from exit_jax.models.config import ModelConfig
from exit_jax.rl import learner as learner_lib, memory, parallel
from exit_jax.sampling import sampler as sampler_lib
from exit_jax.sampling.methods import SamplingKnobs
from exit_jax.tpu import chips


@dataclasses.dataclass(frozen=True)
class RunShape:
    """The sizes of one iteration that fix every compiled shape."""
    prompts: int  # P per iteration
    group: int  # G samples per prompt
    prompt_len: int  # Lp: the prompt cap, rounded up to its bucket
    new_tokens: int  # N: the response cap
    model_dtype: str = "bfloat16"  # sampler params, compute and KV cache
    prefill_chunks: int = 1  # SamplingConfig.prefill_chunks
    prompts_per_call: int = 0  # SamplingConfig.prompts_per_call (0: all P in one sampler call)
    attention: str = "auto"  # SamplingConfig.attention


@dataclasses.dataclass(frozen=True)
class Report:
    """One compiled program: per-chip bytes and costs as the compiler states them."""
    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int  # outputs written into donated arguments (counted once)
    resident_bytes: int  # other programs' buffers alive meanwhile (the learner state while sampling)
    flops: float  # per chip, per run of the program (a loop body once)
    bytes_accessed: float
    repeats: int  # times the costed body runs per iteration (decode: N)
    compile_s: float
    error: str = ""  # the compiler's refusal (e.g. out of HBM); the byte and cost fields are then 0

    @property
    def total_bytes(self) -> int:
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.resident_bytes)

    def roofline_s(self, chip: chips.Chip) -> float:
        return self.repeats * max(self.flops / chip.bf16_flops, self.bytes_accessed / chip.hbm_bytes_per_s)


def tpu_devices(topology: str, num_slices: int = 1) -> list:
    """The abstract devices of a TPU slice (needs libtpu; no TPU)."""
    from jax.experimental import topologies
    # Compiling never opens a TPU, so several processes (tests, a table's runs) may load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    name = chips.topology_name(topology)
    # libtpu describes v4 per TensorCore unless asked for megacore, the mode JAX uses on v4 VMs (v5p's
    # description is megacore already): one device per chip, as a run sees it.
    megacore = {"chip_config_name": "megacore"} if name.startswith("v4:") else {}
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=name, num_slices=num_slices,
                                            **megacore)
    except Exception as e:  # libtpu missing or the name unknown to it
        raise RuntimeError(f"cannot describe TPU topology {name!r} ({type(e).__name__}: {e}); "
                           "install the compiler with pip install -e '.[tpu]'.") from None
    return list(desc.devices)


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_state(config: ModelConfig, cfg: learner_lib.LearnerConfig, mesh: Mesh):
    """The learner's TrainState as sharded ShapeDtypeStructs, built without allocating anything."""
    params = jax.eval_shape(functools.partial(transformer.init_params, config))
    state = jax.eval_shape(lambda p: learner_lib.init_state(p, cfg), params)
    return _abstract(state, parallel.state_shardings(state, mesh))


def abstract_batch(shape: RunShape, mesh: Mesh) -> dict:
    rows, width = shape.prompts * shape.group, shape.prompt_len + shape.new_tokens
    data = NamedSharding(mesh, P(learner_lib.AXIS))
    spec = {"tokens": ((rows, width), jnp.int32), "input_mask": ((rows, width), bool),
            "completion_mask": ((rows, shape.new_tokens), bool),
            "old_logprobs": ((rows, shape.new_tokens), jnp.float32), "advantages": ((rows,), jnp.float32),
            "advantage_multiplier": ((rows,), jnp.float32), "sample_mask": ((rows,), bool)}
    return {k: jax.ShapeDtypeStruct(s, d, sharding=data) for k, (s, d) in spec.items()}


class OutOfMemory(Exception):
    """The TPU compiler refused a program: it cannot fit the chip's HBM at all."""


def _compile(fn: Callable, *args) -> tuple[Any, float]:
    t = time.perf_counter()
    try:
        compiled = fn.lower(*args).compile()
    except Exception as e:  # XlaRuntimeError: RESOURCE_EXHAUSTED ... Ran out of memory on HBM
        if "memory" not in str(e):
            raise
        message = str(e).split("Ran out of memory", 1)[-1].strip().splitlines()[0].rstrip(".")
        raise OutOfMemory(f"out of memory {message}") from None
    return compiled, time.perf_counter() - t


def _compile_report(name, fn, *args, resident=0, repeats=1) -> tuple[Any, Report]:
    try:
        compiled, seconds = _compile(fn, *args)
    except OutOfMemory as e:
        return None, Report(name, 0, 0, 0, 0, resident, 0.0, 0.0, repeats, 0.0, str(e))
    return compiled, _report(name, compiled, seconds, resident, repeats)


def _report(name, compiled, seconds, resident=0, repeats=1) -> Report:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Report(name, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes,
                  mem.alias_size_in_bytes, resident, float(cost.get("flops", 0.0)),
                  float(cost.get("bytes accessed", 0.0)), repeats, seconds)


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of a tree of sharded ShapeDtypeStructs."""
    def one(x):
        shard = x.sharding.shard_shape(x.shape)
        return int(np.prod(shard)) * jnp.dtype(x.dtype).itemsize
    return sum(one(x) for x in jax.tree.leaves(tree))


def compile_update(config, cfg, shape: RunShape, mesh) -> Report:
    state, batch = abstract_state(config, cfg, mesh), abstract_batch(shape, mesh)
    compiled, report = _compile_report("update", parallel.make_update(config, cfg, mesh), state, batch)
    if compiled is None:
        return report
    flops, bytes_accessed = update_costs(config, cfg, shape, mesh)
    return dataclasses.replace(report, flops=flops, bytes_accessed=bytes_accessed)


def update_costs(config, cfg, shape: RunShape, mesh) -> tuple[float, float]:
    """Per-chip FLOPs and bytes of the update, from loop-free probes (see the module doc)."""
    shards = mesh.shape[learner_lib.AXIS]
    rows = shape.prompts * shape.group
    n_micro, remat = learner_lib.micro_plan(cfg, config, rows, shards, shape.prompt_len + shape.new_tokens,
                                            shape.new_tokens, "tpu")  # the update's own split (and errors)
    micro, steps = rows // shards // n_micro, cfg.epochs * n_micro  # rows per device per micro-batch
    probe_cfg = dataclasses.replace(cfg, epochs=1, micro_batch_size=micro, remat=remat, scan_layers=False,
                                    group_size=None)
    probe_shape = dataclasses.replace(shape, prompts=micro * shards, group=1)
    costs = []
    for depth in (1, 2):
        probe = dataclasses.replace(config, num_layers=depth,  # every layer costed as the first ones
                                    layer_types=config.layer_types and config.layer_types[:depth])
        state, batch = abstract_state(probe, probe_cfg, mesh), abstract_batch(probe_shape, mesh)
        # The whole vocabulary at once (chunks would be a loop, costed once); if even one or two layers
        # cannot hold those logits, the chunked probe plus the chunks its loop leaves uncounted.
        try:
            compiled, _ = _compile(parallel.make_update(probe, dataclasses.replace(probe_cfg, vocab_chunk=0),
                                                        mesh), state, batch)
            costs.append(_costs(compiled))
        except OutOfMemory:
            costs.append(_chunked_costs(probe, probe_cfg, state, batch, mesh, shape.new_tokens))
    (f1, b1), (f2, b2) = costs
    layers = config.num_layers - 1
    return steps * (f1 + layers * (f2 - f1)), steps * (b1 + layers * (b2 - b1))


def _costs(compiled) -> tuple[float, float]:
    r = _report("probe", compiled, 0.0)
    return r.flops, r.bytes_accessed


def _chunked_costs(probe, cfg, state, batch, mesh, width: int) -> tuple[float, float]:
    """FLOPs and bytes of an update whose vocabulary head runs in chunks of c columns under a loop, which
    the cost analysis counts once. One chunk's cost is measured as twice the difference between the
    probes with chunks of c and of c/2 columns, and added for every chunk not counted. (The weight
    re-read per chunk is the part of the bytes this leaves out.)"""
    whole = _costs(_compile(parallel.make_update(probe, cfg, mesh), state, batch)[0])
    half = dataclasses.replace(cfg, vocab_chunk=max(cfg.vocab_chunk // 2, 1))
    halves = _costs(_compile(parallel.make_update(probe, half, mesh), state, batch)[0])
    uncounted = -(-width // cfg.vocab_chunk) - 1
    return tuple(w + 2 * (w - h) * uncounted for w, h in zip(whole, halves))


def compile_sampler(config, cfg, shape: RunShape, mesh, resident: int) -> list[Report]:
    """Prefill and decode on the mesh: prompts split over the data axis, params in the model dtype and
    sharded like the learner's (XLA gathers each layer's weights where it is used)."""
    dtype = jnp.dtype(shape.model_dtype)
    spec = sampler_lib.SamplerSpec(config, shape.group, shape.new_tokens, (0,), 0, dtype, mesh,
                                   learner_lib.AXIS, shape.prefill_chunks, decode_reduce=False,
                                   attention=flash.resolve(shape.attention, "tpu"), lora=cfg.lora)
    params = jax.eval_shape(functools.partial(transformer.init_params, config, param_dtype=dtype))
    if cfg.lora is not None:  # the learner's base and adapters, read unmerged
        params = jax.eval_shape(lambda p: lora.combine(p, jax.tree.map(
            lambda x: x.astype(dtype), lora.init(p, cfg.lora))), params)
    params = _abstract(params, parallel.state_shardings(params, mesh))
    shards = mesh.shape[learner_lib.AXIS]
    per_call = min(shape.prompts_per_call or shape.prompts, shape.prompts)
    calls = -(-shape.prompts // per_call)
    num_p = sampler_lib.padded_prompts(spec, per_call)
    data, rep = NamedSharding(mesh, P(learner_lib.AXIS)), NamedSharding(mesh, P())
    tokens = jax.ShapeDtypeStruct((num_p, shape.prompt_len), jnp.int32, sharding=data)
    mask = jax.ShapeDtypeStruct((num_p, shape.prompt_len), bool, sharding=data)
    index = jax.ShapeDtypeStruct((num_p,), jnp.int32, sharding=data)
    scalar = lambda d: jax.ShapeDtypeStruct((), d, sharding=rep)  # noqa: E731
    knobs = SamplingKnobs(scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32), scalar(jnp.int32))
    prefill_args = (params, tokens, mask, index, scalar(jnp.uint32), knobs)
    prefill = jax.jit(sampler_lib._prefill_impl, static_argnums=0)
    compiled, report = _compile_report("prefill", prefill, spec, *prefill_args, resident=resident,
                                       repeats=calls)
    state = jax.eval_shape(functools.partial(sampler_lib._prefill_impl, spec), *prefill_args)
    # The decode state's layout: what the prefill produces (or, if it did not compile, rows split).
    state = _abstract(state, compiled.output_shardings if compiled else jax.tree.map(
        lambda x: data if x.ndim and x.shape[0] % shards == 0 else rep, state))
    decode = jax.jit(sampler_lib._decode_impl, static_argnums=0, donate_argnums=2)
    _, decode_report = _compile_report("decode", decode, spec, params, state, resident=resident,
                                       repeats=(shape.new_tokens - 1) * calls)
    return [report, decode_report]


def planned(config: ModelConfig, cfg: learner_lib.LearnerConfig, shape: RunShape, shards: int,
            hbm_bytes: int) -> learner_lib.LearnerConfig:
    """cfg with the micro-batch and remat it leaves open (0 / None) planned for chips of hbm_bytes."""
    budget = cfg.memory_budget_gb or hbm_bytes * memory.ACCELERATOR_SHARE / 2 ** 30
    cfg = dataclasses.replace(cfg, memory_budget_gb=budget)
    rows = shape.prompts * shape.group
    n_micro, remat = learner_lib.micro_plan(cfg, config, rows, shards, shape.prompt_len + shape.new_tokens,
                                            shape.new_tokens, "tpu")
    return dataclasses.replace(cfg, micro_batch_size=rows // shards // n_micro, remat=remat)


def compile_iteration(config: ModelConfig, cfg: learner_lib.LearnerConfig, shape: RunShape,
                      devices) -> list[Report]:
    """Every program of one iteration, for the given (abstract) devices."""
    mesh = parallel.make_mesh(devices, tensor=cfg.tensor_parallel)
    resident = per_chip_bytes(abstract_state(config, cfg, mesh))
    return compile_sampler(config, cfg, shape, mesh, resident) + [compile_update(config, cfg, shape, mesh)]
