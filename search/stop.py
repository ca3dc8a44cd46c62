"""Stopping a worker on SIGTERM or SIGINT without leaving a trial RUNNING.

Inside a trial's objective a signal raises at once: the worker fails the trial and enqueues
its retry in one transaction (``search.trial_run``). Anywhere else (inside ``study.ask``, the
``tell``, the wait between trials) it is only noted and takes effect at the next
check, because raising there could strand a trial Optuna has just created: RUNNING, with
no heartbeat yet and no one left to finish it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(KeyboardInterrupt):
    """SIGTERM/SIGINT: fail the running trial cleanly (it is retried), then exit."""


class StopSignals:
    """Installed once per worker process; ``raising()`` marks where a signal may raise."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._armed = False

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.reason = f"stopped by signal {signal.Signals(signum).name}"
        if self._armed:
            raise StopRequested(self.reason)

    def check(self) -> None:
        """Raise ``StopRequested`` if a signal came while it could not raise."""
        if self.reason is not None:
            raise StopRequested(self.reason)

    @contextmanager
    def raising(self) -> Iterator[None]:
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False
