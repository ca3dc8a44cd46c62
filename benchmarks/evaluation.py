"""Speed item "evaluation batches large": the Trainer's own evaluation order against the
product's (``trainer.train.InOrderEvalTrainer``: the length-sorted eval set read in order).

With ``train_sampling_strategy="group_by_length"`` the Trainer also groups *evaluation*
batches by length, but its megabatches hold ``min(n // (4 * batch), 50)`` batches: with
1,000 eval rows and batches of 256 that is one batch, so every batch is a random draw
padded to its longest text. Sorting the (small, fixed) eval set once and reading it in
order pads least; the metrics do not depend on the order.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from transformers import DataCollatorWithPadding, PrinterCallback, Trainer

from trainer.config import TrainConfig
from trainer.data import Splits
from trainer.focal import normalise_alpha
from trainer.loading import load_backbone
from trainer.metrics import classification_metrics
from trainer.tokens import encode_cached
from trainer.train import FocalLossFunc, InOrderEvalTrainer, longest_first, training_arguments


def _trainer(cls: type[Trainer], cfg: TrainConfig, splits: Splits, scratch: str, data: Any):
    tokenizer, model = load_backbone(cfg.model.name_or_path, splits.num_labels, cfg.train.seed)
    k = splits.num_labels

    def metrics(pred: Any) -> dict[str, float]:
        return {"accuracy": classification_metrics(pred.predictions, pred.label_ids, k)["accuracy"]}

    trainer = cls(
        model=model,
        args=training_arguments(cfg, scratch),
        eval_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_loss_func=FocalLossFunc(2.0, normalise_alpha(None, k), 0.0),
        compute_metrics=metrics,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _seconds(trainer: Trainer, repeats: int) -> tuple[float, float]:
    times, accuracy = [], 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        accuracy = trainer.evaluate()["eval_accuracy"]
        times.append(time.perf_counter() - started)
    return statistics.median(times), accuracy


def _time_grid(
    cfg: TrainConfig, splits: Splits, data: Any, repeats: int, sizes: tuple[int, ...]
) -> tuple[dict[str, float], set[float]]:
    """Seconds per evaluation for each (set-up, eval batch size); the accuracies seen."""
    ordered = longest_first(data).flatten_indices()
    seconds: dict[str, float] = {}
    accuracies: set[float] = set()
    with tempfile.TemporaryDirectory(prefix="focaltune-bench-") as scratch:
        for size in sizes:
            train = cfg.train.model_copy(update={"eval_batch_size": size})
            sized = cfg.model_copy(update={"train": train})
            for name, cls, rows in (
                ("as_is", Trainer, data),
                ("sorted", InOrderEvalTrainer, ordered),
            ):
                median, accuracy = _seconds(_trainer(cls, sized, splits, scratch, rows), repeats)
                seconds[f"{name}_batch_{size}"] = round(median, 3)
                accuracies.add(round(accuracy, 9))
    return seconds, accuracies


def run_evaluation(
    cfg: TrainConfig, splits: Splits, *, repeats: int = 3, batch_sizes: tuple[int, ...] = (64,)
) -> dict[str, Any]:
    """Median seconds of one evaluation: the Trainer's order vs sorted and in order (the
    product's), at the configured eval batch size and at ``batch_sizes``."""
    tokenizer, _ = load_backbone(cfg.model.name_or_path, splits.num_labels)
    data = encode_cached(
        splits.eval_texts, splits.eval_labels, tokenizer, cfg.data.max_length, cfg.data.cache_dir
    )
    sizes = tuple(dict.fromkeys((cfg.train.eval_batch_size, *batch_sizes)))
    seconds, accuracies = _time_grid(cfg, splits, data, repeats, sizes)
    product = seconds[f"as_is_batch_{cfg.train.eval_batch_size}"]
    return {
        "eval_rows": len(data),
        "seconds_per_evaluation": seconds,
        "best": min(seconds, key=seconds.get),
        "speedup_of_best": round(product / min(seconds.values()), 2),
        "same_accuracy": len(accuracies) == 1,  # the order changes nothing but the time
    }
