"""Causal self-attention that never builds the [T, T] scores: jax's own Pallas splash-attention kernel.

The dense path of `models.transformer` materialises float32 [rows, heads, T, T] scores; at the paper's
4-5k-token rows they are most of the update's and the prefill's memory and HBM traffic on a TPU (see
docs/tpu.md). The kernel streams key/value blocks through VMEM with an online softmax, skips the blocks
above the diagonal, and computes its backward pass blockwise too. Grouped-query attention is native (q
head h reads kv head h // (H / Hkv), HF's repeat_kv order). Padding is expressed as segment ids: a real
token (segment 1) attends only real tokens, a padding token only padding, so no row is fully masked; what
padding rows compute is never read.

The kernel compiles for TPUs (also ahead of time on a CPU host, launch/compile.py); elsewhere it runs in
Pallas' interpreter (`interpret=True`): exact but slow, for tests that hold it against the dense path.
Under a device mesh the kernel is applied per device with `shard_map` (XLA cannot partition a Pallas
call): rows split over the mesh's batch axes, heads over its "tensor" axis when it has one.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

LANES = 128  # the kernel's sequence blocks are multiples of the TPU's 128 lanes
TENSOR_AXIS = "tensor"


def _block(length: int) -> int:
    """Largest of 512 / 256 / 128 dividing the (lane-padded) length: bigger blocks, fewer grid steps."""
    return next(b for b in (512, 256, LANES) if length % b == 0)


def _kernel(num_heads: int, length: int, interpret: bool):
    b = _block(length)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length))] * num_heads)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def _local(q, k, v, segments, interpret: bool):
    """One device's rows: q [B, H, T, D], k/v [B, Hkv, T, D], segments int32 [B, T] -> [B, H, T, D]."""
    length = q.shape[2]
    pad = -length % LANES  # padded slots get segment 0 at the end: causality hides them from real rows
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
        segments = jnp.pad(segments, ((0, 0), (0, pad)))
    kernel = _kernel(q.shape[1], length + pad, interpret)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=splash.SegmentIds(s1, s1)))(
        q, k, v, segments)
    return out[:, :, :length]


def causal_attention(q, k, v, valid, mesh: Optional[jax.sharding.Mesh] = None, interpret: bool = False):
    """softmax(q k^T + causal/padding mask) v for q [B, H, T, D] (already scaled), k/v [B, Hkv, T, D]
    and valid bool [B, T] (real tokens); returns [B, H, T, D] in q's dtype."""
    segments = valid.astype(jnp.int32)
    if mesh is None or mesh.size == 1:
        return _local(q, k, v, segments, interpret)
    rows = tuple(a for a in mesh.axis_names if a != TENSOR_AXIS)
    tensor = mesh.shape.get(TENSOR_AXIS, 1)
    # Heads split over "tensor" when both q and kv heads divide; otherwise each device runs them all.
    heads = TENSOR_AXIS if tensor > 1 and q.shape[1] % tensor == 0 == k.shape[1] % tensor else None
    qkv = P(rows, heads)
    fn = jax.shard_map(lambda *a: _local(*a, interpret), mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows)),
                       out_specs=qkv, check_vma=False)
    return fn(q, k, v, segments)


CHOICES = ("auto", "dense", "splash")  # the gin knobs' values (LearnerConfig / SamplingConfig.attention)


def resolve(requested: str, platform: str) -> str:
    """A knob's value -> the Transformer's `attention` for a program compiled for `platform`: "auto" is
    the kernel on TPU and the dense path elsewhere; "splash" off TPU is the (slow, exact) interpreter."""
    if requested not in CHOICES:
        raise ValueError(f"attention={requested!r}; expected one of {CHOICES}.")
    if requested == "auto":
        return "splash" if platform == "tpu" else "dense"
    return "splash_interpret" if requested == "splash" and platform != "tpu" else requested
