"""Metrics sinks: WORKDIR/metrics.jsonl (one object per iteration), TensorBoard events, console.

The JSONL file is the source of truth for plots and for resume: on restart it is truncated to the
iterations that the restored checkpoint covers, so a resumed run's file equals an uninterrupted one's.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping, Optional

import numpy as np


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    if hasattr(value, "shape") and getattr(value, "shape", None) == ():
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than dropping the key.
    return value


class MetricsWriteError(ValueError):
    """metrics.jsonl or the TensorBoard events could not be written (e.g. the disk is full)."""


class MetricsWriter:
    def __init__(self, workdir: str, resume_from_iteration: Optional[int] = 0, tensorboard: bool = True):
        """resume_from_iteration: records from it on are dropped (they are rewritten by the resumed run);
        None keeps them all (a run with nothing left to train, such as launch/eval.py, deletes nothing)."""
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_from_iteration is not None:
            self._truncate(resume_from_iteration)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:  # tensorboardX is TensorFlow-free; events go to WORKDIR/tb.
                from tensorboardX.event_file_writer import EventsWriter
                os.makedirs(os.path.join(workdir, "tb"), exist_ok=True)
                # Written on this thread, not SummaryWriter's queue thread: when the disk fills, that
                # thread dies and every later add_scalar blocks on its full queue (the run hangs).
                self._tb = EventsWriter(os.path.join(workdir, "tb", "events"))
            except ImportError:
                self._tb = None

    def _truncate(self, iteration: int) -> None:
        """Keeps only records of iterations < `iteration` (those covered by the checkpoint)."""
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill mid-write
                    continue
                if record.get("iteration", math.inf) < iteration:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, iteration: int, metrics: Mapping) -> None:
        record = {"iteration": iteration, **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            if self._tb is not None:
                from tensorboardX.proto.event_pb2 import Event
                from tensorboardX.summary import scalar
                for key, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        self._tb.write_event(Event(wall_time=time.time(), step=iteration, summary=scalar(key, value)))
                self._tb.flush()
        except OSError as e:
            raise MetricsWriteError(
                f"writing the metrics of iteration {iteration} to {os.path.dirname(self.path)} failed "
                f"({e.strerror or e}); free space or fix that directory and rerun the same command: the "
                "checkpoints before it are intact.") from None

    def close(self) -> None:
        """Closes both sinks; a failure here (a full disk) must not hide the error that ended the run."""
        for sink in [self._file] + ([self._tb] if self._tb is not None else []):
            try:
                sink.close()
            except OSError:
                pass


def read_metrics(path: str) -> list[dict]:
    """The records of a run's metrics.jsonl (`path` is the file or the run directory); [] when there is
    none yet. A last line torn by a kill mid-write is skipped, so a live run can be read at any time."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # blank, or torn by a kill mid-write
                continue
    return records


class Discard:
    """The metrics sink of every process but the first in a multi-host run: the first writes them once."""

    def write(self, iteration: int, metrics: Mapping) -> None:
        pass

    def close(self) -> None:
        pass
