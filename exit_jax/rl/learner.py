"""The GRPO update step: one per-device function, run on one device, under `jax.pmap`, or FSDP-sharded.

A batch is a dict of arrays over B = prompts x samples rows of L tokens (prompt, left-padded, then the
completion), exactly as the sampler produced them:

    tokens           int32 [B, L]
    input_mask       bool  [B, L]   real (non-padding) tokens
    completion_mask  bool  [B, W]   tokens whose log-prob is trained (token t is scored by logits at t-1),
                                    over the last W <= L columns of tokens: logits are computed there only
    old_logprobs     f32   [B, W]   the sampler's log-probs, aligned like completion_mask
    advantages       f32   [B]      paper Eq. 3
    advantage_multiplier f32 [B]    optional: the diversity coefficient (paper Eq. 6)
    sample_mask      bool  [B]      optional: False drops a sample (drop_zero_variance_groups)

Parallel modes ("parallel" in LearnerConfig), all giving the single-device result:
  single: one device.
  pmap:   data parallel; params replicated; each device sums its share of the loss, whose normalisers
          are global, and the gradients are psum'd (= pmean of per-device full-normaliser gradients).
  fsdp:   jit over a Mesh; the batch is split over its "data" axis and every param / optimizer-state
          leaf is sharded along its largest divisible dimension (ZeRO-3 style), and with tensor_parallel
          > 1 along its heads / MLP / vocabulary dimension over a "tensor" axis; XLA inserts the collectives.
`rl.parallel` compiles the update for a mode and puts the state and batch on its devices.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from exit_jax.models import flash, lora as lora_lib, transformer
from exit_jax.models.config import ModelConfig
from exit_jax.rl import grpo, memory
from exit_jax.sampling import methods as sampling_methods

AXIS = "data"  # the pmap axis name and the FSDP (and batch) mesh axis
TENSOR = flash.TENSOR_AXIS  # the tensor-parallel mesh axis (LearnerConfig.tensor_parallel > 1)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PARALLEL_MODES = ("single", "pmap", "fsdp")
REQUIRED_KEYS = ("tokens", "input_mask", "completion_mask", "old_logprobs", "advantages")
OPTIONAL_KEYS = ("advantage_multiplier", "sample_mask")
Batch = dict


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    # Optimizer (paper §13 defaults: AdamW .9/.999, no weight decay, 10-step warmup, clip 1.0).
    learning_rate: float = 1e-6
    warmup_steps: int = 10
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Objective (paper Eq. 4, §13.5-6).
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_beta: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "seq_mean_token_mean"
    max_completion_length: Optional[int] = None  # dr_grpo normaliser; None: the batch length L
    temperature: float = 1.0  # must match the sampler's, so old and new log-probs are comparable
    group_size: Optional[int] = None  # only for the zero-variance-group metric
    # Schedule of one GRPO iteration.
    epochs: int = 1  # optimizer steps over each batch (paper: 1 math / MLE, 2 tool use)
    # Rows per device per gradient-accumulation step; 0: the most that fit memory_budget_gb (rl.memory
    # estimates the update's memory from the model and the row length).
    micro_batch_size: int = 0
    ref_update_every: int = 100  # M (paper Tables 4-6)
    ref_alpha: float = 1.0  # ref <- alpha * theta + (1 - alpha) * ref
    # Precision and memory.
    compute_dtype: str = "float32"  # "bfloat16" for forward/backward; log-softmax and loss stay f32
    # "bfloat16" halves params + optimizer-state memory, but without stochastic rounding an update
    # much smaller than 2^-8 of a weight (lr 1e-6 is) rounds away: keep float32 master params then.
    param_dtype: str = "float32"
    # Per-device memory the update (state and one micro-batch) may use when micro_batch_size or remat
    # is planned; 0: half the host's RAM on CPU, 85% of an accelerator's memory (rl.memory).
    memory_budget_gb: float = 0.0
    # Recompute each layer in the backward pass; None: only when the planned micro-batch needs it (never
    # on CPU, where XLA folds the recomputation back into the forward pass: see rl.memory).
    remat: Optional[bool] = None
    remat_policy: str = "full"  # what a recomputed layer keeps: transformer.REMAT_POLICIES
    # The state holds the layers stacked and the forward scans them (transformer.stack_layers): compile
    # time and HLO size independent of depth. Off on CPU, where the scanned update ran 15% slower.
    scan_layers: bool = False
    # Completion tokens whose vocabulary logits exist at once (recomputed in the backward pass): the
    # float32 [rows, W, vocab] logits of a 152k-vocab model are 2.5 GB per 4 x 1,024 rows. 0: all W.
    vocab_chunk: int = 512
    # Whole-sequence attention (models.flash): "auto" is jax's Pallas splash kernel on TPU (no float32
    # [rows, heads, T, T] scores, most of a 7B update's memory at 4k tokens) and the dense path elsewhere;
    # "dense" / "splash" force one ("splash" off TPU runs the kernel in Pallas' interpreter: slow).
    attention: str = "auto"
    compute_entropy: bool = True  # an extra pass over the logits, for the entropy metric only
    # With kl_beta == 0 a row whose advantage is 0 (every row of a constant-reward group, and padding
    # rows) contributes exactly nothing to the loss or the gradient: gather the other rows into the
    # first micro-batches and skip the forward/backward of micro-batches without any. The update is
    # unchanged; token-mean diagnostics (ratio, clip fractions, entropy) then cover the trained rows.
    # parallel="single" only (see _gradients).
    skip_zero_advantage: bool = True
    parallel: str = "single"
    # parallel="fsdp": devices per tensor-parallel group (mesh axis "tensor"): attention heads, MLP
    # columns and the vocabulary split over it, FSDP and the rows over the other axis ("data").
    tensor_parallel: int = 1
    # LoRA (models.lora, docs/lora.md): rank > 0 trains adapters on these projections and freezes the
    # base weights, kept in the compute dtype; the optimizer state, the reference policy and the
    # checkpoints then hold the adapters only.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple = lora_lib.TARGETS
    lora_dropout: float = 0.0

    @property
    def lora(self) -> Optional[lora_lib.LoraConfig]:
        if not self.lora_rank:
            return None
        return lora_lib.LoraConfig(self.lora_rank, self.lora_alpha, tuple(self.lora_targets), self.lora_dropout)

    def __post_init__(self):
        for name, value, choices in (
                ("kl_estimator", self.kl_estimator, grpo.KL_ESTIMATORS),
                ("aggregation", self.aggregation, grpo.AGGREGATIONS),
                ("compute_dtype", self.compute_dtype, tuple(DTYPES)),
                ("param_dtype", self.param_dtype, tuple(DTYPES)),
                ("parallel", self.parallel, PARALLEL_MODES),
                ("attention", self.attention, flash.CHOICES),
                ("remat_policy", self.remat_policy, tuple(transformer.REMAT_POLICIES))):
            if value not in choices:
                raise ValueError(f"LearnerConfig.{name}={value!r}; expected one of {choices}.")
        if self.tensor_parallel < 1 or (self.tensor_parallel > 1 and self.parallel != "fsdp"):
            raise ValueError(f"LearnerConfig.tensor_parallel={self.tensor_parallel} needs parallel='fsdp' "
                             "and must be >= 1.")
        for name in ("epochs", "ref_update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LearnerConfig.{name} must be >= 1; got {getattr(self, name)}.")
        if min(self.micro_batch_size, self.warmup_steps, self.vocab_chunk, self.memory_budget_gb) < 0:
            raise ValueError("LearnerConfig.micro_batch_size, warmup_steps, vocab_chunk and memory_budget_gb "
                             "must be >= 0.")
        if not 0.0 < self.learning_rate < float("inf"):
            raise ValueError(f"LearnerConfig.learning_rate={self.learning_rate} must be a finite number > 0.")
        if not 0.0 <= self.ref_alpha <= 1.0:
            raise ValueError(f"LearnerConfig.ref_alpha must lie in [0, 1]; got {self.ref_alpha}.")
        if self.temperature <= 0:
            raise ValueError(f"LearnerConfig.temperature must be > 0; got {self.temperature}.")
        if self.lora_rank < 0:
            raise ValueError(f"LearnerConfig.lora_rank must be >= 0 (0: full fine-tuning); got {self.lora_rank}.")
        self.lora  # validates the other LoRA fields


class TrainState(NamedTuple):
    step: jax.Array  # int32 []: GRPO iterations done
    params: Any  # with LoRA: the frozen base and the adapters beside its kernels (models.lora)
    opt_state: Any  # of the trained params: all of them, or the adapters
    ref_params: Any  # trained params of the reference; None when kl_beta == 0: no reference pass at all
    skipped: jax.Array  # int32 []: optimizer steps skipped for a non-finite loss or gradient


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    def schedule(count):  # linear warmup that already moves on the first step, then constant
        if cfg.warmup_steps == 0:
            return jnp.asarray(cfg.learning_rate, jnp.float32)
        return cfg.learning_rate * jnp.minimum(1.0, (count + 1) / cfg.warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(cfg.max_grad_norm),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))


def init_state(params, cfg: LearnerConfig) -> TrainState:
    """Fresh state; params are copied (the update donates its state) and cast to cfg.param_dtype.

    With cfg.scan_layers the per-layer params are stacked (transformer.stack_layers). The reference
    policy is only ever run forward, so it is kept in the compute dtype (bfloat16 halves it). With LoRA
    the base is frozen in the compute dtype and fresh adapters (a no-op until trained) are the trained
    params; the reference is then the base plus a copy of the adapters, never a second base.
    Traceable: `jax.jit(init_state, static_argnums=1, out_shardings=...)` builds it sharded.
    """
    cast = lambda tree, dtype: jax.tree.map(lambda x: jnp.array(x, dtype=DTYPES[dtype]), tree)  # noqa: E731
    if cfg.lora is None:
        params = cast(params, cfg.param_dtype)
    else:
        params = lora_lib.combine(cast(params, cfg.compute_dtype),
                                  cast(lora_lib.init(transformer.unstack_layers(params), cfg.lora), cfg.param_dtype))
    if cfg.scan_layers:
        params = transformer.stack_layers(params)
    trained = _trained(params, cfg)
    ref = None  # starts at the initial θ
    if cfg.kl_beta > 0:
        ref = cast(trained, cfg.compute_dtype)
    # Every leaf its own buffer, since a donated argument may not alias itself: the casts above copy, the
    # optimizer's zeros are fresh, and step and skipped are two arrays. (Copying the whole state again
    # would hold it twice at once, and glibc then keeps the freed copy: +1.6 GB of RSS for SmolLM2.)
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(cfg).init(trained), ref,
                      jnp.zeros((), jnp.int32))


def sequence_logprobs(params, model_config: ModelConfig, tokens, input_mask, temperature: float = 1.0,
                      dtype=jnp.float32, remat: bool = False, with_entropy: bool = False,
                      width: Optional[int] = None, vocab_chunk: int = 0, attention: str = "dense", mesh=None,
                      remat_policy: str = "full", lora=None, dropout_key=None):
    """log softmax(logits / temperature) of each token given its prefix: `sampling.token_logprobs`, the
    sampler's own definition, under the model.

    tokens int32 [B, L], input_mask bool [B, L] -> logp f32 [B, W] for the last W = `width` columns
    (default L; column 0 is then 0: nothing predicts it), and with_entropy: the entropy [B, W] of the
    distribution each token was drawn from (no gradient). The vocabulary projection runs only where a
    scored token is predicted: with the completion as the last W of L columns this skips the prompt's
    share of the head, the largest single matmul of a small model (49k x 576 for SmolLM2). vocab_chunk
    > 0 projects that many columns at a time and recomputes them in the backward pass, so the [B, W, V]
    logits never exist at once (same numbers). attention / mesh / remat_policy: see Transformer;
    lora / dropout_key: see transformer.forward.
    """
    length = tokens.shape[1]
    width = length if width is None else width
    if not 0 < width <= length:
        raise ValueError(f"width={width} must lie in [1, {length}] (the batch length).")
    hidden = transformer.forward(params, model_config, tokens, input_mask, dtype=dtype, remat=remat,
                                 head=False, attention=attention, mesh=mesh, remat_policy=remat_policy,
                                 lora=lora, dropout_key=dropout_key)
    start = max(length - width, 1)  # first scored column; column 0 has no predictor
    hidden, targets = hidden[:, start - 1:length - 1], tokens[:, start:]

    def head(h, t):  # [B, C, D], [B, C] -> log-prob and entropy [B, C]
        logp, logits, lse = sampling_methods.token_logprobs(
            transformer.project(params, model_config, h, dtype), t, temperature)
        if not with_entropy:
            return logp, jnp.zeros_like(logp)
        sg = jax.lax.stop_gradient
        probs = jnp.exp(sg(logits) - sg(lse)[..., None])
        return logp, sg(lse) - jnp.sum(probs * sg(logits), axis=-1)

    n = targets.shape[1]
    if 0 < vocab_chunk < n:  # chunks of columns under scan; each chunk's logits rebuilt for its gradient
        chunks = -(-n // vocab_chunk)
        extra = chunks * vocab_chunk - n
        split = lambda x: jnp.moveaxis(  # noqa: E731
            jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2)).reshape(
                (x.shape[0], chunks, vocab_chunk) + x.shape[2:]), 1, 0)
        logp, entropy = jax.lax.map(lambda ht: jax.checkpoint(head)(*ht), (split(hidden), split(targets)))
        logp, entropy = (jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)[:, :n] for x in (logp, entropy))
    else:
        logp, entropy = head(hidden, targets)
    pad = lambda x: jnp.pad(x, ((0, 0), (width - x.shape[1], 0)))  # the unpredicted column 0
    return pad(logp), (pad(entropy) if with_entropy else None)


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _split_micro(x, n_micro: int):
    """[B, ...] -> [n_micro, B / n_micro, ...]; micro-batch j takes rows j, j + n, ... so that, when B
    is split over devices in contiguous blocks, every micro-batch still spans all devices evenly."""
    x = x.reshape((x.shape[0] // n_micro, n_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


def micro_plan(cfg: LearnerConfig, model_config: ModelConfig, batch_rows: int, num_shards: int, length: int,
               width: int, platform: str, device=None) -> tuple[int, bool]:
    """(micro-batches per device, remat) of an update over [batch_rows, length] tokens scored in the last
    `width` columns: the config's own where it fixes them, else planned by rl.memory."""
    if batch_rows % num_shards:
        raise ValueError(f"batch of {batch_rows} rows does not split over {num_shards} devices.")
    per_shard = batch_rows // num_shards
    if cfg.micro_batch_size and per_shard % cfg.micro_batch_size:
        raise ValueError(f"per-device batch of {per_shard} rows is not a multiple of "
                         f"LearnerConfig.micro_batch_size={cfg.micro_batch_size}.")
    if cfg.micro_batch_size and cfg.remat is not None:
        return per_shard // cfg.micro_batch_size, cfg.remat
    fsdp = cfg.parallel == "fsdp"
    rows, remat = memory.plan(
        model_config, per_shard, length, width, micro_batch_size=cfg.micro_batch_size, remat=cfg.remat,
        vocab_chunk=cfg.vocab_chunk, attention=flash.resolve(cfg.attention, platform), platform=platform,
        param_bytes=memory.dtype_bytes(cfg.param_dtype), compute_bytes=memory.dtype_bytes(cfg.compute_dtype),
        kl=cfg.kl_beta > 0, shards=num_shards if fsdp else 1,
        budget=memory.budget_bytes(cfg.memory_budget_gb, platform, device),
        adapters=0 if cfg.lora is None else lora_lib.num_params(cfg.lora, model_config))
    return per_shard // rows, remat


