"""Parallel modes of the GRPO update (`LearnerConfig.parallel`): the compiled update, and putting the
state and batch on devices and the params back on the host. See `rl.learner` for what each mode does;
all give the single-device result.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from exit_jax.models import transformer
from exit_jax.models.config import ModelConfig
from exit_jax.rl.learner import (AXIS, OPTIONAL_KEYS, REQUIRED_KEYS, TENSOR, Batch, LearnerConfig,
                                 TrainState, init_state, update_step)

log = logging.getLogger(__name__)


def process_devices() -> np.ndarray:
    """Every process's devices: row p holds process p's, in jax.devices() order."""
    return np.array([[d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())])


def make_mesh(devices=None, tensor: int = 1) -> jax.sharding.Mesh:
    """The device mesh of the learner and the sampler over `devices` (default: every device of every
    process, process by process; launch/compile.py passes a TPU slice's abstract devices). tensor == 1:
    one axis "data" (FSDP and rows). tensor > 1: axes ("data", "tensor"), consecutive devices forming a
    tensor-parallel group (on a slice, neighbours on the interconnect). Auto axes: classic GSPMD
    propagation."""
    devices = np.asarray(process_devices().reshape(-1) if devices is None else devices)
    if tensor < 1 or devices.size % tensor:
        raise ValueError(f"LearnerConfig.tensor_parallel={tensor} must divide the {devices.size} devices.")
    auto = jax.sharding.AxisType.Auto
    # Devices are taken in their given order: jax.make_mesh's topology-aware ordering refuses some of
    # libtpu's compile-only slice descriptions (a v4 slice described per TensorCore).
    if tensor == 1:
        return jax.sharding.Mesh(devices, (AXIS,), axis_types=(auto,))
    return jax.sharding.Mesh(devices.reshape(-1, tensor), (AXIS, TENSOR), axis_types=(auto, auto))


# Megatron-style tensor parallelism: the dimension of each weight split over the "tensor" axis. Column-
# parallel q/k/v/gate/up and the vocabulary head split their outputs (heads, MLP columns, vocabulary),
# row-parallel o/down their inputs, so a layer needs one reduction of its output per block.
_TENSOR_DIM = {"q": -1, "k": -1, "v": -1, "gate": -1, "up": -1, "lm_head": -1, "o": -2, "down": -2,
               "embed": -2}


def _spec(path, shape, mesh) -> P:
    """A leaf's sharding: its tensor-parallel dimension over "tensor" (when the mesh has one and it
    divides), then the largest other dimension that divides evenly over "data" (ZeRO-3 style); small
    leaves are replicated."""
    dims = [None] * len(shape)
    tensor = mesh.shape.get(TENSOR, 1)
    names = [getattr(k, "key", None) for k in path]
    module = names[-2] if len(names) > 1 else None
    # A column-parallel bias splits with its outputs; a row-parallel one (o, with attention_bias) is
    # added after the reduction, so it stays whole.
    split = names[-1] in ("kernel", "embedding") or (names[-1] == "bias" and _TENSOR_DIM.get(module) == -1)
    if tensor > 1 and module in _TENSOR_DIM and split:
        d = _TENSOR_DIM[module] % len(shape)
        if shape[d] % tensor == 0:
            dims[d] = TENSOR
    n = mesh.shape[AXIS]
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if dims[d] is None and shape[d] >= n and shape[d] % n == 0:
            dims[d] = AXIS
            break
    while dims and dims[-1] is None:  # P("data") rather than P("data", None): the same layout, one spelling
        dims.pop()
    return P(*dims)


def state_shardings(state, mesh):
    """NamedSharding for every leaf of a state or params tree (arrays, tracers or ShapeDtypeStructs),
    from its path (the weight it is, or the optimizer moment of) and shape."""
    return jax.tree_util.tree_map_with_path(lambda path, x: NamedSharding(mesh, _spec(path, x.shape, mesh)),
                                            state)


def make_update(model_config: ModelConfig, cfg: LearnerConfig,
                mesh=None) -> Callable[[TrainState, Batch], tuple]:
    """The compiled update for cfg.parallel: fn(placed_state, placed_batch) -> (state, metrics).

    The state argument is donated (its buffers are reused for the new state).
    """
    if cfg.parallel == "single":
        return jax.jit(functools.partial(update_step, model_config=model_config, cfg=cfg),
                       donate_argnums=0)
    if cfg.parallel == "pmap":
        step = jax.pmap(functools.partial(update_step, model_config=model_config, cfg=cfg,
                                          axis_name=AXIS), axis_name=AXIS, donate_argnums=0)

        def pmapped(state, batch):
            state, metrics = step(state, batch)
            return state, jax.tree.map(lambda x: x[0], metrics)  # metrics are identical per device
        return pmapped
    mesh = make_mesh(tensor=cfg.tensor_parallel) if mesh is None else mesh

    def fsdp(state, batch):
        state, metrics = update_step(state, batch, model_config, cfg, num_shards=mesh.shape[AXIS], mesh=mesh)
        return jax.lax.with_sharding_constraint(state, state_shardings(state, mesh)), metrics
    return jax.jit(fsdp, donate_argnums=0)


def compile_ahead(update, state: TrainState, batch: Batch, cfg: LearnerConfig, executor, mesh=None):
    """Compile `update` (from make_update) for `batch`'s shapes on an executor's thread, so that the compile
    overlaps other work (the rollout that will produce a batch of those shapes). jit keeps the executable:
    the later call with a real batch of the same shapes and placement runs it without compiling again.
    Returns the Future (wait for it before that call, or the call compiles the same program again), or None
    for pmap, which cannot be lowered ahead of its call. The state's values are only read for their shapes
    and placement. A failure is only logged: the update's own call then compiles and reports the error."""
    if cfg.parallel == "pmap":
        return None
    placed = place_batch(batch, cfg, mesh)

    def compile_():
        try:
            update.lower(state, placed).compile()
        except Exception as e:  # noqa: BLE001
            log.debug("compiling the update ahead failed (%s); it compiles on its call", e)
    return executor.submit(compile_)


