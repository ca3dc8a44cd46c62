"""One ensemble member: trained with its own seed, best-epoch weights against SWA (of the
last K epochs, or of snapshots over a flat tail) on validation, the better kept; and, in
full-data mode, retrained on train + validation keeping the same kind of weights.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from transformers import AutoTokenizer, TrainerCallback

import trainer.final.bundle as bundle
from trainer.callbacks import EvalRecord
from trainer.config import FinalConfig, ModelConfig, TrainConfig
from trainer.data import Splits
from trainer.devices import training_precision
from trainer.final.predict import predict_probs
from trainer.loading import quiet_loading
from trainer.metrics import probs_metrics
from trainer.swa import LastK, snapshot
from trainer.train import tail_start, train_model

log = logging.getLogger(__name__)


class EpochSnapshots(TrainerCallback):
    """Feeds the model's weights into ``LastK`` at every epoch end (kept in memory, no I/O)."""

    def __init__(self, last_k: LastK) -> None:
        self.last_k = last_k

    def on_epoch_end(self, args, state, control, model=None, **kw: Any) -> None:
        self.last_k.add(model, state.epoch)


class TailSnapshots(TrainerCallback):
    """Feeds ``LastK`` its k snapshots spread evenly over the flat tail of the schedule."""

    def __init__(self, last_k: LastK, fraction: float) -> None:
        self.last_k, self.fraction, self.steps = last_k, fraction, set()

    def on_train_begin(self, args, state, control, **kw: Any) -> None:
        start = tail_start(state.max_steps, self.fraction)
        span, k = state.max_steps - start, self.last_k.k
        self.steps = {start + math.ceil(j * span / k) for j in range(1, k + 1)}

    def on_step_end(self, args, state, control, model=None, **kw: Any) -> None:
        if state.global_step in self.steps:
            self.last_k.add(model, state.epoch)


def swa_snapshots(final: FinalConfig) -> tuple[LastK, TrainerCallback]:
    """Where SWA's snapshots come from: the flat tail, or the last K epoch ends."""
    swa = final.swa
    if swa.flat_tail > 0:
        last_k = LastK(swa.snapshots)
        return last_k, TailSnapshots(last_k, swa.flat_tail)
    last_k = LastK(swa.last_k)
    return last_k, EpochSnapshots(last_k)


class SnapshotAt(TrainerCallback):
    """Keeps the weights of the ``index``-th evaluation (1-based) of a run."""

    def __init__(self, index: int) -> None:
        self.index, self.seen, self.state = index, 0, None

    def on_evaluate(self, args, state, control, model=None, **kw: Any) -> None:
        self.seen += 1
        if self.seen == self.index:
            self.state = snapshot(model)


class TrainingProgress(TrainerCallback):
    """One progress bar per training run, advanced per optimizer step."""

    def __init__(self, progress: Progress, description: str) -> None:
        self.progress, self.description, self.task = progress, description, None

    def on_train_begin(self, args, state, control, **kw: Any) -> None:
        self.task = self.progress.add_task(self.description, total=state.max_steps)

    def on_step_end(self, args, state, control, **kw: Any) -> None:
        self.progress.update(self.task, completed=state.global_step)


@dataclass
class MemberRun:
    """What one member's training measured; probabilities are of the kept weights."""

    name: str
    index: int
    best: EvalRecord
    swa_epochs: list[float | None]
    validation: dict[str, dict[str, Any]]  # "best" and "swa" metrics on validation
    chosen: str  # "swa" or "best"
    eval_probs: np.ndarray
    test_probs: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class LabelledSet:
    """Texts with label ids: the test set of `final`."""

    texts: list[str]
    labels: np.ndarray


def member_config(final: FinalConfig, index: int) -> TrainConfig:
    member = final.members[index]
    return TrainConfig(
        data=final.data,
        model=ModelConfig(name_or_path=member.model),
        train=final.train.model_copy(
            update={"seed": member.seed, "lr_flat_tail": final.swa.flat_tail}
        ),
        params=member.params,
    )


def _predict(model: Any, tokenizer: Any, texts: list[str], final: FinalConfig) -> np.ndarray:
    # The precision the bundle records and `predict` serves with: figures measured here
    # are those of the served bundle.
    return predict_probs(
        model,
        tokenizer,
        texts,
        max_length=final.data.max_length,
        batch_size=final.train.eval_batch_size,
        precision=training_precision(final.train.precision),
    )


def _finish_member(
    model: Any,
    tokenizer: Any,
    state: dict,
    final: FinalConfig,
    test: LabelledSet | None,
    folder: Path,
    label_names: list[str],
) -> np.ndarray | None:
    """Load the kept weights, predict the test set, save the member into the bundle."""
    model.load_state_dict(state, strict=True)
    test_probs = None if test is None else _predict(model, tokenizer, test.texts, final)
    bundle.save_member(model, tokenizer, folder, label_names)
    return test_probs


