"""One training run: a BERT-style classifier fine-tuned with the focal loss.

``train_model`` is the whole trainer side as the search sees it: config in, evaluation
records out, with one per-evaluation hook (the search's pruning seam). It extends the
Hugging Face Trainer only at its seams: ``compute_loss_func`` and callbacks.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import SequentialSampler
from transformers import (
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_pt_utils import LengthGroupedSampler

from trainer.callbacks import EvalHook, EvalRecord, EvalRecorder, EvalSchedule, eval_points
from trainer.config import TrainConfig
from trainer.data import Splits, load_splits
from trainer.devices import Precision, describe_device, pin_one_gpu, training_precision
from trainer.errors import BadInput
from trainer.focal import focal_loss, normalise_alpha
from trainer.loading import load_backbone
from trainer.metrics import classification_metrics
from trainer.stages import StagedSampler, StagePlan, stratified_order
from trainer.tokens import encode_cached

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite (diverged)."""


@dataclass
class TrainResult:
    history: list[EvalRecord]
    best: EvalRecord
    label_names: list[str]
    train_seconds: float
    eval_seconds: float
    train_samples_per_second: float
    device: str
    precision: Precision = "fp32"
    best_weights: dict | None = None
    model: Any = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "best_accuracy": self.best.accuracy,
            "best_eval_index": self.best.index,
            "best_epoch": self.best.epoch,
            "label_names": self.label_names,
            "train_seconds": round(self.train_seconds, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            "train_samples_per_second": round(self.train_samples_per_second, 2),
            "device": self.device,
            "precision": self.precision,
            "evaluations": [
                {"index": r.index, "epoch": round(r.epoch, 4), "step": r.step, **r.metrics}
                for r in self.history
            ],
        }


class FocalLossFunc:
    """``compute_loss_func`` for the Trainer: focal loss, gradient-accumulation exact.

    Returning sum / num_items_in_batch (the count over the whole accumulated batch)
    makes GA 4 x 8 equal GA 1 x 32; the Trainer then does not divide by GA again.
    Label smoothing lives inside the loss because the Trainer's own
    ``label_smoothing_factor`` is bypassed by a custom loss.
    """

    # On a GPU, asking whether the loss is finite waits for the GPU; ask every N calls.
    CHECK_EVERY = 16

    def __init__(self, gamma: float, alpha: torch.Tensor, label_smoothing: float) -> None:
        self.gamma, self.alpha, self.label_smoothing = gamma, alpha, label_smoothing
        self._calls, self._finite = 0, None

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if self.alpha.device != logits.device:
            self.alpha = self.alpha.to(logits.device)  # once per run, not per micro-step
        per_example = focal_loss(
            logits,
            labels,
            gamma=self.gamma,
            alpha=self.alpha,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        if num_items_in_batch is None:
            loss = per_example.mean()
        else:
            loss = per_example.sum() / num_items_in_batch
        self._check_finite(loss)
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        self._calls += 1
        due = loss.device.type == "cpu" or self._calls % self.CHECK_EVERY == 0
        if due and not bool(self._finite):
            raise NonFiniteLoss("training loss became NaN or infinite; lower the learning rate")


class InOrderEvalTrainer(Trainer):
    """The Trainer, reading the eval set in the order given: longest first (``_encode``),
    and grouping training batches by the token counts cached with the encoding.

    Under ``group_by_length`` the Trainer groups eval batches too, in megabatches of
    min(n // (4 * batch), 50) batches: 1,000 eval rows in batches of 256 make one, so each
    batch is a random draw padded to its longest text. Sorted, batches pad least; the
    metrics do not depend on the order.
    """

    flat_tail = 0.0  # TrainSettings.lr_flat_tail
    plan: StagePlan | None = None  # TrainSettings.data_stages

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.flat_tail > 0 and not isinstance(scheduler, FlatTail):
            self.lr_scheduler = FlatTail(scheduler, tail_start(num_training_steps, self.flat_tail))
        return self.lr_scheduler

    def _get_eval_sampler(self, eval_dataset: Any) -> SequentialSampler:
        return SequentialSampler(eval_dataset)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.plan is not None:
            grouped = self.args.train_sampling_strategy == "group_by_length"
            return StagedSampler(self.plan, self.train_dataset["length"] if grouped else None)
        # The Trainer drops the `length` column (not a model input) before it builds the
        # sampler, which then measures every row in Python (~60 us a row, each trial).
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=list(self.train_dataset["length"]),
        )


