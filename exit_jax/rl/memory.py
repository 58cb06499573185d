"""How many rows the update takes at once: its memory per row, estimated from the model and the row length,
against a per-device budget (LearnerConfig.micro_batch_size = 0 and remat = None plan them from these).

The estimate counts what the backward pass keeps per token and layer (norm inputs and outputs, q/k/v,
the attention output, the MLP's gate/up/product: about 12 D + 4 F + 2 (H + 2 Hkv) hd values), the
float32 [T, T] attention scores where they exist (the dense path keeps ~3 per layer and head), and the
vocabulary head's [chunk, V] logits. Checked against XLA's own memory analysis of the compiled gradient
(tests/test_memory.py): 10-25% above it for SmolLM2 at 1-2k tokens. Rematerialisation only counts off CPU:
XLA:CPU drops jax.checkpoint's barriers and merges the recomputation back into the forward pass
(models.flash explains; measured), so on CPU only short micro-batches and blockwise attention save memory.
"""
from __future__ import annotations

import logging
import os

import jax.numpy as jnp

from exit_jax.models import flash
from exit_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

# Share of a device's memory the update may fill when LearnerConfig.memory_budget_gb is 0. On a CPU the
# host also holds the sampler's KV cache, the buffer, tokenizers, the checkpoint writer and the
# sandboxes; on an accelerator the rest is the compiler's slack.
DEFAULT_SHARE = {"cpu": 0.5}
ACCELERATOR_SHARE = 0.85
# On CPU a bigger micro-batch is not faster, only bigger (docs/memory.md), so planned CPU micro-batches
# hold at most this many tokens (one row at least).
CPU_MICRO_TOKENS = 1024


def device_bytes(platform: str, device=None) -> int:
    """A device's memory: the accelerator's own limit, or the host's RAM (stable between runs, so a
    resumed run plans the same micro-batches and reproduces the same sums)."""
    if platform != "cpu" and device is not None:
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - abstract (ahead-of-time) devices have no runtime to ask
            limit = None
        if limit:
            return int(limit)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(budget_gb: float, platform: str, device=None) -> int:
    if budget_gb > 0:
        return int(budget_gb * 2 ** 30)
    return int(device_bytes(platform, device) * DEFAULT_SHARE.get(platform, ACCELERATOR_SHARE))


def state_bytes(config: ModelConfig, param_bytes: int, compute_bytes: int, kl: bool, shards: int,
                adapters: int = 0) -> int:
    """Per device: the trained params and two Adam moments, the float32 gradient sum, the compute-dtype
    weight copy and one micro-batch's gradient tree (and the reference policy with a KL term). With LoRA
    (`adapters` trained parameters) those are the adapters', beside one frozen base in the compute dtype."""
    per_param = 3 * param_bytes + 4 + 2 * compute_bytes + (compute_bytes if kl else 0)
    if adapters:
        return (config.num_params() * compute_bytes + adapters * per_param) // shards
    return config.num_params() * per_param // shards


def row_bytes(config: ModelConfig, length: int, width: int, compute_bytes: int, remat: bool,
              vocab_chunk: int, attention: str, platform: str) -> int:
    """Activation memory of one row of `length` tokens whose last `width` are scored."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    h, hkv, layers = config.num_heads, config.num_kv_heads, config.num_layers
    per_token = (12 * d + 4 * f + 2 * (h + 2 * hkv) * hd) * compute_bytes
    dense = attention == "dense" or (attention == "blockwise" and length <= flash.BLOCK)
    scores = 3 * h * length * length * 4 if dense else 0
    if remat and platform != "cpu":  # layer inputs kept; one layer's activations rebuilt at a time
        kept = layers * length * d * compute_bytes + length * per_token + scores
    else:
        kept = layers * (length * per_token + scores)
    if attention == "blockwise" and not dense:  # one query block's scores, probabilities, gradients
        kept += 3 * h * flash.BLOCK * length * 4
    chunk = min(vocab_chunk or width, width)
    return kept + 2 * chunk * config.vocab_size * 4


def plan(config: ModelConfig, rows: int, length: int, width: int, *, micro_batch_size: int,
         remat, vocab_chunk: int, attention: str, platform: str, param_bytes: int, compute_bytes: int,
         kl: bool, shards: int, budget: int, adapters: int = 0) -> tuple[int, bool]:
    """(rows per micro-batch, remat) for a device's `rows` rows: the fixed settings where given, else
    the largest divisor of `rows` that fits the budget (on CPU: and CPU_MICRO_TOKENS), without remat if
    that fits at all. adapters: see state_bytes."""
    free = budget - state_bytes(config, param_bytes, compute_bytes, kl, shards, adapters)
    if remat is not None:
        choices = [bool(remat)]
    else:  # remat saves nothing on CPU (module doc)
        choices = [False] if platform == "cpu" else [False, True]
    sizes = [micro_batch_size] if micro_batch_size else [
        d for d in range(rows, 0, -1)
        if rows % d == 0 and (platform != "cpu" or d == 1 or d * length <= CPU_MICRO_TOKENS)]
    for r in choices:
        per_row = row_bytes(config, length, width, compute_bytes, r, vocab_chunk, attention, platform)
        for size in sizes:
            if size * per_row <= free:
                return size, r
    size, r = sizes[-1], choices[-1]
    per_row = row_bytes(config, length, width, compute_bytes, r, vocab_chunk, attention, platform)
    log.warning("the update's estimated memory (%.1f GB for the state and %d row(s) of %d tokens) exceeds "
                "its budget of %.1f GB per device (LearnerConfig.memory_budget_gb); trying anyway",
                (budget - free + size * per_row) / 2 ** 30, size, length, budget / 2 ** 30)
    return size, r


def dtype_bytes(name: str) -> int:
    return jnp.dtype(name).itemsize
