"""The objective: suggest → train → best eval accuracy.

Optuna records pruned and failed trials itself; this module only adds what Optuna
cannot know: the metrics of the best evaluation as user attributes, and the reason
when a trial ends early (pruned at evaluation k, out of memory, diverged), written
together in one transaction when the trial ends.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import optuna
import torch

from search.config import StudyConfig
from search.reporting import ReportingError
from search.space import suggest
from storage.attrs import set_user_attrs
from trainer.callbacks import EvalRecord
from trainer.data import Splits
from trainer.progress import ProgressBar
from trainer.train import NonFiniteLoss, train_model

# Errors that end one trial (recorded as FAIL with a reason) while the worker goes on.
TRIAL_ERRORS: tuple[type[Exception], ...] = (torch.OutOfMemoryError, NonFiniteLoss, ReportingError)

ATTR_KEYS = ("accuracy", "macro_f1", "recall", "nll", "pred_distribution", "pred_tv_distance")


def best_attrs(history: list[EvalRecord]) -> dict[str, Any]:
    """User attributes of the best evaluation so far (for pruned trials too)."""
    if not history:
        return {}
    best = max(history, key=lambda r: r.accuracy)
    return {key: best.metrics[key] for key in ATTR_KEYS} | {
        "label_distribution": best.metrics["label_distribution"],
        "best_eval_index": best.index,
        "best_epoch": round(best.epoch, 3),
        "accuracy_curve": [round(r.accuracy, 5) for r in history],
    }


def make_objective(
    base: StudyConfig,
    splits: Splits,
    on_trial_end: Callable[[optuna.Trial, list[EvalRecord], Any], None] | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective the worker runs per trial; ``splits`` are loaded once per worker."""

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, base)
        history: list[EvalRecord] = []
        # Written once, in one transaction, before the trial's reporting reads them.
        attrs: dict[str, Any] = {}

        def report(record: EvalRecord) -> None:
            history.append(record)
            trial.report(record.accuracy, step=record.index)
            if trial.should_prune():
                attrs["end_reason"] = f"pruned at evaluation {record.index}"
                raise optuna.TrialPruned(f"pruned at evaluation {record.index}")

        result = None
        try:
            bar = ProgressBar(f"trial {trial.number}")
            result = train_model(cfg, on_evaluate=report, splits=splits, callbacks=[bar])
            attrs |= {
                "end_reason": "completed",
                "train_seconds": round(result.train_seconds, 2),
                "train_samples_per_second": round(result.train_samples_per_second, 1),
                "device": result.device,
            }
            return result.best.accuracy
        except TRIAL_ERRORS as err:
            kind = "out of memory" if isinstance(err, torch.OutOfMemoryError) else "diverged"
            attrs["end_reason"] = f"failed: {kind}: {str(err)[:200]}"
            raise
        finally:
            try:
                set_user_attrs(trial, best_attrs(history) | attrs)
            finally:  # the trial's reporting runs even when the database refused the write
                if on_trial_end is not None:
                    on_trial_end(trial, history, result)

    return objective


def free_memory() -> None:
    """Release the last trial's model, optimizer state and batches; call it after the trial
    is told (``search.trial_run.run_trial`` returns), not inside the objective.

    A pruned or failed trial's exception holds, through its traceback, the frames that hold
    the model and the Trainer; the frame that caught it points back to it, and
    accelerate's patched ``forward`` is another cycle. Until the exception is gone and a
    full collection has run, none of that memory (~1.3 GB for a BERT-base on a GPU) is
    free, and the next trial runs out of it.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
