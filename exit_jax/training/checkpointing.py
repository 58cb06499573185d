"""Atomic, verified, resumable training checkpoints with orbax.

One checkpoint step holds:
  * `state`: the learner's TrainState pytree (params, optimizer state, reference params, step);
  * `host`:  a JSON document with everything that lives on the host — the whole task buffer with its
             payloads, the numpy RNG state, the iteration, the run fingerprint (model + config).

orbax writes each step into a temporary directory and renames it when complete, so a run killed at any
moment (even SIGKILL mid-write) resumes from the last complete step. A checkpoint whose fingerprint
differs from the current run (another model or config) is refused with a clear message.

Verification. A state with a non-finite param or optimizer entry is never written. Once orbax has
committed a step, a manifest (MANIFEST: every file's size and CRC-32) is written into it, last; that seals
it. `restore_latest` tries the steps newest first and skips, with one log line naming the step, the file
and the reason, any step whose files do not match its manifest, which cannot be read, or whose restored
state is not finite; a skipped step is moved aside to `<directory>_rejected/` (never deleted) and the
next older one is tried. A step without a manifest (written by an older version, or killed between
orbax's commit and the seal) is accepted when it reads back finite. Sealing runs in a background thread
(the CRCs read the whole step back) and is finished before the next save starts. orbax keeps `max_to_keep` >= 2 steps
and deletes the oldest only after committing a newer one, and steps are sealed before the next save
starts, so the newest sealed step is never deleted to make room for an unsealed one.

Several processes (multi-host) write one checkpoint into one directory that all of them reach: orbax
writes each process's shards; the first process alone writes the manifest and moves rejected steps
aside, between barriers, while the others wait.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import warnings
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from exit_jax import storage
from exit_jax.training.processes import Processes

log = logging.getLogger(__name__)
MANIFEST = "exit_jax_manifest.json"


class CheckpointMismatchError(ValueError):
    pass


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (e.g. the disk is full); the ones before it are intact."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _crc32(fs, path: str) -> int:
    crc = 0
    with fs.open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc


def _files(fs, step_dir: str) -> dict:
    """{relative path: [size, CRC-32]} of every file of a step (the manifest itself excluded)."""
    return {rel: [size, _crc32(fs, storage.join(step_dir, rel))]
            for rel, size in sorted(storage.relative_files(step_dir).items()) if rel != MANIFEST}


@jax.jit
def _finite_leaves(tree):
    return [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


def _non_finite(state) -> Optional[str]:
    """The path of the first params / optimizer-state leaf holding a NaN or infinity, else None."""
    tree = {"params": state.params, "opt_state": state.opt_state}
    paths = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return next((p for p, ok in zip(paths, _finite_leaves(tree)) if not bool(ok)), None)


class _OrbaxErrorsAsDebug(logging.Filter):
    """Demotes orbax's own error records (absl ERROR from its writer threads, asyncio's "Task exception
    was never retrieved" for its write tasks) to DEBUG: every one of them is a failed write that the
    Checkpointer reports itself, once, as CheckpointWriteError. A log file still gets their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and (f"{os.sep}orbax{os.sep}" in record.pathname
                                                or "orbax" in str(record.msg)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@functools.cache
def _quiet_failed_writes() -> None:
    """A failed write (a full disk) is reported once, in one sentence (CheckpointWriteError). Without
    this it also prints pages of tracebacks: orbax's logs of it from each writer thread, and tensorstore
    writes still in flight printing "Event loop is closed" when they finish after orbax has closed their
    event loop (dropped; other unraisable errors are printed as before)."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_OrbaxErrorsAsDebug())
    # Orbax's serialization coroutines cut short by the failed write, collected at interpreter exit.
    warnings.filterwarnings("ignore", message=r"coroutine '.*serializ.*' was never awaited", category=RuntimeWarning)
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: Optional[int] = 3):
        if max_to_keep is not None and max_to_keep < 2:
            raise ValueError(f"RunConfig.keep_checkpoints={max_to_keep}: keep at least 2 (or None for all), "
                             "so that the last verified checkpoint survives while the next one is written.")
        # A local path or a bucket (gs://): orbax writes either; our own files go through fsspec.
        self.directory = directory if storage.is_remote(directory) else os.path.abspath(directory)
        self.rejected = self.directory + "_rejected"
        self._processes = Processes.current()
        self._fs = storage.filesystem(self.directory)
        self._fs.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "host"))
        self._unsealed: Optional[int] = None  # the step orbax may still be writing
        self._sealer: Optional[threading.Thread] = None
        self._seal_error: Optional[BaseException] = None
        self._closed = False
        self._failed = False  # a write failed (and was reported): closing orbax may raise it again
        _quiet_failed_writes()

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def _write_failed(self, step, error: BaseException) -> CheckpointWriteError:
        return CheckpointWriteError(
            f"writing the checkpoint of iteration {step} to {self.directory} failed ({type(error).__name__}: "
            f"{_first_line(error)}); free space or fix that directory and rerun the same command: the "
            "checkpoints before it are intact.")

    def poll(self) -> None:
        """Raises CheckpointWriteError if the background write has failed (called once per iteration, so
        a full disk is reported at once, not one save later)."""
        if self._sealer is not None and not self._sealer.is_alive():
            self._seal()

    def _seal_in_background(self, step: int) -> None:
        """The sealing thread: waits for orbax's write of `step`, then records its manifest (atomically).
        Reading the files back for their CRCs (minutes for a 7B model's state) overlaps training."""
        try:
            self._manager.wait_until_finished()
            step_dir = storage.join(self.directory, str(step))
            if not self._processes.primary or not self._fs.isdir(step_dir):
                return
            manifest = json.dumps({"step": step, "files": _files(self._fs, step_dir)})
            if storage.is_remote(step_dir):  # an object appears whole or not at all
                self._fs.pipe_file(storage.join(step_dir, MANIFEST), manifest.encode())
                return
            tmp = os.path.join(step_dir, MANIFEST + ".tmp")
            with open(tmp, "w") as f:
                f.write(manifest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(step_dir, MANIFEST))
        except Exception as e:  # noqa: BLE001 - whatever the writer raised (a full disk): poll/_seal report it
            self._seal_error = e

    def _seal(self) -> None:
        """Waits until the last save is written and sealed; raises CheckpointWriteError if it failed."""
        if self._sealer is not None:
            self._sealer.join()
            self._sealer = None
        error, self._seal_error = self._seal_error, None
        if error is not None:
            self._failed = True
            raise self._write_failed(self._unsealed, error)
        self._unsealed = None

    def save(self, step: int, state: Any, host: dict, last: bool = False) -> None:
        """Starts writing `step` in the background and returns; the previous write is finished and
        sealed first. A state with a non-finite entry is refused (the previous checkpoints stay).

        The next update donates (reuses) the state's buffers. On accelerators orbax's blocking phase
        copies them to the host; on CPU that "copy" can alias the very buffer being donated, so the
        write gets buffers of its own, unless `last` says that no update follows (the run's final save,
        where a copy of the whole state was the peak of a SmolLM2 run's memory). The metrics of iterations
        after the last durable step are rewritten on resume (MetricsWriter truncates to the restored
        iteration): a kill loses nothing.
        """
        self._seal()
        bad = _non_finite(state)
        if bad is not None:
            raise ValueError(f"Refusing to checkpoint iteration {step}: {bad} is not finite; the checkpoints "
                             f"in {self.directory} are kept as they are.")
        if jax.default_backend() == "cpu" and not last:
            state = jax.tree.map(jnp.copy, state)
        self._unsealed = step
        try:
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)))
        except OSError as e:  # the synchronous part (directories, small files) on a full disk
            self._failed = True
            raise self._write_failed(step, e) from None
        self._sealer = threading.Thread(target=self._seal_in_background, args=(step,), daemon=True,
                                        name=f"seal checkpoint {step}")
        self._sealer.start()

    def verify_files(self, step: int) -> Optional[str]:
        """Why `step`'s files do not match its manifest, or None (also None without a manifest)."""
        step_dir = storage.join(self.directory, str(step))
        path = storage.join(step_dir, MANIFEST)
        if not self._fs.exists(path):
            return None
        try:
            with self._fs.open(path, "r") as f:
                want = json.load(f)["files"]
        except (OSError, ValueError, KeyError) as e:
            return f"its manifest {path} is unreadable ({type(e).__name__})"
        for rel, (size, crc) in sorted(want.items()):
            file = storage.join(step_dir, rel)
            if not self._fs.exists(file):
                return f"{file} is missing"
            if self._fs.size(file) != size:
                return f"{file} has {self._fs.size(file)} bytes, {size} when written"
            if _crc32(self._fs, file) != crc:
                return f"{file} does not match the checksum recorded when it was written"
        return None

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

    def restore_latest(self, abstract_state: Any, fingerprint: dict) -> Optional[tuple[Any, dict, int]]:
        """(state, host, step) of the newest step that verifies, or None when no step is left; every step
        that fails is logged and moved aside (see the module doc)."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = self.verify_files(step)
            if problem is None:
                try:
                    state, host = self.restore(step, abstract_state, fingerprint)
                except CheckpointMismatchError:
                    raise
                except Exception as e:  # truncated or garbled files: orbax / tensorstore / json errors
                    problem = f"it cannot be read ({type(e).__name__}: {_first_line(e)})"
                else:
                    bad = _non_finite(state)
                    if bad is None:
                        return state, host, step
                    problem = f"{bad} is not finite"
            self._set_aside(step, problem)
        return None

    def _set_aside(self, step: int, problem: str) -> None:
        dest = storage.join(self.rejected, str(step))
        self._processes.barrier(f"verified checkpoint {step}")  # every process has read the step
        if self._processes.primary:
            self._fs.makedirs(self.rejected, exist_ok=True)
            if self._fs.exists(dest):  # the same step rejected before: keep both
                dest += f".{len(self._fs.ls(self.rejected))}"
            self._fs.mv(storage.join(self.directory, str(step)), dest, recursive=True)
        self._processes.barrier(f"set aside checkpoint {step}")
        self._manager.reload()
        log.warning("checkpoint of iteration %d skipped: %s; moved to %s, trying the previous one",
                    step, problem, dest)

    def close(self) -> None:
        """Seals the last save and stops orbax's writer threads, also after a failed write: no thread of
        it outlives the run (left behind, they fail later, in whatever code runs then)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._seal()
        finally:
            try:
                self._manager.close()
            except Exception as e:  # noqa: BLE001 - after a failed write orbax raises it again
                if not self._failed:
                    raise
                log.debug("closing orbax after the failed write already reported: %s", e)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Closes; when an error elsewhere (or Ctrl-C) ends the run the write in flight is still sealed,
        and a failure doing so is logged rather than raised over that error."""
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as e:  # noqa: BLE001
            log.warning("%s", e)


def fingerprint(**fields) -> dict:
    """A JSON-able summary of what must match for a resume to be valid."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))
