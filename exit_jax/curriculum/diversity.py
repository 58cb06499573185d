"""The multiplicative diversity bonus of full ExIt (paper §4.2, Eq. 6).

For a GRPO group with solution embeddings e_i and centroid ē:

    d_i = ‖e_i − ē‖ / (max_j ‖e_j − ē‖ − min_j ‖e_j − ē‖)          (Eq. 6, exactly as printed)

The numerator is the raw distance, so d_i is not bounded to [0, 1]. Every group-relative advantage is
multiplied by its rollout's coefficient, positive and negative alike (Â_i = d_i · A_i): the batch carries
the coefficients as `advantage_multiplier` and the loss multiplies (rl/grpo.py).
"""
from __future__ import annotations

import numpy as np

# When max − min ≤ this fraction of max, the distances are equal up to float error (e.g. every G = 2
# group, whose two distances are equal by symmetry) and Eq. 6 is undefined: all coefficients are 1.0
# (docs/paper.md §13.7).
RELATIVE_TOL = 1e-6


def coefficients(embeddings) -> np.ndarray:
    """Eq. 6 coefficients float32 [G] of a group's embeddings float [G, d]."""
    e = np.asarray(embeddings, np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"Diversity embeddings must have shape [group, dim], got {e.shape}.")
    if not np.all(np.isfinite(e)):
        raise ValueError("Diversity embeddings contain NaN or inf.")
    dist = np.linalg.norm(e - e.mean(axis=0, keepdims=True), axis=-1)  # [G]
    spread = dist.max() - dist.min()
    if spread <= RELATIVE_TOL * dist.max() or spread == 0.0:
        return np.ones(e.shape[0], np.float32)
    return (dist / spread).astype(np.float32)


def group_coefficients(embedder, texts) -> np.ndarray:
    """Embeds one group's solutions and returns their Eq. 6 coefficients float32 [G]."""
    return coefficients(embedder.embed(list(texts)))