def _free(result: Any) -> None:
    result.model = None
    result.best_weights = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _swa_state(last_k: LastK, name: str) -> dict:
    if len(last_k) < last_k.k:
        log.warning(f"{name}: SWA averages {len(last_k)} snapshots, fewer than {last_k.k}")
    return last_k.average()


def _compare(
    model: Any, tokenizer: Any, states: dict[str, dict], final: FinalConfig, splits: Splits
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], str]:
    """Validation probabilities and metrics of each state; the better one's name."""
    probs, metrics = {}, {}
    for kind, state in states.items():
        model.load_state_dict(state, strict=True)
        probs[kind] = _predict(model, tokenizer, splits.eval_texts, final)
        metrics[kind] = probs_metrics(probs[kind], splits.eval_labels)
    # Accuracy decides (the search's objective); an exact tie goes to the lower NLL, then SWA.
    key = {kind: (m["accuracy"], -m["nll"]) for kind, m in metrics.items()}
    return probs, metrics, "swa" if key["swa"] >= key["best"] else "best"


def train_member(
    final: FinalConfig,
    index: int,
    splits: Splits,
    test: LabelledSet | None,
    folder: Path | None,
    progress: Progress,
) -> MemberRun:
    """Train, compare best-epoch with SWA weights on validation, keep the better one.

    ``folder`` None (full-data mode) means this pass only measures; nothing is saved.
    """
    name, member = f"member-{index + 1}", final.members[index]
    last_k, snapshots = swa_snapshots(final)
    callbacks = [snapshots, TrainingProgress(progress, f"{name} ({member.model})")]
    started = time.perf_counter()
    cfg = member_config(final, index)
    result = train_model(cfg, keep_best_weights=True, callbacks=callbacks, splits=splits)
    trained = time.perf_counter()
    tokenizer = _tokenizer(member.model)
    states = {"best": result.best_weights, "swa": _swa_state(last_k, name)}
    probs, metrics, kept = _compare(result.model, tokenizer, states, final, splits)
    run = MemberRun(name, index, result.best, last_k.epochs, metrics, kept, probs[kept])
    if folder is not None:
        run.test_probs = _finish_member(
            result.model, tokenizer, states[kept], final, test, folder, splits.label_names
        )
    run.seconds = {"train": trained - started, "swa_eval": time.perf_counter() - trained}
    _free(result)
    best, swa = metrics["best"]["accuracy"], metrics["swa"]["accuracy"]
    log.info(f"{name}: validation accuracy best-epoch {best:.4f}, SWA {swa:.4f}; kept {kept}")
    return run


def _tokenizer(name_or_path: str) -> Any:
    # Quiet as every other load: final shows its own progress, not transformers' notices.
    with quiet_loading():
        return AutoTokenizer.from_pretrained(name_or_path)


def _with_validation(splits: Splits) -> Splits:
    """Train on train + validation; validation stays the (now in-sample) evaluation set."""
    return Splits(
        splits.train_texts + splits.eval_texts,
        np.concatenate([splits.train_labels, splits.eval_labels]),
        splits.eval_texts,
        splits.eval_labels,
        splits.label_names,
    )


def retrain_full(
    final: FinalConfig,
    run: MemberRun,
    splits: Splits,
    test: LabelledSet | None,
    folder: Path,
    progress: Progress,
) -> None:
    """Retrain a member on train + validation for its epochs, keeping the same kind of weights.

    No held-out data is left to choose by, so the train-only pass decides: SWA of the last
    K epochs, or the weights at the evaluation index of its best evaluation (evaluation k
    falls at the same fraction of training whatever the data size).
    """
    (last_k, snapshots), at = swa_snapshots(final), SnapshotAt(run.best.index)
    keep = snapshots if run.chosen == "swa" else at
    callbacks = [keep, TrainingProgress(progress, f"{run.name} full data")]
    started = time.perf_counter()
    cfg = member_config(final, run.index)
    result = train_model(cfg, callbacks=callbacks, splits=_with_validation(splits))
    state = _swa_state(last_k, run.name) if run.chosen == "swa" else at.state
    if state is None:
        raise RuntimeError(f"{run.name}: evaluation {run.best.index} never happened in full data")
    tokenizer = _tokenizer(cfg.model.name_or_path)
    run.test_probs = _finish_member(
        result.model, tokenizer, state, final, test, folder, splits.label_names
    )
    run.seconds["full_data_train"] = time.perf_counter() - started
    _free(result)
