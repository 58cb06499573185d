"""What the training loop carries on the host between iterations, and its JSON form in checkpoints."""
from __future__ import annotations

import dataclasses

import numpy as np

from exit_jax.curriculum import buffer


@dataclasses.dataclass
class HostState:
    """Everything the loop carries on the host between iterations (checkpointed as JSON). No random
    generator: the curriculum's draws of an iteration come from (run seed, iteration)."""
    iteration: int
    buffer: buffer.BufferState
    instances_seen: frozenset  # the distinct task instances episodes have started from (stats.update_seen)
    sampled_tokens: int = 0  # completion tokens sampled so far (for RunConfig.sampled_token_budget)

    def to_json(self, fingerprint: dict) -> dict:
        return {"iteration": self.iteration, "fingerprint": fingerprint,
                "buffer": _jsonable(buffer.state_dict(self.buffer)),
                "instances_seen": sorted(self.instances_seen), "sampled_tokens": self.sampled_tokens}

    @classmethod
    def from_json(cls, d: dict) -> "HostState":
        # Checkpoints written before the curriculum drew from (seed, iteration) also hold "rng" (unused)
        # and name the instances "seen".
        return cls(int(d["iteration"]), buffer.from_state_dict(_from_jsonable(d["buffer"])),
                   frozenset(d["instances_seen"] if "instances_seen" in d else d["seen"]),
                   int(d.get("sampled_tokens", 0)))


def _jsonable(tree: dict) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, np.ndarray):
            out[k] = {"__ndarray__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
        else:
            out[k] = v
    return out


def _from_jsonable(tree: dict) -> dict:
    return {k: (np.asarray(v["__ndarray__"], v["dtype"]).reshape(v["shape"])
                if isinstance(v, dict) and "__ndarray__" in v else v) for k, v in tree.items()}
