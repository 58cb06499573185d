"""Packs rollout segments into the learner's fixed-shape batch.

Row layout (Lp = prompt bucket, N = max_new_tokens):

    [ left-padded prompt (Lp) | completion tokens, then padding (N) ]

`completion_mask` and `old_logprobs` cover only the last N columns (the completions), so the learner
computes logits there only; `old_logprobs[:, j]` is the sampler's log-prob of `tokens[:, Lp + j]`,
nonzero only where `completion_mask` is set, which is what `rl.learner` expects. Rows are padded up to
a multiple of `row_multiple` with masked-out rows, and Lp to a `prompt_bucket`, so the update compiles
for few shapes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from exit_jax.sampling import prompt_bucket


def layout(prompt_lengths: Sequence[int], num_segments: int, row_multiple: int, min_bucket: int) -> tuple:
    """(rows, prompt bucket Lp) of the batch `pack` builds from segments with these prompt lengths."""
    rows = -(-num_segments // row_multiple) * row_multiple
    return rows, prompt_bucket(max(prompt_lengths), min_bucket)


def empty(rows: int, prompt_len: int, max_new_tokens: int, pad_id: int) -> dict:
    """An all-padding batch of that layout: what `pack` fills, and the shapes the update compiles for."""
    width = prompt_len + max_new_tokens
    return {"tokens": np.full((rows, width), pad_id, np.int32), "input_mask": np.zeros((rows, width), bool),
            "completion_mask": np.zeros((rows, max_new_tokens), bool),
            "old_logprobs": np.zeros((rows, max_new_tokens), np.float32),
            "advantages": np.zeros((rows,), np.float32), "advantage_multiplier": np.ones((rows,), np.float32),
            "sample_mask": np.zeros((rows,), bool)}


def pack(segments: Sequence, advantages: np.ndarray, multipliers: np.ndarray, max_new_tokens: int,
         pad_id: int, row_multiple: int, min_bucket: int = 64, keep: Optional[Sequence[bool]] = None) -> dict:
    """segments: training Segments; advantages, multipliers: float [P, G] per rollout; keep: per segment,
    False leaves it out of the loss and its normalisers (sample_mask)."""
    if not segments:
        raise ValueError("pack needs at least one segment.")
    rows, lp = layout([len(s.completion.prompt_ids) for s in segments], len(segments), row_multiple, min_bucket)
    b = empty(rows, lp, max_new_tokens, pad_id)
    for i, seg in enumerate(segments):
        c = seg.completion
        prompt, completion = np.asarray(c.prompt_ids, np.int32), np.asarray(c.token_ids, np.int32)
        if len(completion) > max_new_tokens:
            raise ValueError(f"segment {i} has {len(completion)} completion tokens > {max_new_tokens}.")
        b["tokens"][i, lp - len(prompt):lp] = prompt
        b["tokens"][i, lp:lp + len(completion)] = completion
        b["input_mask"][i, lp - len(prompt):lp + len(completion)] = True
        b["completion_mask"][i, :len(completion)] = True
        b["old_logprobs"][i, :len(completion)] = c.logprobs
        b["advantages"][i] = advantages[seg.group, seg.sample]
        b["advantage_multiplier"][i] = multipliers[seg.group, seg.sample]
        b["sample_mask"][i] = True if keep is None else bool(keep[i])
    return b