def _batch_stats(batch, cfg: LearnerConfig, axis_name):
    """Full-batch normalisers and advantage metrics (global over devices)."""
    keep = batch.get("sample_mask", jnp.ones(batch["advantages"].shape, bool)).astype(jnp.float32)
    n_seq = _psum(jnp.sum(keep), axis_name)
    n_tok = _psum(jnp.sum(batch["completion_mask"] * keep[:, None]), axis_name)
    adv = batch["advantages"] * batch.get("advantage_multiplier", 1.0)
    mean = _psum(jnp.sum(keep * adv), axis_name) / jnp.maximum(n_seq, 1.0)
    var = _psum(jnp.sum(keep * jnp.square(adv - mean)), axis_name) / jnp.maximum(n_seq, 1.0)
    stats = {"advantage_mean": mean, "advantage_std": jnp.sqrt(var)}
    advantages = batch["advantages"]  # [B]; a group may straddle devices, so gather them all
    if axis_name is not None:
        advantages = jax.lax.all_gather(advantages, axis_name, tiled=True)
    stats["zero_variance_frac"] = grpo.zero_advantage_group_frac(advantages, cfg.group_size)
    return n_seq, n_tok, stats


def _trained(params, cfg: LearnerConfig):
    """The params the optimizer moves: all of them, or with LoRA the adapters."""
    return params if cfg.lora is None else lora_lib.split(params)[1]


