"""Sampling knobs and the per-step token choice: temperature, top-k, top-p, greedy.

The knobs are traced arrays (a pytree), so changing them between calls never recompiles the sampler.
Log-prob semantics (what the GRPO learner recomputes, so sampler and trainer agree by construction):
log_softmax(logits / temperature) over the FULL vocabulary at the sampled token; temperature 0 means
greedy decoding and plain log_softmax(logits). top-k / top-p only restrict which tokens may be drawn;
they do not renormalise the reported log-probs.
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class SamplingKnobs:
    temperature: jax.Array  # float32 []; 0 = greedy
    top_k: jax.Array  # int32 []; 0 = off
    top_p: jax.Array  # float32 []; 1 = off
    max_new_tokens: jax.Array  # int32 []; at most the sampler's static cap


def make_knobs(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               max_new_tokens: int = 1, cap: int | None = None) -> SamplingKnobs:
    """Validate on the host (one clear sentence per bad value) and wrap as arrays."""
    temperature, top_p = float(temperature), float(top_p)
    if not temperature >= 0.0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] (1 = off), got {top_p}.")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}.")
    if cap is not None and max_new_tokens > cap:
        raise ValueError(f"max_new_tokens={max_new_tokens} exceeds this sampler's cap of {cap} "
                         "(the max_new_tokens it was built with).")
    return SamplingKnobs(jnp.asarray(temperature, jnp.float32), jnp.asarray(int(top_k), jnp.int32),
                         jnp.asarray(top_p, jnp.float32), jnp.asarray(int(max_new_tokens), jnp.int32))


def token_logprobs(logits, tokens, temperature):
    """The one definition of a token's log-prob, which the sampler records and the learner trains on:
    log_softmax(logits / T) at `tokens`, over the full vocabulary (T = 0, greedy, scores with T = 1).

    logits f32 [..., V], tokens int [...] -> (log-probs [...], the scaled logits [..., V], their logsumexp
    [...]); the learner's entropy reuses the last two. Gathered as scaled[token] - logsumexp(scaled), never
    from a materialised [..., V] log_softmax. A Python T of 1 skips the scaling (one [..., V] buffer less).
    """
    if not (isinstance(temperature, (int, float)) and temperature == 1.0):
        logits = logits * (1.0 / jnp.where(temperature > 0, temperature, 1.0))
    lse = jax.nn.logsumexp(logits, axis=-1)
    return jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0] - lse, logits, lse


def _ordered_keys(x):
    """float32 -> uint32 with the same order (so bisection over keys is exact in 32 steps)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_key(keys, pred):
    """Per row, the largest key t with pred(keys >= t) true; pred is monotone and holds at the row
    minimum. keys uint32 [B, V]; pred: bool mask [B, V] -> bool [B]. 32 halvings, no sort."""
    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) - (hi - lo) // 2  # upper middle, no uint32 overflow
        ok = pred(keys >= mid[:, None])
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)
    lo, _ = jax.lax.fori_loop(0, 32, halve, (jnp.min(keys, -1), jnp.max(keys, -1)))
    return lo


def filter_logits(scaled, top_k, top_p):
    """-inf outside the top-k / top-p kept set (ties at the threshold are kept). [B, V] -> [B, V].

    top-p applies to the top-k-truncated distribution: keep the fewest highest tokens whose mass
    reaches top_p of it (the top token always stays). Thresholds are found by bisection over the
    float order, not by sorting: XLA:CPU sorts a [64, 49k] array in over a second.
    """
    vocab = scaled.shape[-1]
    keys = _ordered_keys(scaled)  # [B, V]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    t_k = jax.lax.cond(k < vocab, lambda: _largest_key(keys, lambda m: jnp.sum(m, -1) >= k),
                       lambda: jnp.min(keys, -1))  # [B]
    w = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # [B, V], unnormalised probs
    target = top_p * jnp.sum(jnp.where(keys >= t_k[:, None], w, 0.0), -1)  # [B]
    t_p = jax.lax.cond(top_p < 1.0, lambda: _largest_key(
        keys, lambda m: jnp.sum(jnp.where(m, w, 0.0), -1) >= target), lambda: t_k)
    return jnp.where(keys >= jnp.maximum(t_k, t_p)[:, None], scaled, -jnp.inf)


