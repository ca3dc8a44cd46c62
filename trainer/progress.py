"""Progress bars (rich): ``progress_bar`` for ``final`` and ``predict``, and ``ProgressBar``
within one training run, for a person watching a worker in a terminal.

``ProgressBar`` is shown only when the stream is a terminal: a worker's log file or a pipe
gets the one line per finished trial and nothing else. The bar counts optimizer steps and
shows the last evaluation's accuracy. A run stopped by an exception (a pruned trial) never
reaches ``on_train_end``, so the bar is also closed when the next run begins and by
``close()``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def progress_bar(
    enabled: bool = True,
    *extra: ProgressColumn,
    console: Console | None = None,
    **options: Any,
) -> Progress:
    """A rich progress display (on stderr unless ``console`` says otherwise, so stdout stays
    clean for summaries): description, bar, done/total, elapsed, then ``extra`` columns.
    ``options`` go to ``rich.progress.Progress``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    return Progress(
        *columns,
        TimeElapsedColumn(),
        *extra,
        console=console or Console(stderr=True),
        disable=not enabled,
        **options,
    )


class ProgressBar(TrainerCallback):
    """Steps and the last eval accuracy of the current run, on a terminal only."""

    def __init__(self, label: str = "training", stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream)
        self.bar: Progress | None = None
        self.task: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.close()
        if self.enabled:
            self.bar = progress_bar(
                True,
                TextColumn("{task.fields[postfix]}"),
                # is_terminal already decided; rich would also ask the environment.
                console=Console(file=self.stream, force_terminal=True),
                transient=True,  # the worker prints its own line when the trial ends
                # Leave sys.stdout/stderr alone: the worker's logging owns them.
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.task = self.bar.add_task(self.label, total=state.max_steps, postfix="")
            self.bar.start()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        if self.bar is not None and metrics and "eval_accuracy" in metrics:
            postfix = f"epoch={state.epoch or 0:.2f} acc={metrics['eval_accuracy']:.4f}"
            self.bar.update(self.task, postfix=postfix)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal (a bar can be drawn on it)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
