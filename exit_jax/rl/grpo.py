"""GRPO advantages and the clipped policy objective, as pure functions (paper §2.2, Eqs. 3-4).

Every token-level sum in `policy_loss` is divided by a normaliser that the caller may pass in
(`num_sequences`, `num_tokens`), so that a batch split into micro-batches, or over devices, sums to
exactly the loss of the whole batch: the learner computes the normalisers once for the full batch.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

SCALES = ("group", "none")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
# Metrics that add up over micro-batches and devices (each is already divided by a global normaliser).
SUM_METRICS = ("loss", "pg_loss", "kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "entropy")
# Of those, the token-mean diagnostics (not part of the objective).
DIAGNOSTIC_METRICS = ("kl", "clip_low_frac", "clip_high_frac", "ratio_mean", "entropy")


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; expected one of {choices}.")


def zero_variance_groups(rewards, valid=None) -> jax.Array:
    """[P, G] rewards -> bool [P]: True where every (valid) member of the group got the same reward."""
    rewards = jnp.asarray(rewards, jnp.float32)
    valid = jnp.ones(rewards.shape, bool) if valid is None else jnp.asarray(valid, bool)
    return jnp.max(jnp.where(valid, rewards, -jnp.inf), axis=-1) <= jnp.min(jnp.where(valid, rewards, jnp.inf),
                                                                         axis=-1)


# Compiled as one program: called eagerly on the host each iteration, their ~20 jnp ops would each be
# compiled on the first call (docs/speed.md).
@functools.partial(jax.jit, static_argnames=("scale", "eps", "ddof"))
def group_advantages(rewards, scale: str = "group", eps: float = 1e-6, ddof: int = 0, valid=None) -> jax.Array:
    """Group-relative advantages (paper Eq. 3): (r - mean) / (std + eps) within each group.

    rewards: [P, G] (P prompt groups of G rollouts) -> [P, G]. scale="none" only centres the rewards
    (Dr. GRPO). A constant-reward group gets exactly 0: the float rounding of its mean would otherwise be
    divided by eps and turn into a large spurious advantage. `valid` (bool [P, G]): the samples that count;
    the others (ungraded) are left out of their group's mean and std and get advantage 0.
    """
    _check_choice("advantage scale", scale, SCALES)
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape [groups, group_size]; got shape {rewards.shape}.")
    constant = zero_variance_groups(rewards, valid)[:, None]  # [P, 1]
    if valid is None:
        centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
        if scale == "group":  # paper §13.4: ddof = 0, eps = 1e-6
            centred = centred / (jnp.std(rewards, axis=-1, ddof=ddof, keepdims=True) + eps)
        return jnp.where(constant, 0.0, centred)
    valid = jnp.asarray(valid, bool)
    w = valid.astype(jnp.float32)
    n = jnp.sum(w, axis=-1, keepdims=True)
    centred = rewards - jnp.sum(rewards * w, axis=-1, keepdims=True) / jnp.maximum(n, 1.0)
    if scale == "group":
        var = jnp.sum(w * centred ** 2, axis=-1, keepdims=True) / jnp.maximum(n - ddof, 1.0)
        centred = centred / (jnp.sqrt(var) + eps)
    return jnp.where(constant | ~valid, 0.0, centred)


@functools.partial(jax.jit, static_argnames=("drop_zero_variance_groups",))
def group_keep_mask(rewards, drop_zero_variance_groups: bool = False, valid=None) -> jax.Array:
    """[P, G] -> bool [P, G]: the samples that enter the loss (paper §13.4: all the valid ones, unless
    dropping zero-variance groups)."""
    rewards = jnp.asarray(rewards, jnp.float32)
    keep = jnp.ones(rewards.shape, bool) if valid is None else jnp.asarray(valid, bool)
    if drop_zero_variance_groups:
        keep = keep & ~zero_variance_groups(rewards, valid)[:, None]
    return keep


def kl_penalty(logprobs, ref_logprobs, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman's k1/k2/k3)."""
    _check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_ratio = ref_logprobs - logprobs  # log(pi_ref / pi_theta)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    return jnp.exp(log_ratio) - 1.0 - log_ratio  # k3, paper §13.6: unbiased and never negative


def token_weights(mask, aggregation: str = "seq_mean_token_mean", num_sequences=None,
                  num_tokens=None, max_length: Optional[int] = None) -> jax.Array:
    """[B, T] weights w such that the batch loss is sum(w * per_token_loss).

    seq_mean_token_mean (paper Eq. 4): 1 / (|o_i| * num_sequences); token_mean (DAPO): 1 / #tokens;
    dr_grpo: 1 / (max_length * num_sequences), a constant in place of the sequence length (Liu et al.).
    num_sequences / num_tokens default to this batch's own counts; max_length defaults to T.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = jnp.asarray(mask, jnp.float32)
    if num_sequences is None:
        num_sequences = mask.shape[0]
    num_sequences = jnp.maximum(jnp.asarray(num_sequences, jnp.float32), 1.0)
    if aggregation == "seq_mean_token_mean":
        lengths = jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)  # [B, 1]
        return mask / (lengths * num_sequences)
    if aggregation == "token_mean":
        num_tokens = jnp.sum(mask) if num_tokens is None else num_tokens
        return mask / jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)
    length = mask.shape[-1] if max_length is None else max_length
    return mask / (float(length) * num_sequences)


class LossInputs(NamedTuple):
    """One batch's arrays for the objective. [B, T]: `logprobs` (under the params being trained),
    `old_logprobs` (the sampler's), `mask` (completion tokens), and optionally `ref_logprobs` (the KL
    term's reference) and `entropy` (a diagnostic). [B]: `advantages`, one value for all tokens of a
    rollout; optionally `advantage_multiplier` (the diversity coefficient of paper Eq. 6) and `sample_mask`
    (False removes a sample: drop_zero_variance_groups)."""
    logprobs: jax.Array
    old_logprobs: jax.Array
    advantages: jax.Array
    mask: jax.Array
    ref_logprobs: Optional[jax.Array] = None
    advantage_multiplier: Optional[jax.Array] = None
    sample_mask: Optional[jax.Array] = None
    entropy: Optional[jax.Array] = None


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The objective's settings (paper §7: ε = 0.2 both ways; β = 0). `max_length`: dr_grpo's constant
    normaliser (default: the batch length); `group_size` lets the metrics count zero-variance groups
    (consecutive runs of group_size samples)."""
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_beta: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "seq_mean_token_mean"
    max_length: Optional[int] = None
    group_size: Optional[int] = None

    def __post_init__(self):
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        _check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)


