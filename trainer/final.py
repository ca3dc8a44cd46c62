"""Final training: each member with its own seed, SWA per member, the ensemble, the bundle.

``run_final`` is what ``focaltune final`` does. Members are trained one after the other
and written to the staging bundle as soon as they are done, so only one model is in
memory. Everything measured goes to ``report.json``; ``ensemble.json`` gets only what
``predict`` needs plus provenance.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from transformers import AutoTokenizer, TrainerCallback

from trainer import bundle
from trainer.callbacks import EvalRecord
from trainer.config import FinalConfig, ModelConfig, TrainConfig
from trainer.data import Splits, load_labelled, load_splits
from trainer.devices import training_precision
from trainer.predict import predict_probs, progress_bar
from trainer.report import (
    Ensemble,
    build_report,
    fit_ensemble,
    manifest_body,
    probs_metrics,
    write_report,
)
from trainer.swa import LastK, snapshot
from trainer.train import train_model

log = logging.getLogger(__name__)


class EpochSnapshots(TrainerCallback):
    """Feeds the model's weights into ``LastK`` at every epoch end (kept in memory, no I/O)."""

    def __init__(self, last_k: LastK) -> None:
        self.last_k = last_k

    def on_epoch_end(self, args, state, control, model=None, **kw: Any) -> None:
        self.last_k.add(model, state.epoch)


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
        train=final.train.model_copy(update={"seed": member.seed}),
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
        log.warning(f"{name}: SWA averages {len(last_k)} epochs, fewer than swa.last_k={last_k.k}")
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
    last_k = LastK(final.swa.last_k)
    callbacks = [EpochSnapshots(last_k), TrainingProgress(progress, f"{name} ({member.model})")]
    started = time.perf_counter()
    cfg = member_config(final, index)
    result = train_model(cfg, keep_best_weights=True, callbacks=callbacks, splits=splits)
    trained = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(member.model)
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
    last_k, at = LastK(final.swa.last_k), SnapshotAt(run.best.index)
    keep = EpochSnapshots(last_k) if run.chosen == "swa" else at
    callbacks = [keep, TrainingProgress(progress, f"{run.name} full data")]
    started = time.perf_counter()
    cfg = member_config(final, run.index)
    result = train_model(cfg, callbacks=callbacks, splits=_with_validation(splits))
    state = _swa_state(last_k, run.name) if run.chosen == "swa" else at.state
    if state is None:
        raise RuntimeError(f"{run.name}: evaluation {run.best.index} never happened in full data")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    run.test_probs = _finish_member(
        result.model, tokenizer, state, final, test, folder, splits.label_names
    )
    run.seconds["full_data_train"] = time.perf_counter() - started
    _free(result)


def _load_test(final: FinalConfig, splits: Splits) -> LabelledSet | None:
    if not final.data.test:
        return None
    texts, labels = load_labelled(final.data.test, final.data, splits.label_names, what="data.test")
    return LabelledSet(texts, labels)


def _train_all(
    final: FinalConfig, splits: Splits, test: LabelledSet | None, staging: Path, progress: bool
) -> tuple[list[MemberRun], Ensemble]:
    folders = [staging / bundle.MEMBERS / f"member-{i + 1}" for i in range(len(final.members))]
    with progress_bar(progress) as bar:
        runs = [
            train_member(final, i, splits, test, None if final.full_data else folders[i], bar)
            for i in range(len(final.members))
        ]
        started = time.perf_counter()
        ensemble = fit_ensemble(final, runs, splits, test)
        ensemble.seconds = time.perf_counter() - started
        if final.full_data:
            for run in runs:
                retrain_full(final, run, splits, test, folders[run.index], bar)
            # Test probabilities now come from the retrained members: score them again.
            ensemble.score_test(runs, test)
    return runs, ensemble


def run_final(
    final: FinalConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the members, SWA, ensemble; write the bundle to ``out``; return the report."""
    out = Path(out)
    bundle.check_destination(out, overwrite)  # fail before hours of training, not after
    started = time.perf_counter()
    splits = load_splits(final.data)
    test = _load_test(final, splits)
    staging = bundle.staging_dir(out)
    try:
        runs, ensemble = _train_all(final, splits, test, staging, progress)
        report = build_report(final, splits, runs, ensemble, test)
        report["timings"]["total"] = time.perf_counter() - started
        write_report(staging, report)
        bundle.write_manifest(staging, manifest_body(final, runs, ensemble, splits.label_names))
        bundle.publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report