def _gradients(params, ref_params, batch, model_config, cfg, axis_name, num_shards, mesh, key):
    """Loss gradient of the whole (per-device share of the) batch with respect to the trained params,
    accumulated over micro-batches. key: LoRA dropout's draws."""
    n_seq, n_tok, stats = _batch_stats(batch, cfg, axis_name)
    # completion_mask / old_logprobs may cover only the last W columns of tokens (see module doc).
    device = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
    platform, (rows, length), width = device.platform, batch["tokens"].shape, batch["completion_mask"].shape[1]
    n_micro, remat = micro_plan(cfg, model_config, rows, num_shards, length, width, platform, device)
    fwd = functools.partial(sequence_logprobs, model_config=model_config, temperature=cfg.temperature,
                            dtype=DTYPES[cfg.compute_dtype], remat=remat, remat_policy=cfg.remat_policy,
                            width=width, vocab_chunk=cfg.vocab_chunk,
                            attention=flash.resolve(cfg.attention, platform), mesh=mesh, lora=cfg.lora)
    base = None if cfg.lora is None else lora_lib.split(params)[0]
    full = lambda t: t if base is None else lora_lib.combine(base, t)  # noqa: E731
    dropout = cfg.lora is not None and cfg.lora.dropout > 0

    loss_config = grpo.LossConfig(cfg.clip_low, cfg.clip_high, cfg.kl_beta, cfg.kl_estimator, cfg.aggregation,
                                  cfg.max_completion_length)

    def loss_fn(t, mb, mb_key):
        logp, entropy = fwd(full(t), tokens=mb["tokens"], input_mask=mb["input_mask"],
                            with_entropy=cfg.compute_entropy, dropout_key=mb_key if dropout else None)
        ref_logp = None
        if cfg.kl_beta > 0:
            ref_logp = jax.lax.stop_gradient(
                fwd(full(ref_params), tokens=mb["tokens"], input_mask=mb["input_mask"])[0])
        inputs = grpo.LossInputs(logp, mb["old_logprobs"], mb["advantages"], mb["completion_mask"], ref_logp,
                                 mb.get("advantage_multiplier"), mb.get("sample_mask"), entropy)
        return grpo.policy_loss(inputs, loss_config, num_sequences=n_seq, num_tokens=n_tok)

    def body(carry, xs):
        grads, sums = carry
        mb, mb_key = xs
        if mesh is not None:  # keep each micro-batch spread over the devices
            mb = jax.lax.with_sharding_constraint(mb, NamedSharding(mesh, P(AXIS)))
        (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(trained, mb, mb_key)
        grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g)
        sums = sums | {k: sums[k] + m[k] for k in grpo.SUM_METRICS}
        sums["ratio_min"] = jnp.minimum(sums["ratio_min"], m["ratio_min"])
        sums["ratio_max"] = jnp.maximum(sums["ratio_max"], m["ratio_max"])
        return (grads, sums), None

    # Differentiate with respect to the compute-dtype copy of the weights the layers cast anyway: the
    # gradients are bit-identical (the cast's backward only widens them), but one micro-batch's gradient
    # tree is then half the size (a 7B update's temporaries: 2.9x -> 2x its float32 params per device).
    trained = _compute_copy(_trained(params, cfg), DTYPES[cfg.compute_dtype])
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trained)
    sums = {k: jnp.zeros((), jnp.float32) for k in grpo.SUM_METRICS}
    sums.update(ratio_min=jnp.array(jnp.inf), ratio_max=jnp.array(-jnp.inf))
    # One device only: data-parallel devices wait for the slowest at the gradient psum, so skipping on
    # some of them saves nothing (and on CPU's virtual devices, XLA aborts collectives that wait long).
    skip = cfg.skip_zero_advantage and cfg.kl_beta == 0 and axis_name is None and mesh is None
    live = _live_rows(batch)  # [B]
    if skip:  # live rows first, in contiguous micro-batches (row order is free)
        order = jnp.argsort(~live, stable=True)
        batch, live = jax.tree.map(lambda x: x[order], (batch, live))
        micro = jax.tree.map(lambda x: x.reshape((n_micro, -1) + x.shape[1:]), (batch, live))
    else:  # the strided split that spreads every micro-batch over the devices
        micro = jax.tree.map(lambda x: _split_micro(x, n_micro), (batch, live))
    if axis_name is not None:  # pmap: each device its own dropout draws
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def maybe_body(carry, xs):
        (mb, mb_live), mb_key = xs
        if not skip:
            return body(carry, (mb, mb_key))
        tokens = jnp.sum(mb["completion_mask"] * mb_live[:, None])
        (grads, sums), _ = jax.lax.cond(jnp.any(mb_live), body, lambda c, _: (c, None), carry, (mb, mb_key))
        return (grads, sums | {"live_tokens": sums["live_tokens"] + tokens}), None

    sums["live_tokens"] = jnp.zeros((), jnp.float32)
    (grads, metrics), _ = jax.lax.scan(maybe_body, (zeros, sums), (micro, jax.random.split(key, n_micro)))
    live_tokens = _psum(metrics.pop("live_tokens"), axis_name)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        metrics = {k: jax.lax.psum(metrics[k], axis_name) for k in grpo.SUM_METRICS} | {
            "ratio_min": jax.lax.pmin(metrics["ratio_min"], axis_name),
            "ratio_max": jax.lax.pmax(metrics["ratio_max"], axis_name)}
    if skip:  # token means over the trained rows, not over rows that were never computed
        scale = n_tok / jnp.maximum(live_tokens, 1.0)
        metrics |= {k: metrics[k] * scale for k in grpo.DIAGNOSTIC_METRICS}
    stats["trained_rows_frac"] = (_psum(jnp.sum(live), axis_name) / _psum(live.size, axis_name)
                                  if skip else jnp.ones((), jnp.float32))
    return grads, metrics | stats


