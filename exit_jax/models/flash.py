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

Off TPU, `blockwise_attention` does the same job in plain JAX: query blocks under `lax.scan`, each against
all keys, with a hand-written backward pass that recomputes a block's scores from q, k, v and the saved
log-sum-exp. Rematerialisation cannot do this on XLA:CPU: its pipeline drops jax.checkpoint's optimisation
barriers and common-subexpression elimination merges the recomputed scores back into the forward pass
(measured: a checkpointed 8-layer update keeps every layer's [T, T] scores alive), while a loop body is
never merged with another. At 3k-token MLE rows that is 30 layers x 340 MB of scores per row, gone.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from exit_jax.models.config import FULL_WINDOW

LANES = 128  # the kernel's sequence blocks are multiples of the TPU's 128 lanes
TENSOR_AXIS = "tensor"


def _block(length: int) -> int:
    """Largest of 512 / 256 / 128 dividing the (lane-padded) length: bigger blocks, fewer grid steps."""
    return next(b for b in (512, 256, LANES) if length % b == 0)


def _kernel(num_heads: int, length: int, interpret: bool, window: Optional[int], softcap: Optional[float]):
    b = _block(length)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                              block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    # A window of w tokens: the query and the w - 1 before it (blocks wholly outside are skipped).
    head = (splash_mask.CausalMask((length, length)) if window is None
            else splash_mask.LocalMask((length, length), window_size=(window - 1, 0), offset=0))
    return splash.make_splash_mha(splash_mask.MultiHeadMask([head] * num_heads), block_sizes=sizes, head_shards=1,
                                  q_seq_shards=1, attn_logits_soft_cap=softcap, interpret=interpret)


def _local(q, k, v, segments, interpret: bool, window: Optional[int], softcap: Optional[float]):
    """One device's rows: q [B, H, T, D], k/v [B, Hkv, T, D], segments int32 [B, T] -> [B, H, T, D]."""
    length = q.shape[2]
    pad = -length % LANES  # padded slots get segment 0 at the end: causality hides them from real rows
    if pad:
        q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (q, k, v))
        segments = jnp.pad(segments, ((0, 0), (0, pad)))
    kernel = _kernel(q.shape[1], length + pad, interpret, window, softcap)
    out = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=splash.SegmentIds(s1, s1)))(
        q, k, v, segments)
    return out[:, :, :length]


def causal_attention(q, k, v, valid, mesh: Optional[jax.sharding.Mesh] = None, interpret: bool = False,
                     window: Optional[int] = None, softcap: Optional[float] = None):
    """softmax(q k^T + causal/padding mask) v for q [B, H, T, D] (already scaled), k/v [B, Hkv, T, D]
    and valid bool [B, T] (real tokens); returns [B, H, T, D] in q's dtype. window: each query attends to
    that many most recent tokens, its own included (None: all); softcap: scores -> softcap * tanh(scores /
    softcap). Both are static: the kernel's block mask is built from them."""
    segments = valid.astype(jnp.int32)
    local = functools.partial(_local, interpret=interpret, window=window, softcap=softcap)
    if mesh is None or mesh.size == 1:
        return local(q, k, v, segments)
    rows = tuple(a for a in mesh.axis_names if a != TENSOR_AXIS)
    tensor = mesh.shape.get(TENSOR_AXIS, 1)
    # Heads split over "tensor" when both q and kv heads divide; otherwise each device runs them all.
    heads = TENSOR_AXIS if tensor > 1 and q.shape[1] % tensor == 0 == k.shape[1] % tensor else None
    qkv = P(rows, heads)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows)),
                       out_specs=qkv, check_vma=False)
    return fn(q, k, v, segments)


BLOCK = 512  # query rows per step of blockwise_attention; shorter sequences take the dense path
_MASKED = jnp.finfo(jnp.float32).min  # the dense path's masked score: same softmax, rows never NaN


