"""Trainer callbacks: when to evaluate, and what to do with each evaluation.

The evaluation index (1, 2, ... over the whole run) is the step every consumer sees:
it means the same thing in every trial whatever the batch size, which is what the
Optuna pruners need (they compare trials only at equal steps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainer.swa import snapshot


@dataclass
class EvalRecord:
    """One evaluation: its 1-based index over the run, the epoch reached and the metrics."""

    index: int
    epoch: float
    step: int
    metrics: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])


EvalHook = Callable[[EvalRecord], None]


def eval_points(steps_per_epoch: int, epochs: int, evals_per_epoch: int) -> list[int]:
    """Optimizer steps after which to evaluate: evenly inside each epoch, always at its end."""
    per = min(evals_per_epoch, steps_per_epoch)
    points = []
    for epoch in range(epochs):
        for j in range(1, per + 1):
            points.append(epoch * steps_per_epoch + math.ceil(j * steps_per_epoch / per))
    return points


class EvalSchedule(TrainerCallback):
    """Asks the Trainer to evaluate exactly at the precomputed optimizer steps."""

    def __init__(self, points: list[int]) -> None:
        self.points = set(points)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        control.should_evaluate = state.global_step in self.points


@dataclass
class EvalRecorder(TrainerCallback):
    """Keeps every evaluation, the best one (by accuracy) and optionally its weights.

    ``hook`` is the one seam the search uses: it may raise (e.g. optuna.TrialPruned)
    to stop the run, and the exception propagates out of ``Trainer.train``.
    """

    metrics_source: Callable[[], dict[str, Any]]
    hook: EvalHook | None = None
    keep_best_weights: bool = False
    history: list[EvalRecord] = field(default_factory=list)
    best: EvalRecord | None = None
    best_weights: dict | None = None
    eval_seconds: float = 0.0
    # Data stages: step -> the evaluation's epoch (a stage's share of the rows, then epochs).
    epoch_of: Callable[[int], float] | None = None
    _eval_started: float = 0.0

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        if control.should_evaluate:
            self._eval_started = time.perf_counter()

    def on_evaluate(self, args, state, control, model=None, **kw: Any) -> None:
        self.eval_seconds += time.perf_counter() - self._eval_started
        epoch = state.epoch if self.epoch_of is None else self.epoch_of(state.global_step)
        record = EvalRecord(len(self.history) + 1, epoch or 0.0, state.global_step, {})
        record.metrics = self.metrics_source()
        self.history.append(record)
        if self.best is None or record.accuracy > self.best.accuracy:
            self.best = record
            if self.keep_best_weights and model is not None:
                self.best_weights = snapshot(model)
        if self.hook is not None:
            self.hook(record)
