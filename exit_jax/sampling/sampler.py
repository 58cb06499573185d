"""The jitted batched sampler: one prefill per prompt, its KV cache fanned out to G samples, then a
`lax.while_loop` decode that stops as soon as every row has stopped or the budget is spent.

Layout of the fixed-length cache of a row (L = prompt bucket, N = max_new_tokens cap, S = L + N):

    slot:   0 ............ L-1 | L ........ L+N-1
            left-padded prompt | generated tokens (slot L+i holds completion token i)

The prompt's slots are stored once per prompt ([P, Hkv, L, D], written by the prefill) and shared by
its G samples; each row owns only its N generated slots ([B, Hkv, N, D]). Decoding reads a prompt's
keys and values once per step for the whole group, and the cache holds P * L + B * N slots, not
B * (L + N): G times less prompt memory and traffic, which is most of it for long (MLE) prompts.

A key slot is attended iff it is a real prompt token or a generated slot already written; positions
come from the left-padding mask (prompt token j of a row of length n sits at position j, completion
token i at n + i), so padding never shifts RoPE and a row computes what it would compute alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from exit_jax.models.config import ModelConfig
from exit_jax.models import flash, lora
from exit_jax.models.transformer import Transformer, causal_mask, init_cache, positions_from_mask, project
from exit_jax.sampling.methods import SamplingKnobs, choose_tokens, make_knobs
from exit_jax.sampling.output import SampleOutput


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Everything static under jit (hashable): changing any of it compiles a new sampler."""
    config: ModelConfig
    num_samples: int  # G
    max_new_tokens: int  # N: output width and cap on the traced max_new_tokens
    stop_ids: tuple  # eos ids + extra stop ids
    pad_id: int
    dtype: Any = jnp.float32  # compute dtype; the KV cache is stored in it
    mesh: Optional[Mesh] = None
    data_axis: Optional[str] = None  # mesh axis the prompt batch is split over
    prefill_chunks: int = 1  # prompts prefilled in this many passes (long prompts: less temporary memory)
    decode_reduce: bool = True  # Transformer.decode_reduce: True on CPU
    attention: str = "dense"  # Transformer.attention of the prefill (flash.resolve of the knob)
    lora: Any = None  # models.lora.LoraConfig when the params carry unmerged adapters


def _model(spec: SamplerSpec, **kwargs):
    model = Transformer(spec.config, dtype=spec.dtype, decode_reduce=spec.decode_reduce, **kwargs)
    return model if spec.lora is None else lora.wrap(model, spec.lora)


@flax.struct.dataclass
class SamplingState:
    """Decode state of B = P * G rows (row p * G + g is sample g of prompt p). Donated to the loop."""
    cache: dict  # layers_i/{prefix_k,prefix_v}: [P, Hkv, L, hd]; {k,v}: [B, Hkv, N, hd]; compute dtype
    prompt_mask: jax.Array  # bool [B, L]: real prompt slots
    prompt_len: jax.Array  # int32 [B]
    last: jax.Array  # int32 [B]: the token to feed next
    tokens: jax.Array  # int32 [B, N]
    logprobs: jax.Array  # float32 [B, N]
    lengths: jax.Array  # int32 [B]
    stopped: jax.Array  # bool [B]: ended on a stop id
    done: jax.Array  # bool [B]: stopped or out of budget
    step: jax.Array  # int32 []: completion tokens emitted so far
    keys: jax.Array  # key [B]: one stream per row, folded with the step index
    knobs: SamplingKnobs


def _constrain(spec: SamplerSpec, tree):
    """Keep every batch-leading array split over the data axis (no-op without a mesh), and the KV cache's
    heads ([rows, Hkv, slots, D]) over the tensor axis when the mesh has one: each device then holds
    and reads only its heads' keys and values, next to its shard of q/k/v/o."""
    if spec.mesh is None:
        return tree
    tensor = spec.mesh.shape.get(flash.TENSOR_AXIS, 1)
    heads = flash.TENSOR_AXIS if tensor > 1 and spec.config.num_kv_heads % tensor == 0 else None

    def put(path, x):
        cache = heads is not None and bool(path) and getattr(path[-1], "key", None) in (
            "k", "v", "prefix_k", "prefix_v")
        spec_ = PartitionSpec(spec.data_axis, heads) if cache else PartitionSpec(spec.data_axis)
        return jax.lax.with_sharding_constraint(x, NamedSharding(spec.mesh, spec_))
    return jax.tree_util.tree_map_with_path(put, tree)


