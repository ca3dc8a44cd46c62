"""A progress bar within one training run, for a person watching a worker in a terminal.

Shown only when the stream is a terminal: a worker's log file or a pipe gets the one line
per finished trial and nothing else. The bar counts optimizer steps and shows the last
evaluation's accuracy. A run stopped by an exception (a pruned trial) never reaches
``on_train_end``, so the bar is also closed when the next run begins and by ``close()``.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class ProgressBar(TrainerCallback):
    """Steps and the last eval accuracy of the current run, on a terminal only."""

    def __init__(self, label: str = "training", stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.bar: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.close()
        if self.enabled:
            self.bar = tqdm(
                total=state.max_steps,
                desc=self.label,
                unit="step",
                file=self.stream,
                leave=False,  # the worker prints its own line when the trial ends
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        if self.bar is not None and metrics and "eval_accuracy" in metrics:
            self.bar.set_postfix(
                epoch=f"{state.epoch or 0:.2f}", acc=f"{metrics['eval_accuracy']:.4f}"
            )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