def stage_plan(cfg: TrainConfig, splits: Splits) -> StagePlan | None:
    """The run's data stages (``train.data_stages``), or None for plain epochs."""
    t = cfg.train
    if not t.data_stages:
        return None
    # Ordered by the data's seed, not the trial's: every trial's stages hold the same rows.
    order = stratified_order(splits.train_labels, cfg.data.split_seed)
    batch = t.batch_size * t.gradient_accumulation_steps
    return StagePlan.make(order, t.data_stages, cfg.params.epochs, batch, t.evals_per_epoch)


def tail_start(total_steps: int, fraction: float) -> int:
    """The optimizer step at which a flat tail of ``fraction`` of ``total_steps`` starts."""
    return total_steps - int(round(total_steps * fraction))


class FlatTail(LambdaLR):
    """The Trainer's own schedule up to step ``start``, then its value there held to the end:
    SWA averages weights along a stretch of constant learning rate (Izmailov et al., 2018),
    where the usual decay to 0 would leave the last snapshots nearly identical."""

    def __init__(self, scheduler: LambdaLR, start: int) -> None:
        decay = scheduler.lr_lambdas[0]
        super().__init__(scheduler.optimizer, lambda step: decay(min(step, start)))


def training_arguments(
    cfg: TrainConfig, out_dir: str, epochs: int | None = None
) -> TrainingArguments:
    """The run's ``TrainingArguments``; ``epochs`` overrides ``cfg.params.epochs`` (a staged
    run is one pass of the Trainer over its plan)."""
    t, p = cfg.train, cfg.params
    cuda = torch.cuda.is_available()
    precision = training_precision(t.precision)
    args = TrainingArguments(
        output_dir=out_dir,
        num_train_epochs=p.epochs if epochs is None else epochs,
        learning_rate=p.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_fraction,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",  # the Trainer adds the loss scaler fp16 needs
        tf32=True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        eval_strategy="no",  # EvalSchedule decides: evaluation k is one point in every trial
        save_strategy="no",  # nothing written during a run; the best weights stay in memory
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        remove_unused_columns=True,
    )
    if args.n_gpu > 1:  # `focaltune` commands pin one GPU first; this guards library use
        raise BadInput(
            f"{args.n_gpu} GPUs are visible to one training process, which would run them as "
            "nn.DataParallel; set CUDA_VISIBLE_DEVICES to one GPU per process"
        )
    return args


