"""Progress of a backbone build's long phases: tokenizer, corpus vectors, MLM pretraining.

A build on 200,000 reviews spends minutes in each phase. On a terminal a phase shows a rich
bar with its ETA. Anywhere else (a log file, a CI log, a pipe) it logs a plain line when it
starts and when a step of it starts, then at least every ``progress_seconds()`` while it
runs, and one when it ends: a log stays readable (no bar redraws) and still shows the build
is alive. A background thread writes the periodic line, so a long native call that reports
nothing (the tokenizer's merges, an SVD) still gets one.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import Progress, TextColumn, TimeRemainingColumn

from trainer.errors import BadInput
from trainer.progress import is_terminal, progress_bar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds between plain progress lines: often enough for a log a person or CI watches,
# rare enough that a day-long build writes a few thousand lines at most.
PROGRESS_SECONDS = 30.0
PROGRESS_ENV = "FOCALTUNE_PROGRESS_SECONDS"  # overrides it (tests set it small)


def progress_seconds() -> float:
    """``$FOCALTUNE_PROGRESS_SECONDS`` when set, else ``PROGRESS_SECONDS``."""
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if not raw:
        return PROGRESS_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise BadInput(
            f"${PROGRESS_ENV}={raw!r} must be a positive number of seconds between progress "
            f"lines; set it so or unset it (default {PROGRESS_SECONDS:g})"
        )
    return seconds


class Phase:
    """What one phase has done: a count of ``unit`` out of ``total`` (None: not countable,
    only the time is shown), the step it is in (``label``) and a ``note`` (e.g. the loss).

    Made by ``phase()``; a bare ``Phase()`` shows nothing (``QUIET``, for direct calls)."""

    def __init__(self, name: str = "", unit: str = "") -> None:
        self.name, self.unit, self.label, self.note = name, unit, "", ""
        self.total: int | None = None
        self.done = self.counted_from = 0
        self.describe: Callable[[], str] | None = None  # the plain line, if not the default
        self.early: frozenset[int] = frozenset()  # counts that get a line whenever reached
        self.started = self.counting_since = self.last_line = time.perf_counter()
        self.every = math.inf  # seconds between plain lines; inf: no lines
        self.bar: Progress | None = None
        self.task = None
        self._lock = threading.Lock()

    def restart(
        self, label: str, total: int | None = None, unit: str | None = None, done: int = 0
    ) -> None:
        """A new step of the phase: its count starts at ``done`` of ``total``; announced in
        a line (on a terminal: a bar of its own, the last one shown complete)."""
        self._finish_bar()
        self.label, self.total, self.done, self.note = label, total, done, ""
        self.describe, self.early = None, frozenset()
        self.unit = self.unit if unit is None else unit
        self.counting_since, self.counted_from = time.perf_counter(), done
        if self.bar is not None:
            self.task = self.bar.add_task(self.title(), total=total, completed=done, note="")
        elif self.every < math.inf:
            self._line(self.announcement())

    def update(
        self, done: int | None = None, *, total: int | None = None, note: str | None = None
    ) -> None:
        """The count so far (and a changed ``total``, a fresh ``note``)."""
        self.done = self.done if done is None else done
        self.total = self.total if total is None else total
        self.note = self.note if note is None else note
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, total=self.total, note=self.note)
        elif self.done in self.early:
            self._line(self.line())
        else:
            self.line_if_due()

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def count(self, items: Iterable[T], every: int = 1000) -> Iterator[T]:
        """``items`` passed through, advancing the count as they are taken (by ``every``:
        a bar or clock per item would cost more than a cheap item itself)."""
        taken = 0
        for taken, item in enumerate(items, start=1):
            yield item
            if taken % every == 0:
                self.advance(every)
        self.advance(taken % every)

    def title(self) -> str:
        return f"{self.name}: {self.label}" if self.label else self.name

    def announcement(self) -> str:
        size = "" if self.total is None else f", {self.total:,} {self.unit}".rstrip()
        return self.title() + size

    def line(self) -> str:
        """``tokenizer: splitting words, 120,000/200,000 texts (60%), elapsed 45s, ETA 30s``."""
        if self.describe is not None:
            return self.describe()
        now = time.perf_counter()
        parts = [self.title()]
        if self.total:
            rate = (self.done - self.counted_from) / max(now - self.counting_since, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else math.inf
            share = f"{self.done:,}/{self.total:,} {self.unit}".rstrip()
            parts.append(f"{share} ({self.done / self.total:.0%})")
        parts.append(f"elapsed {duration(now - self.started)}")
        if self.total:
            parts.append(f"ETA {duration(left)}")
        return ", ".join(parts + ([self.note] if self.note else []))

    def line_if_due(self) -> None:
        with self._lock:
            now = time.perf_counter()
            if now - self.last_line < self.every:
                return
            self.last_line = now
        log.info(self.line())

    def closing(self) -> str:
        if self.describe is not None:
            return self.describe()
        return f"{self.name}: done in {duration(time.perf_counter() - self.started)}"

    def _line(self, text: str) -> None:
        with self._lock:
            self.last_line = time.perf_counter()
        log.info(text)

    def _finish_bar(self) -> None:
        """A finished step's bar shows complete (an uncounted one would pulse on)."""
        if self.bar is not None and self.task is not None:
            done = max(self.done, 1)
            self.bar.update(self.task, total=done, completed=done)


QUIET = Phase()  # what functions report to when called outside a build


@contextmanager
def phase(
    name: str,
    label: str = "",
    total: int | None = None,
    unit: str = "",
    *,
    stream: TextIO | None = None,
) -> Iterator[Phase]:
    """A phase of the build, shown on ``stream`` (default stderr) while the block runs;
    without ``label`` the code it calls names its first step (``Phase.restart``)."""
    stream = sys.stderr if stream is None else stream
    shown = Phase(name, unit)
    show = functools.partial(_bar, stream=stream) if is_terminal(stream) else _lines
    with show(shown):
        if label:
            shown.restart(label, total)
        yield shown


@contextmanager
def _lines(shown: Phase) -> Iterator[None]:
    shown.every = progress_seconds()
    stop = threading.Event()
    beat = threading.Thread(target=_beat, args=(shown, stop), name="progress", daemon=True)
    beat.start()
    try:
        yield
        shown._line(shown.closing())
    finally:
        stop.set()
        beat.join()


def _beat(shown: Phase, stop: threading.Event) -> None:
    # Wake a few times per interval, so a line is at most a little late.
    while not stop.wait(min(shown.every / 4, 5.0)):
        shown.line_if_due()


@contextmanager
def _bar(shown: Phase, stream: TextIO) -> Iterator[None]:
    bar = progress_bar(
        True,
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=Console(file=stream, force_terminal=True),  # is_terminal decided already
    )
    shown.bar = bar
    with bar, _logs_above(bar.console):
        yield
        shown._finish_bar()
    shown.bar = None


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), markup=False, highlight=False)


@contextmanager
def _logs_above(console: Console) -> Iterator[None]:
    """The build's log lines go through the bar's console while it is drawn, which prints
    them above the bar: written straight to the terminal, the bar's next redraw would
    overwrite them. Only on a terminal, where the root handler writes to that same screen."""
    logger = logging.getLogger("trainer.backbone")
    handler = _ConsoleHandler(console)
    root = logging.getLogger().handlers
    handler.setFormatter(root[0].formatter if root else None)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def duration(seconds: float) -> str:
    """45s, 6m20s, 36m, 1h05m: to the second while short, coarser when long."""
    if not math.isfinite(seconds):
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes}m" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
