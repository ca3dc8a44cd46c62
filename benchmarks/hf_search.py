"""The peer the transformers documentation offers: ``Trainer.hyperparameter_search``.

Run as a user of that API runs it, on the workload's rows, backbone and space:

- the data tokenised once with ``datasets.Dataset.map``, padded per batch by
  ``DataCollatorWithPadding``; a ``model_init`` that loads the backbone from disk per trial;
- the focal loss through ``compute_loss_func``. The API sets only ``TrainingArguments``
  fields from a trial, so the focal settings are fields of a ``TrainingArguments``
  subclass, which the loss reads (the documented way to search anything else);
- ``backend="optuna"`` with its own defaults: ``optuna.create_study`` (univariate TPE,
  median pruner), one evaluation per epoch reported to the pruner, the trial's value the
  last evaluation's accuracy (``default_compute_objective``); the settings given are
  ``direction="maximize"``, ``timeout`` and ``n_trials`` (more than the budget allows).

The study is kept in an ``InMemoryStorage`` handed to ``create_study`` with its name (keywords
the API passes on), so its trials can be read back with their times.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from benchmarks.anytime import AnytimeRun, from_study
from search.config import StudyConfig
from search.space import suggest
from trainer.config import TrainConfig
from trainer.data import load_splits
from trainer.focal import focal_loss, normalise_alpha
from trainer.train import training_arguments

STUDY = "hf-hyperparameter-search"


@dataclasses.dataclass
class FocalArguments(TrainingArguments):
    """``TrainingArguments`` plus the focal settings, so ``hp_space`` can set them."""

    focal_gamma: float = 0.0
    focal_label_smoothing: float = 0.0
    focal_alpha: tuple[float, ...] | None = None


def arguments(base: StudyConfig, out: Path) -> FocalArguments:
    """The product's arguments for this workload (batch size, schedule, seed), evaluated
    every epoch as this API's pruning needs, with the Trainer's default random batches."""
    # Learning rate and epochs are the trial's: hp_space sets them.
    plain = training_arguments(
        TrainConfig(data=base.data, model=base.model, train=base.train), str(out)
    )
    fields = {f.name: getattr(plain, f.name) for f in dataclasses.fields(plain) if f.init}
    fields |= {"eval_strategy": "epoch", "train_sampling_strategy": "random"}
    return FocalArguments(**fields)


def hp_space(base: StudyConfig):
    """The product's space (same names and ranges), as ``TrainingArguments`` values."""

    def space(trial: optuna.Trial) -> dict[str, Any]:
        p = suggest(trial, base).params
        return {
            "learning_rate": p.learning_rate,
            "num_train_epochs": p.epochs,
            "focal_gamma": p.focal_gamma,
            "focal_label_smoothing": p.label_smoothing,
            "focal_alpha": None if p.focal_alpha is None else tuple(p.focal_alpha),
        }

    return space


def datasets(base: StudyConfig, tokenizer: Any) -> tuple[Dataset, Dataset, int]:
    splits = load_splits(base.data)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=base.data.max_length)

    sets = [
        Dataset.from_dict({"text": texts, "labels": labels.tolist()}).map(
            encode, batched=True, remove_columns=["text"]
        )
        for texts, labels in (
            (splits.train_texts, splits.train_labels),
            (splits.eval_texts, splits.eval_labels),
        )
    ]
    return sets[0], sets[1], splits.num_labels


def run_hf_search(
    base: StudyConfig, work: Path, *, budget_seconds: float, n_trials: int = 10_000
) -> AnytimeRun:
    """``hyperparameter_search`` for ``budget_seconds`` (no trial starts after it) or
    ``n_trials``, whichever comes first."""
    started_at, started = datetime.now(), time.perf_counter()
    path = base.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_set, eval_set, k = datasets(base, tokenizer)
    holder: dict[str, Trainer] = {}

    def loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        a = holder["trainer"].args
        per_example = focal_loss(
            outputs.logits,
            labels,
            gamma=a.focal_gamma,
            alpha=normalise_alpha(a.focal_alpha, k).to(outputs.logits.device),
            label_smoothing=a.focal_label_smoothing,
            reduction="sum",
        )
        return per_example / (num_items_in_batch or len(labels))

    trainer = Trainer(
        model_init=lambda: AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=k, dtype=torch.float32
        ),
        args=arguments(base, work / "trainer"),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p[0], -1) == p[1]).mean())},
        compute_loss_func=loss,
    )
    trainer.remove_callback(PrinterCallback)
    holder["trainer"] = trainer
    storage = optuna.storages.InMemoryStorage()
    trainer.hyperparameter_search(
        hp_space=hp_space(base),
        direction="maximize",
        backend="optuna",
        n_trials=n_trials,
        timeout=budget_seconds,
        storage=storage,
        study_name=STUDY,
    )
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    return AnytimeRun(
        "hf-hyperparameter-search",
        wall,
        from_study(trials, started_at),
        {"trials_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials)},
    )