def _is_stop(spec: SamplerSpec, tokens):
    if not spec.stop_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[:, None] == jnp.asarray(spec.stop_ids, jnp.int32)[None], axis=-1)


def _prompt_pass(spec: SamplerSpec, params, tokens, prompt_mask):
    """Prompts [P, L] -> float32 logits of their last token [P, 1, V] and the KV cache of their slots."""
    num_p, length = tokens.shape
    model = _model(spec, head=False, attention=spec.attention, mesh=spec.mesh)
    cache = init_cache(spec.config, num_p, length, spec.dtype)  # the prompt's slots only
    _, cache, hidden = model.apply({"params": params}, tokens, positions_from_mask(prompt_mask),
                                   causal_mask(prompt_mask), cache, 0)
    return project(params, spec.config, hidden[:, -1:], spec.dtype), cache  # the vocab head: last token only


def _prefill_impl(spec: SamplerSpec, params, tokens, prompt_mask, prompt_index, seed, knobs: SamplingKnobs):
    """tokens/prompt_mask [P, L] (left-padded), prompt_index int32 [P], seed uint32 [] -> state."""
    num_p, length = tokens.shape
    g, n, chunks = spec.num_samples, spec.max_new_tokens, spec.prefill_chunks
    if chunks > 1:
        # One pass per chunk of prompts, each chunk taking every chunks-th prompt so that it spans all
        # devices of the data axis: the attention temporaries shrink by `chunks`, the results do not move.
        split = lambda x: jnp.swapaxes(x.reshape((num_p // chunks, chunks) + x.shape[1:]), 0, 1)  # noqa: E731
        merge = lambda x: jnp.swapaxes(x, 0, 1).reshape((num_p,) + x.shape[2:])  # noqa: E731
        logits, cache = jax.tree.map(merge, jax.lax.map(
            lambda tm: _prompt_pass(spec, params, *tm), (split(tokens), split(prompt_mask))))
    else:
        logits, cache = _prompt_pass(spec, params, tokens, prompt_mask)
    # Fan out to G samples per prompt only now: the prompt was run once, and its cache stays shared.
    fan = lambda x: jnp.broadcast_to(x[:, None], (num_p, g) + x.shape[1:]).reshape(  # noqa: E731
        (num_p * g,) + x.shape[1:])
    logits, prompt_mask = _constrain(spec, jax.tree.map(fan, (logits[:, 0], prompt_mask)))
    own = init_cache(spec.config, num_p * g, n, spec.dtype)
    cache = _constrain(spec, {name: {"prefix_k": layer["k"], "prefix_v": layer["v"], **own[name]}
                              for name, layer in cache.items()})
    # Row key = f(seed, prompt index, sample index): independent of batch size, bucket and devices.
    base = jax.random.key(seed)
    prompt_keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(prompt_index)  # [P]
    keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(g)))(
        prompt_keys).reshape(num_p * g)
    keys = _constrain(spec, keys)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, 0)  # token 0's draw
    first, lp = choose_tokens(logits, step_keys, knobs)
    b = num_p * g
    stopped = _is_stop(spec, first)
    state = SamplingState(
        cache=cache, prompt_mask=prompt_mask, prompt_len=jnp.sum(prompt_mask, -1, dtype=jnp.int32),
        last=first, tokens=jnp.full((b, n), spec.pad_id, jnp.int32).at[:, 0].set(first),
        logprobs=jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp), lengths=jnp.ones((b,), jnp.int32),
        stopped=stopped, done=stopped | (knobs.max_new_tokens <= 1), step=jnp.asarray(1, jnp.int32),
        keys=keys, knobs=knobs)
    return state


