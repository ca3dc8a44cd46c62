"""Masked-language-model pretraining of a small encoder on unlabelled texts (task-adaptive).

A plain loop rather than the Hugging Face Trainer, for speed on CPU: the vocabulary
projection runs on the masked positions only, and batches group texts of similar length.
A long run shows its progress with an ETA (``trainer.backbone.progress``), saves
checkpoints it can resume from (``trainer.backbone.checkpoint``), records its loss curve
and may stop on a time budget, with the learning-rate decay re-planned to end there.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerFast

from trainer.backbone.arch import mlm_head
from trainer.backbone.checkpoint import Checkpoint, MlmState, restore, snapshot
from trainer.backbone.progress import Phase, duration, phase

log = logging.getLogger(__name__)

MLM_PROBABILITY = 0.15
MAX_EVAL_TEXTS = 500  # held-out texts for the before/after loss
WARMUP_FRACTION = 0.06  # RoBERTa's
EARLY_STEPS = (1, 10, 100)  # a progress line after these steps too: the speed shows early
# A budgeted run measures its speed this long (at most a tenth of the budget) before it
# re-plans its schedule: the first steps are slow (allocation, warm caches) and would bias it.
REPLAN_SECONDS = 60.0


@dataclass(frozen=True)
class MlmSettings:
    epochs: float
    batch_size: int
    learning_rate: float
    max_length: int
    seed: int
    time_budget: float | None = None  # seconds of training; None: no limit


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> list[dict]:
    """Unpadded features for the MLM collator (it pads per batch)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return [dict(zip(enc.keys(), row, strict=True)) for row in zip(*enc.values(), strict=True)]


def masker(tokenizer: PreTrainedTokenizerFast, seed: int) -> DataCollatorForLanguageModeling:
    """The BERT masking (15 %); its own seeded generator, so masks do not depend on global RNG."""
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=seed)


def masked_lm_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens of a collated batch; ``model(**batch).loss``.

    A masked LM's ``forward`` (BERT's, RoBERTa's) projects every position onto the
    vocabulary although only the ~15 % masked ones carry a label: at vocabulary 8,000 and
    hidden 128 that costs 4x the encoder (2.2 s vs 0.56 s per batch of 64 on one CPU
    thread). Here only the masked positions go through the head, which gives the same loss.
    """
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    picked = batch["labels"] != -100
    hidden = model.base_model(**inputs).last_hidden_state[picked]
    return F.cross_entropy(mlm_head(model)(hidden), batch["labels"][picked])


@torch.no_grad()
def mlm_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    *,
    max_length: int = 128,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Mean masked-token loss on ``texts``; the same seed masks the same tokens."""
    features = encode(tokenizer, texts, max_length)
    collator = masker(tokenizer, seed)
    device, was_training = next(model.parameters()).device, model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = collator(features[start : start + batch_size])
        masked = int((batch["labels"] != -100).sum())
        if masked:
            loss = masked_lm_loss(model, {key: value.to(device) for key, value in batch.items()})
            total, count = total + loss.item() * masked, count + masked
    model.train(was_training)
    return total / max(count, 1)


def length_grouped_batches(
    lengths: list[int], batch_size: int, epochs: float, seed: int
) -> list[list[int]]:
    """Index batches of similar lengths (little padding) in random order, for ``epochs`` epochs.

    Each epoch shuffles, sorts windows of 50 batches by length, then shuffles the batches:
    unlike transformers' length-grouped sampler, lengths do not sweep long-to-short.
    """
    rng, window, batches = random.Random(seed), 50 * batch_size, []
    for _ in range(math.ceil(epochs)):
        order = rng.sample(range(len(lengths)), len(lengths))
        epoch = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lengths.__getitem__)
            epoch += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches += rng.sample(epoch, len(epoch))
    return batches[: max(1, round(epochs * math.ceil(len(lengths) / batch_size)))]


def pretrain_mlm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    settings: MlmSettings,
    checkpoint: Checkpoint | None = None,
) -> tuple[dict[str, float], MlmState]:
    """Pretrain on all but a held-out slice of ``texts``; returns its loss before and after,
    and the training state (steps, curve). Resumes from ``checkpoint`` when it holds one."""
    shuffled = random.Random(settings.seed).sample(texts, len(texts))
    n_eval = min(MAX_EVAL_TEXTS, len(texts) // 20)
    # Tiny corpora have nothing to spare: evaluate on the training texts then.
    eval_texts, train_texts = shuffled[:n_eval] or shuffled, shuffled[n_eval:]
    loss_kw = {"max_length": settings.max_length, "seed": settings.seed}
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    resuming = checkpoint is not None and checkpoint.exists()
    with phase("MLM", "" if resuming else "held-out loss before") as progress:
        before = math.nan if resuming else mlm_loss(model, tokenizer, eval_texts, **loss_kw)
        texts = train_texts or eval_texts
        state = train_mlm(model, tokenizer, texts, settings, checkpoint, before, progress)
        after = mlm_loss(model, tokenizer, eval_texts, **loss_kw)
    loss = {"before": round(state.before, 4), "after": round(after, 4)}
    return loss | {"eval_texts": len(eval_texts)}, state


def train_mlm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    settings: MlmSettings,
    checkpoint: Checkpoint | None = None,
    before: float = math.nan,
    progress: Phase | None = None,
) -> MlmState:
    """AdamW with warmup and linear decay on length-grouped, BERT-masked batches.

    Continues from ``checkpoint``'s state when it has one and saves to it as it goes; stops
    when the steps are done or ``settings.time_budget`` is spent. Shows its steps, loss and
    ETA on ``progress`` (default: nowhere).
    """
    progress = Phase() if progress is None else progress
    progress.restart("encoding texts")  # one tokenizer call: only its time is known
    features = encode(tokenizer, texts, settings.max_length)
    lengths = [len(f["input_ids"]) for f in features]
    batches = length_grouped_batches(lengths, settings.batch_size, settings.epochs, settings.seed)
    params = list(model.parameters())  # the tied embedding/decoder weight appears once
    optimizer = make_optimizer(params, settings.learning_rate)
    collator = masker(tokenizer, settings.seed)
    warmup = math.ceil(WARMUP_FRACTION * len(batches))
    state = MlmState(planned=len(batches), total=len(batches), warmup=warmup, before=before)
    if checkpoint is not None and checkpoint.exists():
        state = restore(checkpoint.load(), model, optimizer, collator)
    clock = Clock(state, settings.time_budget, progress)
    model.train()
    while state.step < state.total and not clock.spent():
        lr = settings.learning_rate * schedule(state.step, state.warmup, state.total)
        batch = collator([features[i] for i in batches[state.step]])
        state.record(train_step(model, optimizer, params, batch, lr), lr, clock.seconds())
        clock.tick(state)
        if checkpoint is not None and checkpoint.due():
            checkpoint.save(snapshot(state, model, optimizer, collator), tokenizer)
    state.close_interval()
    clock.finish(state)
    return state


