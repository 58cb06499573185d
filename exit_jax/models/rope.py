"""Rotary position embeddings as transformers computes them: the inverse frequencies of each RoPE scaling
(none, llama3, linear, yarn), YaRN's cos/sin factor, and the "rotate_half" rotation."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from exit_jax.models.config import ModelConfig


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [hd/2] with the config's RoPE scaling (transformers' formulas)."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    rs = config.rope_scaling
    if rs is not None and rs.rope_type == "linear":
        inv_freq = inv_freq / rs.factor
    elif rs is not None and rs.rope_type == "yarn":
        inv_freq = _yarn_inv_freq(inv_freq, rs, config.rope_theta, hd)
    elif rs is not None:
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def _yarn_inv_freq(inv_freq: np.ndarray, rs, theta: float, hd: int) -> np.ndarray:
    """YaRN's NTK-by-parts blend: frequencies that turn fewer than beta_slow times over the original
    context are interpolated (divided by factor), more than beta_fast times kept, a linear ramp between."""
    def dim_of(rotations):  # the dimension whose frequency turns `rotations` times over the context
        return hd * np.log(rs.original_max_position_embeddings / (rotations * 2 * np.pi)) / (2 * np.log(theta))
    low, high = dim_of(rs.beta_fast), dim_of(rs.beta_slow)
    if rs.truncate:
        low, high = np.floor(low), np.ceil(high)
    low, high = max(low, 0), min(high, hd - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(hd // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (the original frequency), 0: interpolate
    return inv_freq / rs.factor * (1 - keep) + inv_freq * keep


def rope_attention_factor(config: ModelConfig) -> float:
    """What YaRN multiplies cos and sin by (1.0 for every other RoPE)."""
    rs = config.rope_scaling
    if rs is None or rs.rope_type != "yarn":
        return 1.0
    if rs.attention_factor is not None:
        return float(rs.attention_factor)
    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * float(np.log(scale)) + 1.0
    if rs.mscale and rs.mscale_all_dim:
        return mscale(rs.factor, rs.mscale) / mscale(rs.factor, rs.mscale_all_dim)
    return mscale(rs.factor)


def apply_rope(x, positions, inv_freq, scale: float = 1.0):
    """HF "rotate_half" RoPE. x: [B, T, H, hd]; positions: [B, T]; cos and sin times `scale` (YaRN)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, hd]
    cos, sin = (jnp.cos(emb) * scale).astype(x.dtype), (jnp.sin(emb) * scale).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