def _encode(splits: Splits, tokenizer: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    d = cfg.data
    train = encode_cached(
        splits.train_texts, splits.train_labels, tokenizer, d.max_length, d.cache_dir
    )
    evals = encode_cached(
        splits.eval_texts, splits.eval_labels, tokenizer, d.max_length, d.cache_dir
    )
    return train, longest_first(evals)


def longest_first(encoded: Any) -> Any:
    """The encoded rows, longest first, ties in input order (for ``InOrderEvalTrainer``)."""
    # Not ``Dataset.sort``: it warns through pyarrow 25's deprecated null placement.
    return encoded.select(np.argsort(-np.asarray(encoded["length"]), kind="stable"))


def build_trainer(
    cfg: TrainConfig,
    splits: Splits,
    scratch: str,
    *,
    compute_metrics: Any = None,
    callbacks: list[Any] | None = None,
    plan: StagePlan | None = None,
) -> InOrderEvalTrainer:
    """A Trainer for ``cfg`` on ``splits``: a fresh seeded model, the cached encodings;
    with a ``plan`` (``train.data_stages``) one pass over the plan's segments."""
    alpha = normalise_alpha(cfg.params.focal_alpha, splits.num_labels)
    tokenizer, model = load_backbone(cfg.model.name_or_path, splits.num_labels, cfg.train.seed)
    train_set, eval_set = _encode(splits, tokenizer, cfg)
    # Tensor cores want dimensions in multiples of 8; on a CPU it would only add padding.
    multiple = 8 if torch.cuda.is_available() else None
    trainer = InOrderEvalTrainer(
        model=model,
        args=training_arguments(cfg, scratch, epochs=None if plan is None else 1),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple),
        compute_loss_func=FocalLossFunc(cfg.params.focal_gamma, alpha, cfg.params.label_smoothing),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    trainer.flat_tail, trainer.plan = cfg.train.lr_flat_tail, plan
    trainer.remove_callback(PrinterCallback)  # it prints every eval dict to stdout
    return trainer


def train_model(
    cfg: TrainConfig,
    *,
    on_evaluate: EvalHook | None = None,
    keep_best_weights: bool = False,
    callbacks: list[Any] | None = None,
    splits: Splits | None = None,
) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` with the focal loss; evaluate on schedule."""
    pin_one_gpu()  # before anything starts CUDA; a no-op once it has started
    splits = splits or load_splits(cfg.data)
    last_metrics: dict[str, Any] = {}

    def compute_metrics(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        last_metrics.clear()
        last_metrics.update(classification_metrics(logits, pred.label_ids, splits.num_labels))
        return {"accuracy": last_metrics["accuracy"]}  # the full dict goes to EvalRecorder

    t, n_train = cfg.train, len(splits.train_texts)
    plan = stage_plan(cfg, splits)
    recorder = EvalRecorder(lambda: dict(last_metrics), on_evaluate, keep_best_weights)
    if plan is None:
        steps_per_epoch = math.ceil(n_train / (t.batch_size * t.gradient_accumulation_steps))
        points = eval_points(steps_per_epoch, cfg.params.epochs, t.evals_per_epoch)
    else:
        schedule = plan.schedule()  # evaluation step -> its epoch
        points, recorder.epoch_of = sorted(schedule), schedule.__getitem__
    with tempfile.TemporaryDirectory(prefix="focaltune-run-") as scratch:
        trainer = build_trainer(
            cfg,
            splits,
            scratch,
            compute_metrics=compute_metrics,
            callbacks=[EvalSchedule(points), recorder, *(callbacks or [])],
            plan=plan,
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    model = without_training_autocast(trainer.model)
    pure = max(seconds - recorder.eval_seconds, 1e-9)
    return TrainResult(
        history=recorder.history,
        best=recorder.best,
        label_names=splits.label_names,
        train_seconds=seconds,
        eval_seconds=recorder.eval_seconds,
        train_samples_per_second=(plan.total_rows if plan else n_train * cfg.params.epochs) / pure,
        device=describe_device(trainer.args.device),
        precision=training_precision(cfg.train.precision),
        best_weights=recorder.best_weights,
        model=model,
    )


def without_training_autocast(model: Any) -> Any:
    """The model with the class's own ``forward`` back.

    Under mixed precision accelerate sets an autocast wrapper as the instance's ``forward``;
    left on, every later forward pass (``final`` choosing SWA, fitting the ensemble,
    scoring the test set) would run in the training precision while ``predict`` serves
    another. Whoever infers chooses the precision (``devices.inference_precision``).
    accelerate's ``unwrap_model(keep_fp32_wrapper=False)`` would also strip transformers'
    own decorators of ``forward``, so drop the instance attributes instead.
    """
    vars(model).pop("forward", None)
    vars(model).pop("_original_forward", None)
    return model


def summarise(result: TrainResult) -> str:
    accs = " ".join(f"{r.accuracy:.4f}" for r in result.history)
    return (
        f"best accuracy {result.best.accuracy:.4f} at evaluation {result.best.index} "
        f"(epoch {result.best.epoch:.2f}); curve {accs}; "
        f"{result.train_samples_per_second:.1f} train samples/s on {result.device}"
    )