def _compute_copy(params, dtype):
    """Matmul kernels, embeddings and biases in the compute dtype (flax's Dense and Embed cast them to it
    before use); norm scales keep their dtype (Gemma's norm computes with them in float32)."""
    def cast(path, x):
        weights = ("kernel", "embedding", "bias", lora_lib.A, lora_lib.B)
        return x.astype(dtype) if getattr(path[-1], "key", None) in weights else x
    return jax.tree_util.tree_map_with_path(cast, params)


def _live_rows(batch):
    """bool [B]: rows that can move the policy-gradient loss (kept, nonzero advantage x multiplier)."""
    adv = batch["advantages"] * batch.get("advantage_multiplier", 1.0)
    return (adv != 0) & batch.get("sample_mask", jnp.ones(adv.shape, bool))


def _optimizer_step(state: TrainState, batch, model_config, cfg, axis_name, num_shards, mesh, key):
    grads, metrics = _gradients(state.params, state.ref_params, batch, model_config, cfg, axis_name,
                                num_shards, mesh, key)
    trained = _trained(state.params, cfg)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trained)
    # The global norm is finite iff every gradient entry is (an overflowing sum of squares counts as
    # non-finite too: clipping by it would be 0 * inf). One reduction, where a per-leaf isfinite
    # check unrolled into ~500k HLO ops and took most of the update's compile time.
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, opt_state = make_optimizer(cfg).update(grads, state.opt_state, trained)
    # A non-finite loss or gradient leaves params and optimizer state (and its step count) untouched.
    keep_old = lambda new, old: jnp.where(finite, new, old)
    trained = jax.tree.map(keep_old, optax.apply_updates(trained, updates), trained)
    params = trained if cfg.lora is None else lora_lib.combine(state.params, trained)
    opt_state = jax.tree.map(keep_old, opt_state, state.opt_state)
    skipped = (~finite).astype(jnp.int32)
    metrics = metrics | {"grad_norm": grad_norm, "skipped": skipped}
    return state._replace(params=params, opt_state=opt_state, skipped=state.skipped + skipped), metrics


