"""Stopping when asked: SIGTERM (a preemption notice) or Ctrl-C becomes a request the training loop
honours at the end of the iteration, with a checkpoint of it (`Interrupted` then carries the shell's exit
code for that signal)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The run stopped early on SIGTERM or SIGINT, after checkpointing its last iteration."""

    def __init__(self, signal_name: str, message: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value  # the shell's code for that signal


@contextlib.contextmanager
def stop_requests(signals=(signal.SIGTERM, signal.SIGINT)):
    """Turns the first SIGTERM / SIGINT into a request (`.signal` = its name) that the loop honours at the
    end of the iteration; a second one gets the previous handler at once. Only the main thread may set
    handlers: elsewhere nothing is installed."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        if request.signal:
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        request.signal = signal.Signals(signum).name
        log.warning("%s: finishing this iteration and checkpointing it, then stopping (send it again to "
                    "stop at once)", request.signal)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclasses.dataclass
class StopRequest:
    signal: Optional[str] = None