def argmax(x):
    """First index of the row maximum. [B, V] -> int32 [B].

    Same result as jnp.argmax, but as two plain reductions: XLA:CPU's fused (value, index) reduction
    is several times slower on a 49k-wide vocabulary.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    iota = jnp.arange(x.shape[-1], dtype=jnp.float32)  # float min vectorises; exact below 2**24
    return jnp.min(jnp.where(x == top, iota, jnp.inf), axis=-1).astype(jnp.int32)


_BLOCK = 256  # vocabulary block of the two-level inverse-CDF draw


def _draw(keys, logits):
    """One categorical draw per row by inverse CDF: a single uniform per row instead of V Gumbels.

    Two levels (which block of 256 tokens, then which token inside it) so that no cumulative sum runs
    over the whole vocabulary: a 49k-wide cumsum costs as much as the model's head on CPU.
    keys: [B] typed keys; logits: [B, V] with -inf for excluded tokens. -> int32 [B].
    """
    b, v = logits.shape
    nb = -(-v // _BLOCK)
    w = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [B, V], 0 where excluded
    w = jnp.pad(w, ((0, 0), (0, nb * _BLOCK - v))).reshape(b, nb, _BLOCK)
    mass = jnp.sum(w, axis=-1)  # [B, nb]
    cdf = jnp.cumsum(mass, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys) * cdf[:, -1]  # [B]
    # First block whose cdf exceeds u (it has mass > 0); if rounding leaves none, the heaviest one.
    blk = jnp.sum(cdf <= u[:, None], axis=-1)
    blk = jnp.where(blk >= nb, argmax(mass), blk)
    inner = jnp.take_along_axis(w, blk[:, None, None], axis=1)[:, 0]  # [B, 256]
    below = jnp.take_along_axis(cdf - mass, blk[:, None], axis=1)[:, 0]  # mass before the block
    rest = jnp.maximum(u - below, 0.0)
    inner_cdf = jnp.cumsum(inner, axis=-1)
    # First token whose cdf exceeds the rest: excluded tokens add no mass, so never one of them.
    j = jnp.sum(inner_cdf <= rest[:, None], axis=-1)
    j = jnp.where(j >= _BLOCK, argmax(inner), j)
    return (blk * _BLOCK + j).astype(jnp.int32)


def choose_tokens(logits, keys, knobs: SamplingKnobs):
    """Pick the next token per row and its log-prob. logits f32 [B, V], keys [B] -> (int32 [B], f32 [B]).

    The log-prob is `token_logprobs`'s, and each branch below returns only [B] token ids: on XLA:CPU a
    [B, V] value that crosses a cond boundary or feeds several consumers costs more than the model's head.
    """
    logits = logits.astype(jnp.float32)
    inv_t = 1.0 / jnp.where(knobs.temperature > 0, knobs.temperature, 1.0)

    def greedy(x):
        return argmax(x)

    def sample(x):
        return _draw(keys, x * inv_t)

    def sample_filtered(x):  # the vocab sort costs several heads: only when a filter is on
        return _draw(keys, filter_logits(x * inv_t, knobs.top_k, knobs.top_p))

    filtered = (knobs.top_k > 0) | (knobs.top_p < 1.0)
    branch = jnp.where(knobs.temperature > 0, jnp.where(filtered, 2, 1), 0)
    tokens = jax.lax.switch(branch, (greedy, sample, sample_filtered), logits)
    return tokens, token_logprobs(logits, tokens, knobs.temperature)[0]