def policy_loss(inputs: LossInputs, config: LossConfig = LossConfig(), num_sequences=None, num_tokens=None):
    """The negated GRPO objective of paper Eq. 4 (PPO-clipped ratio, minus beta * KL to a reference).

    num_sequences and num_tokens override this batch's own normalisers (for micro-batches of a larger
    batch). Returns (loss, metrics); the diagnostics kl / clip fractions / ratio_mean / entropy are token
    means.
    """
    logprobs, old_logprobs, advantages, mask, ref_logprobs, advantage_multiplier, sample_mask, entropy = inputs
    clip_low, clip_high, kl_beta = config.clip_low, config.clip_high, config.kl_beta
    mask = jnp.asarray(mask, jnp.float32)
    advantages = jnp.asarray(advantages, jnp.float32)
    if logprobs.shape != mask.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {logprobs.shape}, old_logprobs {old_logprobs.shape} and mask "
                         f"{mask.shape} must all have the same shape [batch, time].")
    if advantages.shape != mask.shape[:1]:
        raise ValueError(f"advantages must have shape [batch]={mask.shape[:1]}; got {advantages.shape}.")
    keep = jnp.ones(advantages.shape, jnp.float32)
    if sample_mask is not None:
        keep = jnp.asarray(sample_mask, jnp.float32)
        mask = mask * keep[:, None]
    if num_sequences is None:
        num_sequences = jnp.sum(keep)
    if num_tokens is None:
        num_tokens = jnp.sum(mask)
    weights = token_weights(mask, config.aggregation, num_sequences, num_tokens, config.max_length)  # [B, T]
    token_mean = mask / jnp.maximum(num_tokens, 1.0)  # [B, T], for the diagnostics
    valid = mask > 0

    adv = advantages if advantage_multiplier is None else advantages * advantage_multiplier
    # Padding positions may hold any value; zero their log-ratio so exp() cannot overflow into NaN.
    log_ratio = jnp.where(valid, logprobs - old_logprobs, 0.0)
    ratio = jnp.exp(log_ratio)  # [B, T]
    a = adv[:, None]
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = -jnp.minimum(ratio * a, clipped * a)  # [B, T]
    pg_loss = jnp.sum(weights * pg)
    per_token = pg
    kl = jnp.zeros(())
    if ref_logprobs is not None:
        kl_tok = jnp.where(valid, kl_penalty(logprobs, ref_logprobs, config.kl_estimator), 0.0)
        kl = jnp.sum(token_mean * kl_tok)
        per_token = pg + kl_beta * kl_tok
    loss = jnp.sum(weights * per_token)

    # Where these fire, the min() picks the constant clipped branch, so the gradient is zero.
    clip_low_hit = (ratio < 1.0 - clip_low) & (a < 0)
    clip_high_hit = (ratio > 1.0 + clip_high) & (a > 0)
    kept = jnp.maximum(jnp.sum(keep), 1.0)
    adv_mean = jnp.sum(keep * adv) / kept
    metrics = {
        "loss": loss,
        "pg_loss": pg_loss,
        "kl": kl,
        "clip_low_frac": jnp.sum(token_mean * clip_low_hit),
        "clip_high_frac": jnp.sum(token_mean * clip_high_hit),
        "ratio_mean": jnp.sum(token_mean * ratio),
        "ratio_min": jnp.min(jnp.where(valid, ratio, jnp.inf)),
        "ratio_max": jnp.max(jnp.where(valid, ratio, -jnp.inf)),
        "entropy": jnp.zeros(()) if entropy is None else jnp.sum(token_mean * entropy),
        "advantage_mean": adv_mean,
        "advantage_std": jnp.sqrt(jnp.sum(keep * jnp.square(adv - adv_mean)) / kept),
        "zero_variance_frac": zero_advantage_group_frac(advantages, config.group_size),
    }
    return loss, metrics


def zero_advantage_group_frac(advantages, group_size: Optional[int]) -> jax.Array:
    """Fraction of groups (consecutive runs of group_size in [B]) whose advantages are all zero.

    group_advantages sets a constant-reward group to exactly 0, so this counts zero-variance groups.
    NaN when group_size is unknown, rather than a number that would look meaningful.
    """
    if group_size is None:
        return jnp.full((), jnp.nan)
    b = advantages.shape[0]
    if b % group_size:
        raise ValueError(f"batch size {b} is not a multiple of group_size={group_size}.")
    groups = jnp.reshape(advantages, (b // group_size, group_size))
    return jnp.mean(jnp.all(groups == 0, axis=-1).astype(jnp.float32))
