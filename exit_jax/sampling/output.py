"""The rollout group a sampler returns (host numpy arrays), and stop-string truncation on the host."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """G completions for each of P prompts, N = max_new_tokens.

    A row's completion is tokens[p, g, :lengths[p, g]], stop token included (the learner needs its
    log-prob too); after it come pad_id tokens with log-prob 0.
    """
    tokens: np.ndarray  # int32 [P, G, N]
    lengths: np.ndarray  # int32 [P, G]
    logprobs: np.ndarray  # float32 [P, G, N]: log_softmax(logits / T) at the sampled token
    finished: np.ndarray  # bool [P, G]: stopped on an eos/stop id or stop string; False = hit N
    prompts: tuple  # P tuples of int: the prompt token ids that were fed (unpadded)
    pad_id: int

    @property
    def finish_reason(self) -> np.ndarray:
        """str [P, G]: "stop" or "length"."""
        return np.where(self.finished, "stop", "length")

    def completion(self, p: int, g: int) -> list:
        return self.tokens[p, g, :self.lengths[p, g]].tolist()

    def completions(self) -> list:
        """[P][G] lists of token ids."""
        return [[self.completion(p, g) for g in range(self.tokens.shape[1])]
                for p in range(self.tokens.shape[0])]

    def truncate_at_stop_strings(self, stop_strings: Sequence[str],
                                 decode: Callable[[Sequence[int]], str]) -> "SampleOutput":
        """End each row at the first token whose decoded prefix contains any stop string.

        Stop strings can span token boundaries, so this runs on the host on decoded text; the device
        loop only knows stop ids. Rows that already stopped on an id are checked too.
        """
        stop_strings = [s for s in stop_strings if s]
        if not stop_strings:
            return self
        tokens, logprobs = self.tokens.copy(), self.logprobs.copy()
        lengths, finished = self.lengths.copy(), self.finished.copy()
        for p, g in np.ndindex(*lengths.shape):
            row = tokens[p, g, :lengths[p, g]].tolist()
            n = _first_stop(row, stop_strings, decode)
            if n is not None and n <= len(row):
                tokens[p, g, n:] = self.pad_id
                logprobs[p, g, n:] = 0.0
                lengths[p, g], finished[p, g] = n, True
        return dataclasses.replace(self, tokens=tokens, logprobs=logprobs, lengths=lengths,
                                   finished=finished)


def _has_stop(text: str, stop_strings) -> bool:
    return any(s in text for s in stop_strings)


def _first_stop(row: list, stop_strings, decode) -> int | None:
    """Smallest n with a stop string in decode(row[:n]), or None. Binary search: containment only
    grows with the prefix."""
    if not row or not _has_stop(decode(row), stop_strings):
        return None
    lo, hi = 1, len(row)  # answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if _has_stop(decode(row[:mid]), stop_strings):
            hi = mid
        else:
            lo = mid + 1
    return lo
