"""Part 1a: the search as the seed experiment ran it, written afresh for comparison.

What makes it "seed-style" (see ../shared/seed/experiment-log.md): a Dataset that
tokenises each item in ``__getitem__`` (every epoch, every trial), a fresh tokenizer and
model loaded from disk for every trial, evaluation and a checkpoint every epoch with the
best one reloaded at the end, no pruning, one in-memory Optuna study with plain TPE.
Everything else (data, backbone, search space, batch size, schedule, focal loss) is the
product's, so the comparison isolates how trials are run.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from benchmarks.anytime import AnytimeRun, from_study
from search.config import StudyConfig
from search.space import suggest
from trainer.config import TrainConfig
from trainer.data import Splits, load_splits
from trainer.focal import focal_loss, normalise_alpha
from trainer.train import training_arguments


class ReviewDataset(torch.utils.data.Dataset):
    """Tokenises one review per ``__getitem__``; counts the seconds spent doing so."""

    def __init__(self, texts: list[str], labels: np.ndarray, tokenizer: Any, max_length: int):
        self.texts, self.labels, self.tokenizer = texts, labels, tokenizer
        self.max_length = max_length
        self.seconds = 0.0  # only seen when items are made in this process

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        encoded = self.tokenizer(self.texts[index], truncation=True, max_length=self.max_length)
        item = {key: torch.tensor(value) for key, value in encoded.items()}
        item["labels"] = torch.tensor(int(self.labels[index]))
        self.seconds += time.perf_counter() - started
        return item


class FocalTrainer(Trainer):
    """The seed's Trainer subclass: ``compute_loss`` overridden with the focal loss."""

    def __init__(self, *args: Any, focal: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.focal = focal
        # The loss below is a batch mean: stop the Trainer treating it as pre-normalised
        # under gradient accumulation (PITFALLS.md).
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = focal_loss(outputs.logits, labels, **self.focal)
        return (loss, outputs) if return_outputs else loss


class PhaseTimer(TrainerCallback):
    """Seconds in the epoch loops, in evaluation and in checkpoint saving."""

    def __init__(self) -> None:
        self.seconds = {"train": 0.0, "eval": 0.0, "save": 0.0}
        self._mark = 0.0

    def _lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] += now - self._mark
        self._mark = now

    def on_epoch_begin(self, args, state, control, **kw: Any) -> None:
        self._mark = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kw: Any) -> None:
        self._lap("train")

    def on_evaluate(self, args, state, control, **kw: Any) -> None:
        self._lap("eval")

    def on_save(self, args, state, control, **kw: Any) -> None:
        self._lap("save")


def accuracy(pred: Any) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


def seed_arguments(cfg: TrainConfig, out_dir: Path, loader_workers: int) -> TrainingArguments:
    """The product's arguments (``training_arguments``: schedule, optimizer, seed, logging)
    with only what the seed did differently: evaluate and save every epoch and reload the
    best, plain random batches, and float32 (mixed precision is left out of the comparison)."""
    args = training_arguments(cfg, str(out_dir))
    return dataclasses.replace(  # re-runs TrainingArguments' checks on the new values
        args,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        save_total_limit=3,  # the seed kept best + last 2 for SWA
        per_device_eval_batch_size=cfg.train.batch_size,
        train_sampling_strategy="random",
        bf16=False,
        fp16=False,
        # The product's tf32=True switched TF32 matmuls on for the whole process; off again.
        tf32=False if args.tf32 else None,
        dataloader_num_workers=loader_workers,
        remove_unused_columns=False,
    )


def build_trainer(
    cfg: TrainConfig, splits: Splits, out_dir: Path, loader_workers: int, timer: PhaseTimer
) -> tuple[FocalTrainer, list[ReviewDataset]]:
    """A fresh tokenizer and model from disk, per-item datasets, the seed's Trainer."""
    path, k = cfg.model.name_or_path, splits.num_labels
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=k, dtype=torch.float32
    )
    length = cfg.data.max_length
    sets = [
        ReviewDataset(splits.train_texts, splits.train_labels, tokenizer, length),
        ReviewDataset(splits.eval_texts, splits.eval_labels, tokenizer, length),
    ]
    p = cfg.params
    focal = {
        "gamma": p.focal_gamma,
        "alpha": normalise_alpha(p.focal_alpha, k),
        "label_smoothing": p.label_smoothing,
    }
    trainer = FocalTrainer(
        model=model,
        args=seed_arguments(cfg, out_dir, loader_workers),
        train_dataset=sets[0],
        eval_dataset=sets[1],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
        callbacks=[timer],
        focal=focal,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer, sets


def run_trial(
    cfg: TrainConfig, splits: Splits, out_dir: Path, loader_workers: int
) -> tuple[float, dict[str, float]]:
    """One full training run, seed-style; returns the best eval accuracy and phase seconds."""
    started, timer = time.perf_counter(), PhaseTimer()
    trainer, sets = build_trainer(cfg, splits, out_dir, loader_workers, timer)
    load = time.perf_counter() - started
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # disk only; the seed kept them all
    phases = timer.seconds | {"load": load, "tokenise": sum(d.seconds for d in sets)}
    return float(trainer.state.best_metric), phases


def run_seed_style(
    base: StudyConfig, work: Path, *, budget_seconds: float, loader_workers: int = 0
) -> AnytimeRun:
    """Trials, one full run each, in an in-memory study, until ``budget_seconds`` (no trial
    starts after it); phase seconds summed over trials in ``extra``."""
    started_at, started = datetime.now(), time.perf_counter()
    splits = load_splits(base.data)  # the notebook read its data once, up front
    totals: dict[str, float] = {}

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest(trial, base)
        best, phases = run_trial(cfg, splits, work / f"trial-{trial.number}", loader_workers)
        for phase, seconds in phases.items():
            totals[phase] = totals.get(phase, 0.0) + seconds
        return best

    sampler = optuna.samplers.TPESampler(seed=base.study.sampler.seed)  # plain: the defaults
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=10_000, timeout=budget_seconds)
    trials = study.get_trials(deepcopy=False)
    extra = {"phase_seconds": {k: round(v, 1) for k, v in totals.items()}}
    return AnytimeRun(
        "seed-style", time.perf_counter() - started, from_study(trials, started_at), extra
    )
