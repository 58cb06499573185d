"""One flax.linen decoder for the llama, mistral, qwen2, qwen3 and gemma (1, 2, 3) families, with a
functional KV cache.

Parameter tree (flax `Dense` kernels are [in, out]; Hugging Face stores [out, in]):

    embed/embedding                    [V, D]
    layers_{i}/attn_norm/scale         [D]
    layers_{i}/attn/{q,k,v}/kernel     [D, H*hd] / [D, Hkv*hd]   (+ /bias on qwen2)
    layers_{i}/attn/{q,k}_norm/scale   [hd]                      (qwen3)
    layers_{i}/attn/o/kernel           [H*hd, D]                 (+ /bias, and q/k/v biases, with
                                                                  attention_bias)
    layers_{i}/mlp_norm/scale          [D]
    layers_{i}/post_{attn,mlp}_norm/scale [D]                    (gemma2, gemma3_text: sandwich norms)
    layers_{i}/mlp/{gate,up}/kernel    [D, F]
    layers_{i}/mlp/down/kernel         [F, D]
    final_norm/scale                   [D]
    lm_head/kernel                     [D, V]                    (absent when embeddings are tied)

The cache is a plain dict {"layers_{i}": {"k": [B, Hkv, S, hd], "v": [B, Hkv, S, hd]}}; callers pass
explicit positions and a boolean attention mask [B, T, S], so left padding, prefill and one-token
decode are all the same call (the style of google-deepmind/gemma's sampler). A layer's cache may also
hold a read-only shared prefix {"prefix_k", "prefix_v": [P, Hkv, Sp, hd]} that rows b = p * (B / P) + r
all attend to before their own S slots (the mask is then [B, T, Sp + S]): the sampler's G samples of a
prompt share its prompt's keys and values instead of G copies.

Layers may differ (Gemma 2/3, Mistral, Qwen with sliding windows): a sliding layer attends to its window
of the most recent tokens, and Gemma 3's sliding layers rotate with their own RoPE base. Those per-layer
values are arrays each block takes as input (`layer_constants`), so scanned layers share one block.
The window is a mask over the key positions, which the cache does not store: they are counted from the
last query row of the mask (each real token before it, once), so the cache keeps every slot and a
sliding layer reads only its window of them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from exit_jax.models import flash
from exit_jax.models.config import FULL_WINDOW, ModelConfig
from exit_jax.models.rope import apply_rope, rope_attention_factor, rope_inv_freq

Cache = dict
# What a rematerialised block keeps from its forward pass for the backward (Transformer.remat_policy):
# "full" keeps only its input and recomputes the rest; "dots" also keeps every matmul output (more
# memory, less recomputation); "dots_no_batch" keeps the weight matmuls' outputs, not attention's.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_saveable,
                  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class RMSNorm(nn.Module):
    eps: float
    offset: float  # 1.0 for Gemma's (1 + w) scaling, whose weights are stored zero-centred.
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        # Normalise in float32 as HF does, whatever the compute dtype.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # HF Gemma: (x * (1 + w)) in float32, then cast.
            return (xf * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
        return scale.astype(self.dtype) * xf.astype(self.dtype)  # HF Llama: w * x.to(dtype)


def layer_constants(config: ModelConfig) -> dict:
    """Per-layer arrays with a leading [num_layers]: RoPE inverse frequencies and cos/sin scale (Gemma 3's
    sliding layers use rope_local_theta, unscaled) and the attention window (FULL_WINDOW: no window)."""
    freqs, scales = [], []
    for i in range(config.num_layers):
        c = config
        if config.rope_local_theta and config.window(i) != FULL_WINDOW:
            c = dataclasses.replace(config, rope_theta=config.rope_local_theta, rope_scaling=None)
        freqs.append(rope_inv_freq(c))
        scales.append(rope_attention_factor(c))
    return {"inv_freq": np.stack(freqs), "rope_scale": np.asarray(scales, np.float32),
            "window": np.asarray([config.window(i) for i in range(config.num_layers)], np.int32)}


def softcap(x, cap: Optional[float]):
    """Gemma 2's soft-capping, cap * tanh(x / cap); x itself when cap is None."""
    return cap * jnp.tanh(x / cap) if cap else x