def _block_scores(qb, k, valid, first, window, cap):
    """float32 scores [B, Hkv, G, Q, T] of the query block starting at row `first`, soft-capped (cap:
    cap * tanh(s / cap), else None) and masked causal & valid & within `window` tokens; and the tanh of
    the capped scores (None without a cap), which the backward needs."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", qb, k, preferred_element_type=jnp.float32)
    t = None
    if cap:
        t = jnp.tanh(s / cap)
        s = cap * t
    rows = first + jnp.arange(qb.shape[3])
    back = rows[:, None] - jnp.arange(k.shape[2])[None, :]  # how many tokens before the query each key is
    keep = ((back >= 0) & (back < window))[None] & valid[:, None, :]  # [B, Q, T]
    return jnp.where(keep[:, None, None], s, _MASKED), t


def _blocks(x, n):  # [B, Hkv, G, T, D] -> [n, B, Hkv, G, T / n, D] (the scan's leading axis)
    return jnp.moveaxis(x.reshape(x.shape[:3] + (n, x.shape[3] // n) + x.shape[4:]), 3, 0)


def _unblocks(x):  # the inverse of _blocks
    x = jnp.moveaxis(x, 0, 3)
    return x.reshape(x.shape[:3] + (-1,) + x.shape[5:])


def _blockwise_fwd(q, k, v, valid, window, cap):
    n = q.shape[3] // BLOCK

    def step(_, xs):
        qb, first = xs
        s, _ = _block_scores(qb, k, valid, first, window, cap)
        m = jnp.max(s, axis=-1, keepdims=True)
        p = jnp.exp(s - m)
        total = jnp.sum(p, axis=-1, keepdims=True)
        out = jnp.einsum("bkgqs,bksd->bkgqd", (p / total).astype(v.dtype), v)
        return None, (out, (m + jnp.log(total))[..., 0])

    _, (out, lse) = jax.lax.scan(step, None, (_blocks(q, n), jnp.arange(n) * BLOCK))
    out = _unblocks(out)
    return out, (q, k, v, valid, window, out, _unblocks(lse[..., None])[..., 0])


def _blockwise_bwd(cap, res, dout):
    q, k, v, valid, window, out, lse = res
    n = q.shape[3] // BLOCK
    # softmax backward: ds = p * (dp - sum(dout * out)) per query row
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def step(carry, xs):
        dk, dv = carry
        qb, dob, lseb, deltab, first = xs
        s, t = _block_scores(qb, k, valid, first, window, cap)
        p = jnp.exp(s - lseb[..., None])
        dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p, dob.astype(jnp.float32))
        dp = jnp.einsum("bkgqd,bksd->bkgqs", dob, v, preferred_element_type=jnp.float32)
        ds = p * (dp - deltab[..., None])
        if cap:  # d(cap * tanh(s / cap)) / ds = 1 - tanh^2
            ds = ds * (1 - t * t)
        dq = jnp.einsum("bkgqs,bksd->bkgqd", ds.astype(q.dtype), k)
        dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds, qb.astype(jnp.float32))
        return (dk, dv), dq

    zeros = jnp.zeros(k.shape, jnp.float32)
    xs = (_blocks(q, n), _blocks(dout, n), _blocks(lse[..., None], n)[..., 0],
          _blocks(delta[..., None], n)[..., 0], jnp.arange(n) * BLOCK)
    (dk, dv), dq = jax.lax.scan(step, (zeros, zeros), xs)
    return _unblocks(dq), dk.astype(k.dtype), dv.astype(v.dtype), None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _blockwise(q, k, v, valid, window, cap):
    return _blockwise_fwd(q, k, v, valid, window, cap)[0]


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q, k, v, valid, window=FULL_WINDOW, softcap=None):
    """The dense path's causal attention without its [T, T] scores: q [B, Hkv, G, T, D] (scaled), k / v
    [B, Hkv, T, D], valid bool [B, T] (real tokens, as keys) -> [B, Hkv, G, T, D] in v's dtype. Memory:
    one block's [B, H, BLOCK, T] scores at a time, forward and backward (module doc). A query attends to
    the `window` most recent tokens (its own included); softcap: scores -> softcap * tanh(scores / softcap)."""
    length = q.shape[3]
    pad = -length % BLOCK  # padded rows come last: causality and their invalid keys hide them
    if pad:
        q = jnp.pad(q, ((0, 0),) * 3 + ((0, pad), (0, 0)))
        k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0))) for x in (k, v))
        valid = jnp.pad(valid, ((0, 0), (0, pad)))
    return _blockwise(q, k, v, valid, jnp.asarray(window, jnp.int32), softcap)[:, :, :, :length]


CHOICES = ("auto", "dense", "splash", "blockwise")  # the gin knobs' values (LearnerConfig / SamplingConfig.attention)


def resolve(requested: str, platform: str) -> str:
    """A knob's value -> the Transformer's `attention` for a program compiled for `platform`: "auto" is
    the kernel on TPU and blockwise_attention elsewhere (which takes the dense path up to BLOCK tokens);
    "splash" off TPU is the (slow, exact) interpreter."""
    if requested not in CHOICES:
        raise ValueError(f"attention={requested!r}; expected one of {CHOICES}.")
    if requested == "auto":
        return "splash" if platform == "tpu" else "blockwise"
    return "splash_interpret" if requested == "splash" and platform != "tpu" else requested
