"""Part 2: Trainer overhead, ``train_model``'s Trainer path against a bare PyTorch loop.

Both train the same model (``load_backbone``, same seed) on the same cached encodings,
with batches from the same collator and length-grouped sampler, the same AdamW (class and
arguments from the Trainer's own resolution), schedule, gradient clipping and focal loss;
the bare loop never evaluates. ``train_model`` reports samples/s with its evaluation time
taken out, so the two figures count the same work.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import DataCollatorWithPadding, Trainer, get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from trainer.config import Hyperparams, TrainConfig
from trainer.data import Splits
from trainer.focal import normalise_alpha
from trainer.loading import load_backbone
from trainer.tokens import encode_cached
from trainer.train import FocalLossFunc, train_model, training_arguments

# A fixed, ordinary point of the search space: the overhead does not depend on it.
PARAMS = Hyperparams(focal_gamma=2.0, label_smoothing=0.1, learning_rate=5e-4, epochs=1)
NO_DECAY = ("bias", "LayerNorm")  # what the Trainer exempts from weight decay in BERT


def loader(cfg: TrainConfig, splits: Splits, tokenizer: Any) -> DataLoader:
    """The Trainer's batches: cached encodings, padded per batch, grouped by length."""
    data = cfg.data
    encoded = encode_cached(
        splits.train_texts, splits.train_labels, tokenizer, data.max_length, data.cache_dir
    )
    lengths = encoded["length"]
    features = encoded.remove_columns(["length"]).with_format("python")
    t = cfg.train
    generator = torch.Generator().manual_seed(t.seed)
    if t.group_by_length:
        sampler = LengthGroupedSampler(t.batch_size, lengths=lengths, generator=generator)
    else:
        sampler = RandomSampler(features, generator=generator)
    collate = DataCollatorWithPadding(tokenizer)
    pin = torch.cuda.is_available()
    return DataLoader(
        features, batch_size=t.batch_size, sampler=sampler, collate_fn=collate, pin_memory=pin
    )


def optimizer_for(model: torch.nn.Module, cfg: TrainConfig, scratch: str) -> Any:
    """The optimizer the Trainer would build: its class and arguments, its decay groups."""
    args = training_arguments(cfg, scratch)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = [p for n, p in model.named_parameters() if not any(s in n for s in NO_DECAY)]
    rest = [p for n, p in model.named_parameters() if any(s in n for s in NO_DECAY)]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return cls(groups, **kwargs), args


def step(
    model: Any, batch: dict[str, torch.Tensor], cfg: TrainConfig, alpha: torch.Tensor, autocast: Any
) -> int:
    """Forward, focal loss (sum / batch, as the Trainer path), backward, clip; the batch size."""
    labels = batch.pop("labels")
    with autocast:
        outputs = model(**batch)
    p = cfg.params
    loss_func = FocalLossFunc(p.focal_gamma, alpha, p.label_smoothing)
    loss_func(outputs, labels, num_items_in_batch=len(labels)).backward()  # sum / batch
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
    return len(labels)


def bare_loop(cfg: TrainConfig, splits: Splits, *, bf16: bool = False) -> dict[str, float]:
    """Train ``cfg.params.epochs`` epochs without the Trainer; samples/s and tokens/s."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_backbone(cfg.model.name_or_path, splits.num_labels, cfg.train.seed)
    batches = loader(cfg, splits, tokenizer)
    model.to(device).train()
    alpha = normalise_alpha(cfg.params.focal_alpha, splits.num_labels).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else nullcontext()
    with tempfile.TemporaryDirectory(prefix="focaltune-bench-") as scratch:
        started = time.perf_counter()
        optimizer, args = optimizer_for(model, cfg, scratch)
        total = len(batches) * cfg.params.epochs
        warmup = args.get_warmup_steps(total)
        schedule = get_scheduler(cfg.train.lr_scheduler, optimizer, warmup, total)
        samples = tokens = 0
        for _ in range(cfg.params.epochs):
            for batch in batches:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                tokens += batch["input_ids"].numel()
                samples += step(model, batch, cfg, alpha, autocast)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {"samples_per_second": samples / seconds, "tokens_per_second": tokens / seconds}


def trainer_path(cfg: TrainConfig, splits: Splits) -> dict[str, float]:
    """``train_model`` as a trial runs it; its samples/s leave its evaluations out."""
    result = train_model(cfg, splits=splits)
    return {"samples_per_second": result.train_samples_per_second}


def overhead_config(cfg: TrainConfig, epochs: int) -> TrainConfig:
    # One evaluation (the last) per run: train_model cannot evaluate never, and it takes
    # that evaluation's time out of its samples/s.
    train = cfg.train.model_copy(update={"evals_per_epoch": 1})
    params = PARAMS.model_copy(update={"epochs": epochs})
    return cfg.model_copy(update={"train": train, "params": params})


def run_overhead(
    cfg: TrainConfig, splits: Splits, *, repeats: int = 3, epochs: int = 1
) -> dict[str, Any]:
    """Alternate the two paths ``repeats`` times; compare their median samples/s."""
    cfg = overhead_config(cfg, epochs)
    tokenizer, _ = load_backbone(cfg.model.name_or_path, splits.num_labels)
    loader(cfg, splits, tokenizer)  # warms the token cache: neither path pays tokenisation
    bare, hf = [], []
    for _ in range(repeats):
        bare.append(bare_loop(cfg, splits)["samples_per_second"])
        hf.append(trainer_path(cfg, splits)["samples_per_second"])
    b, t = statistics.median(bare), statistics.median(hf)
    return {
        "epochs": epochs,
        "repeats": repeats,
        "bare_samples_per_second": round(b, 1),
        "trainer_samples_per_second": round(t, 1),
        "trainer_over_bare": round(t / b, 3),
        "bare_runs": [round(x, 1) for x in bare],
        "trainer_runs": [round(x, 1) for x in hf],
    }