class Attention(nn.Module):
    config: ModelConfig
    dtype: Any
    param_dtype: Any
    decode_reduce: bool = True  # see Transformer.decode_reduce
    attention: str = "dense"  # see Transformer.attention
    mesh: Any = None

    @nn.compact
    def __call__(self, x, positions, mask, cache: Optional[Cache], cache_index, layer: dict, key_positions):
        c = self.config
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        out_proj = dense(c.hidden_size, use_bias=c.o_bias, name="o")
        b, t, _ = x.shape
        q = dense(c.num_heads * c.head_dim, use_bias=c.qkv_bias, name="q")(x)
        k = dense(c.num_kv_heads * c.head_dim, use_bias=c.qkv_bias, name="k")(x)
        v = dense(c.num_kv_heads * c.head_dim, use_bias=c.qkv_bias, name="v")(x)
        q = q.reshape(b, t, c.num_heads, c.head_dim)
        k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, c.norm_offset, self.dtype, self.param_dtype, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, c.norm_offset, self.dtype, self.param_dtype, name="k_norm")(k)
        inv_freq, scale = layer["inv_freq"], layer["rope_scale"]
        q, k = apply_rope(q, positions, inv_freq, scale), apply_rope(k, positions, inv_freq, scale)
        groups = c.num_heads // c.num_kv_heads
        q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim) * ((c.query_pre_attn_scalar or c.head_dim) ** -0.5)
        valid = mask[:, -1]  # the mask is causal & valid-key: its last row is the validity of every token
        if key_positions is not None:  # sliding windows bind somewhere in this call (see the module doc)
            mask = mask & ((positions[:, :, None] - key_positions[:, None, :]) < layer["window"])
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, T, D]
        if cache is None:  # no-cache forward (training): the keys are this call's tokens
            k_all, v_all, new_cache = k, v, None
        else:
            # The cache is [B, Hkv, S, D]: (batch, head) lead and (slot, dim) are contiguous, so
            # attention reads it straight off, with no per-step re-layout of the whole cache.
            start, dtype = (0, 0, cache_index, 0), cache["k"].dtype
            k_all = jax.lax.dynamic_update_slice(cache["k"], k.astype(dtype), start)
            v_all = jax.lax.dynamic_update_slice(cache["v"], v.astype(dtype), start)
            new_cache = dict(cache, k=k_all, v=v_all)
        if self.attention == "blockwise" and t > flash.BLOCK and k_all.shape[2] == t:
            out = flash.blockwise_attention(q.transpose(0, 2, 3, 1, 4), k_all.astype(q.dtype),  # [B, Hkv, G, T, D]
                                            v_all.astype(q.dtype), valid,
                                            FULL_WINDOW if key_positions is None else layer["window"],
                                            c.attn_logit_softcapping)
            out = out.astype(self.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, c.num_heads * c.head_dim)
            return out_proj(out), new_cache
        if self.attention in ("splash", "splash_interpret") and t > 1 and k_all.shape[2] == t:
            # Self-attention of the whole sequence (training, prefill): the kernel, no [T, T] scores.
            qh = q.reshape(b, t, c.num_heads, c.head_dim).transpose(0, 2, 1, 3)
            kernel = functools.partial(flash.causal_attention, qh, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                       valid, self.mesh, self.attention == "splash_interpret",
                                       softcap=c.attn_logit_softcapping)
            if key_positions is None:
                out = kernel()
            else:  # the kernel's mask is static; a scanned layer's window is not: one kernel per kind
                out = jax.lax.cond(layer["window"] < FULL_WINDOW, lambda: kernel(window=c.sliding_window), kernel)
            out = out.astype(self.dtype).transpose(0, 2, 1, 3).reshape(b, t, c.num_heads * c.head_dim)
            return out_proj(out), new_cache
        if t == 1 and self.decode_reduce:
            # One-token decode: multiply-and-reduce fusions that stream the cache once, instead of
            # B * Hkv tiny batched matmuls (small-matmul dispatch dominated them on CPU).
            qf = q[:, 0].astype(jnp.float32)  # [B, Hkv, G, D]
            own = jnp.sum(qf[:, :, :, None] * k_all.astype(jnp.float32)[:, :, None], -1)[:, :, :, None]
        else:
            own = jnp.einsum("btkgd,bksd->bkgts", q, k_all.astype(q.dtype),
                             preferred_element_type=jnp.float32)  # [B, Hkv, G, T, S]
        own = softcap(own, c.attn_logit_softcapping)
        if cache is None or "prefix_k" not in cache:
            probs = _masked_softmax(own, mask)
            out = _weighted_values(probs, v_all, self.dtype, self.decode_reduce)
        else:
            # Rows b = p * R + r share prompt p's keys and values (R = B / P samples of one prompt):
            # the prompt's cache is stored and read once per prompt, not once per sample.
            pk, pv = cache["prefix_k"], cache["prefix_v"]  # [P, Hkv, Sp, D]
            num_p, width = pk.shape[0], pk.shape[2]
            qp = q.reshape((num_p, b // num_p) + q.shape[1:])  # [P, R, T, Hkv, G, D]
            shared = softcap(jnp.einsum("prtkgd,pksd->prkgts", qp, pk.astype(q.dtype),
                                        preferred_element_type=jnp.float32), c.attn_logit_softcapping).reshape(
                                            (b,) + own.shape[1:4] + (width,))  # [B, Hkv, G, T, Sp]
            probs = _masked_softmax(jnp.concatenate([shared, own], -1), mask)
            pp = probs[..., :width].astype(self.dtype).reshape((num_p, b // num_p) + probs.shape[1:4] + (width,))
            out = (jnp.einsum("prkgts,pksd->prtkgd", pp, pv.astype(self.dtype)).reshape(q.shape)
                   + _weighted_values(probs[..., width:], v_all, self.dtype, self.decode_reduce))
        out = out.reshape(b, t, c.num_heads * c.head_dim)
        return out_proj(out), new_cache


def _masked_softmax(scores, mask):
    """softmax over the key axis of f32 scores [B, Hkv, G, T, S] where mask [B, T, S] holds."""
    return jax.nn.softmax(jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min), axis=-1)


def _weighted_values(probs, values, dtype, reduce: bool = True):
    """probs [B, Hkv, G, T, S] x values [B, Hkv, S, D] -> [B, T, Hkv, G, D] in dtype."""
    if probs.shape[3] == 1 and reduce:  # one query: a multiply-and-reduce over the slots (see Attention)
        out = jnp.sum(probs[:, :, :, 0, :, None] * values.astype(jnp.float32)[:, :, None], axis=3)
        return out[:, None].astype(dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs.astype(dtype), values.astype(dtype))


class MLP(nn.Module):
    config: ModelConfig
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                                  param_dtype=self.param_dtype)
        gate = dense(c.intermediate_size, name="gate")(x)
        up = dense(c.intermediate_size, name="up")(x)
        act = jax.nn.silu(gate) if c.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        return dense(c.hidden_size, name="down")(act * up)


class Block(nn.Module):
    config: ModelConfig
    dtype: Any
    param_dtype: Any
    decode_reduce: bool = True
    attention: str = "dense"
    mesh: Any = None

    @nn.compact
    def __call__(self, x, positions, mask, cache, cache_index, layer, key_positions):
        c = self.config
        norm = functools.partial(RMSNorm, c.rms_norm_eps, c.norm_offset, self.dtype, self.param_dtype)
        h, cache = Attention(c, self.dtype, self.param_dtype, self.decode_reduce, self.attention, self.mesh,
                             name="attn")(
            norm(name="attn_norm")(x), positions, mask, cache, cache_index, layer, key_positions)
        if c.sandwich_norms:
            h = norm(name="post_attn_norm")(h)
        x = x + h
        h = MLP(c, self.dtype, self.param_dtype, name="mlp")(norm(name="mlp_norm")(x))
        if c.sandwich_norms:
            h = norm(name="post_mlp_norm")(h)
        return x + h, cache


class Transformer(nn.Module):
    """Decoder-only LM. Returns float32 logits [B, T, V], the new cache, and the final hidden states."""
    config: ModelConfig
    dtype: Any = jnp.float32  # compute dtype (bfloat16 on TPU/GPU)
    param_dtype: Any = jnp.float32
    remat: bool = False  # recompute each block in the backward pass (long sequences)
    remat_policy: str = "full"  # REMAT_POLICIES
    head: bool = True  # False: skip the vocabulary projection (logits None); see `project`
    # Params under "layers" stacked [num_layers, ...] and one Block under lax.scan: the HLO, compile
    # time and compiler memory stop growing with depth (28 unrolled 7B layers did not compile for a
    # TPU in 15 minutes). No-cache forward only; convert with stack_layers / unstack_layers.
    scan_layers: bool = False
    # One-token decode attention as float32 multiply-and-reduce (fastest on CPU) or as dots in the
    # compute dtype (TPU: the math config's decode step on a v5e-8 costs 59.6 GB of HBM traffic in the
    # reduce form, 34.2 GB as dots). The sampler picks by the platform it runs on.
    decode_reduce: bool = True
    # Whole-sequence self-attention (training, prefill): "dense" float32 [T, T] scores, jax's Pallas
    # splash kernel ("splash"; "splash_interpret" runs it off TPU, slowly), or "blockwise" (flash.
    # blockwise_attention: plain JAX, dense up to flash.BLOCK tokens); the last two never keep them.
    # flash.resolve maps the gin knobs onto these. `mesh`: the device mesh the kernel is mapped over.
    attention: str = "dense"
    mesh: Any = None

    @nn.compact
    def __call__(self, tokens, positions, mask, cache: Optional[Cache] = None, cache_index=0):
        c = self.config
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="embed")
        x = embed(tokens)
        if c.embed_scale:  # HF Gemma multiplies by sqrt(D) rounded to the compute dtype.
            x = x * jnp.asarray(c.hidden_size ** 0.5, self.dtype)
        block_cls = Block
        if self.remat:
            # Unrolled layers need jax's CSE barrier (under scan it is not needed and only costs).
            block_cls = nn.remat(Block, prevent_cse=not self.scan_layers,
                                 policy=REMAT_POLICIES[self.remat_policy])
        new_cache = {} if cache is not None else None
        constants = layer_constants(c)
        key_positions = None
        if mask.shape[-1] > c.min_window():  # some window is narrower than the keys: positions to mask by
            # No cache: the keys are the queries. Otherwise count the real tokens of the last query row.
            key_positions = positions if cache is None else jnp.cumsum(mask[:, -1], axis=-1) - 1
        if self.scan_layers:
            if cache is not None:
                raise ValueError("Transformer(scan_layers=True) runs the no-cache forward only.")
            layers = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                             in_axes=(nn.broadcast,) * 4 + (0, nn.broadcast), length=c.num_layers)
            x, _ = layers(c, self.dtype, self.param_dtype, self.decode_reduce, self.attention, self.mesh,
                          name="layers")(x, positions, mask, None, 0, constants, key_positions)
        for i in range(0 if self.scan_layers else c.num_layers):
            name = f"layers_{i}"
            x, layer_cache = block_cls(c, self.dtype, self.param_dtype, self.decode_reduce, self.attention,
                                       self.mesh, name=name)(
                x, positions, mask, None if cache is None else cache[name], cache_index,
                {k: v[i] for k, v in constants.items()}, key_positions)
            if cache is not None:
                new_cache[name] = layer_cache
        hidden = RMSNorm(c.rms_norm_eps, c.norm_offset, self.dtype, self.param_dtype,
                         name="final_norm")(x)
        if not self.head:
            return None, new_cache, hidden
        if c.tie_embeddings:
            logits = embed.attend(hidden)
        else:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="lm_head")(hidden)
        return softcap(logits.astype(jnp.float32), c.final_logit_softcapping), new_cache, hidden


