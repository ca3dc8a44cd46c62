"""Part 2c: each speed item of issue 6 on its own, with and without it (seconds or samples/s).

The search comparison (part 1) shows all of them together; here each one is switched off
alone, on the same data and backbone, so that every item the product keeps is shown to
pay: the token cache, length-grouped batches, no checkpoint writes, the backbone kept in
memory, and frozen start-up objects for the collector. (Evaluation order is part 2's
``evaluation``; threads split between workers show in part 1.)
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.data import Splits
from trainer.loading import _pretrained, load_backbone
from trainer.tokens import encode_cached
from trainer.train import train_model


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 6)


def token_cache(cfg: TrainConfig, splits: Splits, repeats: int) -> dict[str, float]:
    """Tokenising the training texts: into a fresh cache vs read back from it."""
    tokenizer, _ = load_backbone(cfg.model.name_or_path, splits.num_labels)
    args = (splits.train_texts, splits.train_labels, tokenizer, cfg.data.max_length)
    with tempfile.TemporaryDirectory(prefix="focaltune-bench-") as scratch:
        folders = iter(range(repeats))
        cold = _median_seconds(lambda: encode_cached(*args, f"{scratch}/{next(folders)}"), repeats)
        warm = _median_seconds(lambda: encode_cached(*args, f"{scratch}/0"), repeats)
    return {"without": cold, "with": warm}


def length_grouping(cfg: TrainConfig, splits: Splits) -> dict[str, float]:
    """Train samples/s of one epoch with random batches vs length-grouped batches."""
    out = {}
    for name, grouped in (("without", False), ("with", True)):
        train = cfg.train.model_copy(update={"group_by_length": grouped})
        params = cfg.params.model_copy(update={"epochs": 1})
        run = cfg.model_copy(update={"train": train, "params": params})
        out[name] = round(train_model(run, splits=splits).train_samples_per_second, 1)
    return out


def backbone_in_memory(cfg: TrainConfig, splits: Splits, repeats: int) -> dict[str, float]:
    """A trial's model: read from disk (tokenizer + weights) vs rebuilt from memory."""

    def from_disk() -> None:
        _pretrained.cache_clear()
        load_backbone(cfg.model.name_or_path, splits.num_labels)

    def from_memory() -> None:
        load_backbone(cfg.model.name_or_path, splits.num_labels)

    cold = _median_seconds(from_disk, repeats)
    warm = _median_seconds(from_memory, repeats)
    return {"without": cold, "with": warm}


def no_checkpoints(cfg: TrainConfig, splits: Splits, repeats: int) -> dict[str, float]:
    """Keeping one epoch's weights: a checkpoint on disk vs a copy in memory."""
    _, model = load_backbone(cfg.model.name_or_path, splits.num_labels)
    with tempfile.TemporaryDirectory(prefix="focaltune-bench-") as scratch:
        disk = _median_seconds(lambda: model.save_pretrained(Path(scratch) / "ckpt"), repeats)
    memory = _median_seconds(
        lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}, repeats
    )
    return {"without": disk, "with": memory}


def frozen_startup(repeats: int) -> dict[str, float]:
    """One full collection (the objective runs one after every trial) with torch and
    transformers loaded: objects unfrozen vs frozen by ``gc.freeze()``."""
    unfrozen = _median_seconds(gc.collect, repeats)
    gc.freeze()
    try:
        frozen = _median_seconds(gc.collect, repeats)
    finally:
        gc.unfreeze()
    return {"without": unfrozen, "with": frozen, "objects": len(gc.get_objects())}


def run_speed_items(cfg: TrainConfig, splits: Splits, *, repeats: int = 3) -> dict[str, Any]:
    """Each item: its figure without and with it, and the unit."""
    items = {
        "token_cache_s": token_cache(cfg, splits, repeats),
        "length_grouping_samples_per_s": length_grouping(cfg, splits),
        "backbone_in_memory_s": backbone_in_memory(cfg, splits, repeats),
        "no_checkpoint_s": no_checkpoints(cfg, splits, repeats),
        "frozen_startup_gc_s": frozen_startup(repeats),
    }
    return items