def _decode_impl(spec: SamplerSpec, params, state: SamplingState) -> SamplingState:
    """Emit completion tokens 1..N-1 until every row is done."""
    model = _model(spec)
    length = state.prompt_mask.shape[1]
    slots = jnp.arange(length + spec.max_new_tokens)  # [S]
    kv_prompt = jnp.pad(state.prompt_mask, ((0, 0), (0, spec.max_new_tokens)))  # [B, S]

    def cond(s: SamplingState):
        return (s.step < spec.max_new_tokens) & ~jnp.all(s.done)

    def body(s: SamplingState) -> SamplingState:
        slot = length + s.step - 1  # where the token fed now is written (its row's slot s.step - 1)
        mask = jnp.where(slots < length, kv_prompt, slots <= slot)[:, None]  # [B, 1, S]
        positions = (s.prompt_len + s.step - 1)[:, None]  # [B, 1]
        logits, cache, _ = model.apply({"params": params}, s.last[:, None], positions, mask,
                                       s.cache, s.step - 1)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.keys, s.step)
        tok, lp = choose_tokens(logits[:, 0], keys, s.knobs)
        tok = jnp.where(s.done, spec.pad_id, tok)
        lp = jnp.where(s.done, 0.0, lp)
        stop = ~s.done & _is_stop(spec, tok)
        out = s.replace(
            cache=cache, last=tok,
            tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
            logprobs=jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], (0, s.step)),
            lengths=s.lengths + (~s.done).astype(jnp.int32), stopped=s.stopped | stop,
            done=s.done | stop | (s.step + 1 >= s.knobs.max_new_tokens), step=s.step + 1)
        return out.replace(**_constrain(spec, {f: getattr(out, f) for f in (
            "cache", "last", "tokens", "logprobs", "lengths", "stopped", "done")}))

    return jax.lax.while_loop(cond, body, state)