def init_sharded(params, cfg: LearnerConfig, mesh) -> TrainState:
    """learner.init_state built straight into its FSDP shards: each device receives its slice of the
    params and computes its slice of the state; the whole state never exists on one device (a 7B model's
    float32 params and Adam moments are 91 GB). The params may be host arrays (the same on every process)
    or already in their shards (models.load with shardings)."""
    shardings = state_shardings(params, mesh)
    params = jax.tree.map(lambda x, sharding: x if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(
        sharding, x.ndim) else _put(x, sharding), params, shardings)
    shapes = jax.eval_shape(lambda p: init_state(p, cfg), params)
    fn = jax.jit(init_state, static_argnums=1, in_shardings=(shardings,),
                 out_shardings=state_shardings(shapes, mesh))
    return fn(params, cfg)


def _put(x, sharding) -> jax.Array:
    """A host-identical value into its shards (multi-host safe: each process writes its devices' slices)."""
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_state(state: TrainState, cfg: LearnerConfig, mesh=None) -> TrainState:
    """Put a host-identical state on devices: replicated (pmap) or sharded (fsdp; multi-host safe)."""
    if cfg.parallel == "single":
        return jax.device_put(state)
    if cfg.parallel == "pmap":  # one copy per local device, stacked on a leading axis
        devices = jax.local_devices()
        local = NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)), P(AXIS))
        return jax.tree.map(lambda x: jax.device_put(
            np.broadcast_to(np.asarray(x), (len(devices),) + x.shape), local), state)
    mesh = make_mesh(tensor=cfg.tensor_parallel) if mesh is None else mesh
    return jax.tree.map(_put, state, state_shardings(state, mesh))