def positions_from_mask(input_mask):
    """Positions for left- (or right-) padded rows: count of real tokens before each slot. [B, T]."""
    return jnp.maximum(jnp.cumsum(input_mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_mask(input_mask):
    """[B, T] validity -> [B, T, T] causal attention mask that ignores padded keys."""
    t = input_mask.shape[-1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & input_mask[:, None, :].astype(bool)


def init_cache(config: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> Cache:
    shape = (batch, config.num_kv_heads, length, config.head_dim)  # see Attention: slots third
    return {f"layers_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for i in range(config.num_layers)}


def init_params(config: ModelConfig, seed: int = 0, param_dtype=jnp.float32):
    """Randomly initialised parameters (for tests and models trained from scratch)."""
    model = Transformer(config, param_dtype=param_dtype)
    tokens = jnp.zeros((1, 4), jnp.int32)
    mask = jnp.ones((1, 4), bool)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), tokens,
                                    positions_from_mask(mask), causal_mask(mask))
    return variables["params"]


def stack_layers(params):
    """The per-layer tree (layers_{i}/...) -> the scanned one (layers/... with a leading [num_layers])."""
    num_layers = sum(k.startswith("layers_") for k in params)
    layers = [params[f"layers_{i}"] for i in range(num_layers)]
    stack = lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs)  # noqa: E731
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    return rest | {"layers": jax.tree.map(stack, *layers)}


def unstack_layers(params):
    """Inverse of stack_layers; a tree without "layers" is returned as it is."""
    if "layers" not in params:
        return params
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    rest = {k: v for k, v in params.items() if k != "layers"}
    return rest | {f"layers_{i}": jax.tree.map(lambda x: x[i], params["layers"]) for i in range(num_layers)}


def forward(params, config: ModelConfig, tokens, input_mask=None, dtype=jnp.float32, remat=False,
            return_hidden=False, head=True, attention="dense", mesh=None, remat_policy="full", lora=None,
            dropout_key=None):
    """No-cache forward pass. tokens int32 [B, T]; input_mask bool [B, T] (default: all valid).

    head=False returns only the final (normed) hidden states [B, T, D], for callers that need logits
    at a few positions: `project` them there instead of paying for all T x V. Params in the scanned
    layout (see stack_layers) run the layers under scan. lora (models.lora.LoraConfig): params hold
    adapters beside the targeted kernels; dropout_key turns on their dropout (training).
    """
    if input_mask is None:
        input_mask = jnp.ones(tokens.shape, bool)
    model = Transformer(config, dtype=dtype, remat=remat, remat_policy=remat_policy, head=head,
                        scan_layers="layers" in params,
                        attention=attention, mesh=mesh)
    rngs = None
    if lora is not None:
        from exit_jax.models import lora as lora_lib
        model = lora_lib.wrap(model, lora, train=dropout_key is not None)
        rngs = None if dropout_key is None else {"dropout": dropout_key}
    logits, _, hidden = model.apply({"params": params}, tokens, positions_from_mask(input_mask),
                                    causal_mask(input_mask), rngs=rngs)
    if not head:
        return hidden
    return (logits, hidden) if return_hidden else logits


def project(params, config: ModelConfig, hidden, dtype=jnp.float32):
    """Final hidden states [..., D] -> float32 logits [..., V], exactly as Transformer's head computes."""
    if config.tie_embeddings:  # nn.Embed.attend: hidden @ embedding.T in the compute dtype
        kernel = params["embed"]["embedding"].T
    else:
        kernel = params["lm_head"]["kernel"]
    hidden, kernel = hidden.astype(dtype), kernel.astype(dtype)
    return softcap(jnp.dot(hidden, kernel).astype(jnp.float32), config.final_logit_softcapping)