def make_optimizer(params: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.AdamW:
    groups = [  # no weight decay on biases and LayerNorm, as in BERT
        {"params": [p for p in params if p.ndim > 1], "weight_decay": 0.01},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate)


def schedule(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor of ``step``: transformers' get_linear_schedule_with_warmup,
    as a function of the step because a time budget may move ``total`` mid-run."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def train_step(
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    batch: dict[str, torch.Tensor],
    lr: float,
) -> float | None:
    """One AdamW step at ``lr``; the batch's loss, or None when it masks nothing (a batch of
    1-token texts may)."""
    if not (batch["labels"] != -100).any():
        return None
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = masked_lm_loss(model, {k: v.to(params[0].device) for k, v in batch.items()})
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


class Clock:
    """This run's time: the budget, the progress shown, the re-planned schedule."""

    def __init__(self, state: MlmState, budget: float | None, progress: Phase) -> None:
        self.budget, self.first_step, self.base = budget, state.step, state.seconds
        self.started = time.perf_counter()
        self.progress = progress
        # A resumed run's bar starts at its step, so the jump is not taken for speed.
        progress.restart("training", state.total, "steps", done=state.step)
        progress.describe = lambda: progress_line(state, self.rate(state), budget)
        progress.early = frozenset(EARLY_STEPS)

    def seconds(self) -> float:
        """Training seconds over every run, so a resumed build keeps its budget."""
        return self.base + time.perf_counter() - self.started

    def spent(self) -> bool:
        return self.budget is not None and self.seconds() >= self.budget

    def rate(self, state: MlmState) -> float:
        return (state.step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)

    def tick(self, state: MlmState) -> None:
        """After a step: progress shown (a line when due); once measured, re-plan."""
        note = f"loss {state.recent_loss():.2f}"
        self.progress.update(state.step, total=state.total, note=note)
        measure = math.inf if self.budget is None else min(REPLAN_SECONDS, self.budget / 10)
        if not state.replanned and time.perf_counter() - self.started >= measure:
            replan(state, self.rate(state), self.budget)

    def finish(self, state: MlmState) -> None:
        """The last progress line is the phase's closing one (``pretrain_mlm``)."""
        if state.step < state.planned:
            log.info(
                "MLM: the time budget (%s) allowed %d of the %d planned steps",
                duration(self.budget or 0), state.step, state.planned,
            )  # fmt: skip


def replan(state: MlmState, rate: float, budget: float) -> None:
    """End the schedule (its linear decay) at the step the budget is expected to allow,
    rather than stop abruptly at a high learning rate. Done once, after the speed is
    measured; an optimistic estimate still stops on the budget, a pessimistic one early."""
    state.replanned = True
    fit = max(state.step, state.step + int(rate * (budget - state.seconds)))
    if fit < state.total:
        log.info(
            "MLM: %.1f steps/s, so about %d of %d steps fit the time budget of %s; "
            "the learning rate now decays to 0 at step %d",
            rate, fit, state.total, duration(budget), fit,
        )  # fmt: skip
        state.total = fit
        # The warmup keeps its length (a shorter one would jump the rate up mid-warmup)
        # unless the shortened run could not decay after it.
        state.warmup = min(state.warmup, fit // 4)


def progress_line(state: MlmState, rate: float, budget: float | None) -> str:
    """``MLM step 1200/8000 (15%), loss 6.12, 3.1 steps/s, elapsed 6m20s, ETA 36m``."""
    left = (state.total - state.step) / rate if rate > 0 else math.inf
    by_budget = budget is not None and budget - state.seconds < left
    left = max(0.0, budget - state.seconds) if by_budget else left
    return (
        f"MLM step {state.step}/{state.total} ({state.step / max(state.total, 1):.0%}), "
        f"loss {state.recent_loss():.2f}, {rate:.1f} steps/s, elapsed {duration(state.seconds)}"
        f", ETA {duration(left)}" + (" (time budget)" if by_budget else "")
    )