def place_batch(batch: Batch, cfg: LearnerConfig, mesh=None) -> Batch:
    """Put the batch on the devices. Every process holds the whole batch (multi-host: the same one on each)
    and feeds its own devices' rows."""
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    unknown = [k for k in batch if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if missing or unknown:
        raise ValueError(f"GRPO batch is missing keys {missing} / has unknown keys {unknown}; "
                         f"expected {REQUIRED_KEYS} plus optionally {OPTIONAL_KEYS}.")
    dtypes = {"tokens": np.int32, "input_mask": bool, "completion_mask": bool, "sample_mask": bool}
    batch = {k: np.asarray(v, dtypes.get(k, np.float32)) for k, v in batch.items()}
    rows = batch["tokens"].shape[0]
    for k, v in batch.items():
        if v.shape[:1] != (rows,) or (v.ndim == 2) != (k in REQUIRED_KEYS[:4]):
            raise ValueError(f"GRPO batch field {k!r} has shape {v.shape}; expected "
                             f"{'[B, L]' if k in REQUIRED_KEYS[:4] else '[B]'} with B={rows}.")
    length, width = batch["tokens"].shape[1], batch["completion_mask"].shape[1]
    if batch["input_mask"].shape[1] != length or batch["old_logprobs"].shape[1] != width or width > length:
        raise ValueError(f"GRPO batch: tokens and input_mask must be [B, L], completion_mask and "
                         f"old_logprobs [B, W] over the last W <= L columns; got L={length}, W={width}, "
                         f"old_logprobs {batch['old_logprobs'].shape}.")
    if cfg.parallel == "single":
        return jax.device_put(batch)
    if cfg.parallel == "pmap":
        n, hosts = jax.local_device_count(), jax.process_count()
        if rows % (n * hosts):
            raise ValueError(f"batch of {rows} rows does not split over {n * hosts} devices.")
        mine = slice(jax.process_index() * rows // hosts, (jax.process_index() + 1) * rows // hosts)
        return jax.tree.map(lambda x: x[mine].reshape((n, rows // hosts // n) + x.shape[1:]), batch)
    sharding = NamedSharding(make_mesh(tensor=cfg.tensor_parallel) if mesh is None else mesh, P(AXIS))
    return jax.tree.map(lambda x: _put(x, sharding), batch)


@functools.partial(jax.jit, static_argnums=(1, 2))
def sampler_params(params, dtype, mesh):
    """The FSDP learner's params as the sampler reads them, without leaving the devices: per-layer
    layout, in the model's dtype, sharded like the learner's (XLA gathers each weight where it is used)."""
    out = jax.tree.map(lambda x: x.astype(dtype), transformer.unstack_layers(params))
    return jax.lax.with_sharding_constraint(out, state_shardings(out, mesh))


def process_sampler_params(params, dtype, local_mesh):
    """Several processes: the FSDP learner's params as this process's sampler reads them on its own
    devices (`local_mesh`, over process_devices()[this process]): the whole model, split over those
    devices as the learner splits it, gathered device to device (no host copy). The devices viewed as
    [processes, devices per process] give the layout (copies over processes, FSDP within each); each
    process then reads its own shards as an array on its own mesh."""
    grid = jax.sharding.Mesh(process_devices(), ("processes", AXIS))
    out = sampler_params(params, dtype, grid)
    return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
        x.shape, NamedSharding(local_mesh, x.sharding.spec), [s.data for s in x.addressable_shards]), out)


def host_params(state: TrainState, cfg: LearnerConfig):
    """The current params as host numpy arrays in the per-layer layout, whatever the parallel mode and
    layer layout (gathers across hosts)."""
    params = state.params
    if cfg.parallel == "pmap":
        params = jax.tree.map(lambda x: x[0], params)
    leaves = jax.tree.leaves(params)
    if leaves and not all(x.is_fully_addressable for x in leaves if isinstance(x, jax.Array)):
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(params, tiled=True)
    return transformer.unstack_layers(jax.tree.map(np.asarray, params))
