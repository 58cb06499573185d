"""Atomic, resumable training checkpoints with orbax.

One checkpoint step holds:
  * `state`: the learner's TrainState pytree (params, optimizer state, reference params, step);
  * `host`:  a JSON document with everything that lives on the host — the whole task buffer with its
             payloads, the numpy RNG state, the iteration, the run fingerprint (model + config).

orbax writes each step into a temporary directory and renames it when complete, so a run killed at any
moment (even SIGKILL mid-write) resumes from the last complete step. A checkpoint whose fingerprint
differs from the current run (another model or config) is refused with a clear message.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    pass


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: Optional[int] = 3):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "host"))

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, host: dict) -> None:
        """Starts writing `step` in the background and returns; the previous write is finished first.

        The next update donates (reuses) the state's buffers. On accelerators orbax's blocking phase
        copies them to the host; on CPU that "copy" can alias the very buffer being donated, so the
        write gets buffers of its own. The metrics of iterations after the last durable step are
        rewritten on resume (MetricsWriter truncates to the restored iteration): a kill loses nothing.
        """
        self._manager.wait_until_finished()
        if jax.default_backend() == "cpu":
            state = jax.tree.map(jnp.copy, state)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)))

    def restore(self, step: int, abstract_state: Any, fingerprint: dict) -> tuple[Any, dict]:
        """Restores `step`. `abstract_state` gives the tree structure, shapes, dtypes and shardings."""
        host = self._manager.restore(step, args=ocp.args.Composite(host=ocp.args.JsonRestore()))["host"]
        saved = host.get("fingerprint", {})
        if saved != fingerprint:
            diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise CheckpointMismatchError(
                f"The checkpoint in {self.directory} was written by a different run (fields that differ: "
                f"{', '.join(diff)}); use a new WORKDIR or delete that directory to start over.")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        state = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))["state"]
        return state, host

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def fingerprint(**fields) -> dict:
    """A JSON-able summary of what must match for a resume to be valid."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))