def update_step(state: TrainState, batch: Batch, model_config: ModelConfig, cfg: LearnerConfig,
                axis_name: Optional[str] = None, num_shards: int = 1, mesh=None):
    """One GRPO iteration (cfg.epochs optimizer steps over the batch, then the reference refresh).

    The per-device function of every parallel mode: under pmap, axis_name names the mapped axis and
    `batch` is this device's share; under FSDP, `batch` is global, num_shards devices share it and
    `mesh` pins each micro-batch's layout. Returns (new state, metrics averaged over epochs).
    """
    if cfg.kl_beta > 0 and state.ref_params is None:
        raise ValueError("LearnerConfig.kl_beta > 0 needs a reference policy: build the state with "
                         "init_state(params, cfg) using a config whose kl_beta > 0.")

    key = jax.random.fold_in(jax.random.PRNGKey(0 if cfg.lora is None else cfg.lora.seed), state.step)

    def epoch(s, e):
        return _optimizer_step(s, batch, model_config, cfg, axis_name, num_shards, mesh,
                               jax.random.fold_in(key, e))

    state, per_epoch = jax.lax.scan(epoch, state, jnp.arange(cfg.epochs))
    metrics = {k: jnp.mean(v) for k, v in per_epoch.items()}
    metrics.update(ratio_min=jnp.min(per_epoch["ratio_min"]), ratio_max=jnp.max(per_epoch["ratio_max"]),
                   skipped=jnp.sum(per_epoch["skipped"]))
    step = state.step + 1
    ref = state.ref_params
    refresh = (step % cfg.ref_update_every) == 0
    if ref is not None:  # paper §7: every M iterations ref <- alpha * theta + (1 - alpha) * ref
        mix = lambda r: jax.tree.map(
            lambda t, q: (cfg.ref_alpha * t.astype(jnp.float32)
                          + (1.0 - cfg.ref_alpha) * q.astype(jnp.float32)).astype(q.dtype),
            _trained(state.params, cfg), r)
        ref = jax.lax.cond(refresh, mix, lambda r: r, ref)
    metrics["ref_updated"] = (refresh & (ref is not None)).astype(jnp.int32)
    return state._replace(step=step, ref_params=ref), metrics
