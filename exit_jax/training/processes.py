"""The processes of a multi-host run (`jax.distributed`): which groups each one samples and grades, and
how they exchange what they sampled.

Every process holds the whole host state — buffer, curriculum statistics, RNG — and applies the same
deterministic updates to it. Only the rollouts are split: each process samples and grades a contiguous
share of the iteration's groups (a group never spans processes), then all of them exchange their groups
and model calls, so each continues with the whole iteration: the same advantages, the same packed batch
(of which each feeds its own devices' rows to the update) and the same buffer update. We chose this over
one process owning the buffer and broadcasting each iteration's plan because nothing else has to travel:
the plan comes from the same RNG on every process, the loop stays one code path (with one process every
exchange is the identity), and any process can write a checkpoint's host state.
"""
from __future__ import annotations

import dataclasses
import pickle

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Processes:
    index: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> "Processes":
        return cls(jax.process_index(), jax.process_count())

    @property
    def primary(self) -> bool:
        """The process that writes what must be written once (metrics, TensorBoard, eval.json, logs)."""
        return self.index == 0

    def share(self, n: int) -> range:
        """This process's contiguous share of n groups; the first n % count processes take one more."""
        base, extra = divmod(n, self.count)
        start = self.index * base + min(self.index, extra)
        return range(start, start + base + (self.index < extra))

    def gather(self, obj) -> list:
        """Every process's `obj` (picklable), in process order."""
        if self.count == 1:
            return [obj]
        data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
        sizes = self._ints(data.size)
        # Padded to a power of two: the all-gather compiles once per size, not once per iteration.
        padded = np.zeros(1 << int(max(sizes.max(), 1) - 1).bit_length(), np.uint8)
        padded[:data.size] = data
        rows = _allgather(padded)
        return [pickle.loads(rows[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]

    def _ints(self, value: int) -> np.ndarray:
        """[count] every process's value."""
        return np.array([value]) if self.count == 1 else _allgather(np.array([value], np.int32)).ravel()

    def offset(self, n: int) -> tuple[int, int]:
        """(items on the processes before this one, items on all) when this one holds n."""
        counts = self._ints(n)
        return int(counts[:self.index].sum()), int(counts.sum())

    def any(self, flag: bool) -> bool:
        return bool(self._ints(int(bool(flag))).any())

    def barrier(self, name: str) -> None:
        if self.count > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)


def _allgather(x: np.ndarray) -> np.ndarray:
    """[processes, *x.shape]: x of every process (same shape on each)."""
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x))


SINGLE = Processes()