def padded_prompts(spec: SamplerSpec, n: int) -> int:
    """Prompts a call of n prompts runs: a multiple of the data axis times prefill_chunks, so that every
    prefill chunk spans the data axis evenly (the extra prompts repeat the last real one)."""
    multiple = spec.prefill_chunks * (1 if spec.mesh is None else spec.mesh.shape[spec.data_axis])
    return -(-n // multiple) * multiple


def prompt_bucket(n: int, min_bucket: int) -> int:
    """Smallest bucket >= max(n, min_bucket), buckets being 2^k and 3 * 2^(k-1) (..., 64, 96, 128, 192,
    256, 384, ...): two compiled shapes per octave, at most 1.5x padding (powers of two alone cost up
    to 2x, and every padded column is paid for in the sampler's prefill and in the update)."""
    n = max(int(n), int(min_bucket), 1)
    power = 1 << (n - 1).bit_length()
    return power * 3 // 4 if power >= 4 and power * 3 // 4 >= n else power


class Sampler:
    """Reusable jitted sampler; build once, call every iteration with fresh params and prompts.

    Prompt lengths are padded to `prompt_bucket`s (>= min_bucket); the number of prompts P is
    padded to a multiple of the mesh's data axis times prefill_chunks. A new (P, bucket) pair compiles once; knobs,
    prompts of the same bucket and new params do not recompile.
    """

    def __init__(self, config: ModelConfig, *, num_samples: int, max_new_tokens: int,
                 eos_ids: Sequence[int], pad_id: int, stop_ids: Sequence[int] = (),
                 dtype: Any = jnp.float32, mesh: Optional[Mesh] = None,
                 data_axis: Optional[str] = None, min_bucket: int = 32, prefill_chunks: int = 1,
                 attention: str = "auto", lora: Any = None):
        """lora: a models.lora.LoraConfig when `params` will carry unmerged adapters."""
        if num_samples < 1 or max_new_tokens < 1 or prefill_chunks < 1:
            raise ValueError(f"num_samples, max_new_tokens and prefill_chunks must be >= 1, got "
                             f"{num_samples}, {max_new_tokens} and {prefill_chunks}.")
        if mesh is not None and data_axis is None:
            data_axis = mesh.axis_names[0]
        if mesh is not None and data_axis not in mesh.axis_names:
            raise ValueError(f"data_axis {data_axis!r} is not an axis of the mesh {mesh.axis_names}.")
        stops = tuple(dict.fromkeys(int(i) for i in (*eos_ids, *stop_ids)))
        platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
        self.spec = SamplerSpec(config, int(num_samples), int(max_new_tokens), stops, int(pad_id),
                                jnp.dtype(dtype), mesh, data_axis, int(prefill_chunks), platform == "cpu",
                                flash.resolve(attention, platform), lora)
        self.min_bucket = int(min_bucket)
        # Built per instance from the module-level functions; jax shares traces between instances.
        self._prefill = jax.jit(_prefill_impl, static_argnums=0)
        self._decode = jax.jit(_decode_impl, static_argnums=0, donate_argnums=2)

    def _batch(self, prompts: Sequence[Sequence[int]]):
        """Validated, left-padded numpy batch: tokens/mask [P', L] with P' a multiple of the mesh."""
        vocab = self.spec.config.vocab_size
        if isinstance(prompts, (str, bytes)) or len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of token-id lists.")
        rows = []
        for i, p in enumerate(prompts):
            row = np.asarray(p).reshape(-1)
            if row.size == 0 or not np.issubdtype(row.dtype, np.integer):
                raise ValueError(f"prompt {i} must be a non-empty list of int token ids.")
            if row.min() < 0 or row.max() >= vocab:
                raise ValueError(f"prompt {i} has a token id outside [0, {vocab}).")
            rows.append(row.astype(np.int32))
        longest = max(len(r) for r in rows)
        limit = self.spec.config.max_position_embeddings
        if longest + self.spec.max_new_tokens > limit:
            raise ValueError(f"prompt length {longest} + max_new_tokens {self.spec.max_new_tokens} "
                             f"exceeds the model's max_position_embeddings {limit}.")
        length = prompt_bucket(longest, self.min_bucket)
        num_p = padded_prompts(self.spec, len(rows))
        tokens = np.full((num_p, length), self.spec.pad_id, np.int32)
        mask = np.zeros((num_p, length), bool)
        for i in range(num_p):  # filler prompts (for even shards) repeat the last real one
            row = rows[min(i, len(rows) - 1)]
            tokens[i, length - len(row):], mask[i, length - len(row):] = row, True
        return tokens, mask, rows

    def __call__(self, params, prompts: Sequence[Sequence[int]], *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, max_new_tokens: Optional[int] = None,
                 seed: int = 0, first_index: int = 0) -> SampleOutput:
        """first_index: the index of prompts[0] in a larger batch sampled in parts (row keys depend on
        the seed and the prompt's index, so the parts draw what the whole batch would)."""
        spec = self.spec
        n = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
        knobs = make_knobs(temperature, top_k, top_p, n, cap=spec.max_new_tokens)
        tokens, mask, rows = self._batch(prompts)
        index = np.arange(first_index, first_index + tokens.shape[0], dtype=np.int32)
        seed = jnp.asarray(np.uint32(int(seed) % (1 << 32)))
        batch = (tokens, mask, index)
        if spec.mesh is not None:
            on_mesh = all(isinstance(x, jax.Array) and getattr(x.sharding, "mesh", None) == spec.mesh
                          for x in jax.tree.leaves(params))
            if not on_mesh:  # host params: one replica per device (sharded ones are read in place)
                params = jax.device_put(params, NamedSharding(spec.mesh, PartitionSpec()))
            batch = jax.device_put(batch, NamedSharding(spec.mesh, PartitionSpec(spec.data_axis)))
        state = self._prefill(spec, params, *batch, seed, knobs)
        state = self._decode(spec, params, state)
        num_p, g = len(rows), spec.num_samples
        fetch = lambda x: np.asarray(x).reshape((-1, g) + x.shape[1:])[:num_p]  # noqa: E731
        return SampleOutput(tokens=fetch(state.tokens)[..., :n], lengths=fetch(state.lengths),
                            logprobs=fetch(state.logprobs)[..., :n], finished=fetch(state.stopped),
                            prompts=tuple(tuple(r.tolist()) for r in rows), pad_id=spec.pad_id)


def generate(lm, prompts: Sequence[Sequence[int]], num_samples: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
             mesh: Optional[Mesh] = None, min_bucket: int = 32) -> SampleOutput:
    """Sample `num_samples` completions per prompt. lm: anything with .config, .params, .dtype and
    .tokenizer (.eos_ids, .pad_id, and .decode when stop_strings are given).

    The cap is max_new_tokens rounded up to a bucket, so nearby budgets share one compile.
    """
    cap = prompt_bucket(max_new_tokens, 16)
    sampler = Sampler(lm.config, num_samples=num_samples, max_new_tokens=cap,
                      eos_ids=lm.tokenizer.eos_ids, pad_id=lm.tokenizer.pad_id, stop_ids=stop_ids,
                      dtype=getattr(lm, "dtype", jnp.float32), mesh=mesh, min_bucket=min_bucket)
    out = sampler(lm.params, prompts, temperature=temperature, top_k=top_k, top_p=top_p,
                  max_new_tokens=max_new_tokens, seed=seed)
    if stop_strings:
        out = out.truncate_at_stop_strings(stop_strings, lm.tokenizer.decode)
    return out
