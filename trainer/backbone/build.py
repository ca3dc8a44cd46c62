"""Offline backbone: a WordPiece tokenizer trained on the corpus and a small encoder (BERT,
or RoBERTa: ``--arch``, ``trainer.backbone.arch``).

Optionally the encoder is pretrained with masked-language modelling on the same texts
(task-adaptive pretraining), which saves checkpoints beside the folder as it goes: an
interrupted build resumes from them (``resume=True``, ``--resume``). The folder loads with
``AutoTokenizer`` and ``AutoModelForSequenceClassification`` without the Hub, so the whole
pipeline runs offline.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast, set_seed

from trainer.backbone.arch import ARCHS, make_config
from trainer.backbone.checkpoint import (
    CHECKPOINT_MINUTES,
    Checkpoint,
    MlmState,
    check_resumable,
    check_same_build,
    fingerprint,
    load_tokenizer,
)
from trainer.backbone.mlm import MlmSettings, mlm_loss, pretrain_mlm
from trainer.backbone.progress import phase
from trainer.backbone.settings import BackboneSettings
from trainer.backbone.vectors import corpus_vectors, load_into
from trainer.backbone.wordpiece import train_tokenizer, unk_rate
from trainer.errors import BadInput
from trainer.files import staged_folder
from trainer.loading import quiet_loading
from trainer.plots import mlm_curve_png
from trainer.tables import read_table

log = logging.getLogger(__name__)

# Standard deviation of corpus vectors copied into the embeddings. The random rows have
# 0.02; larger rows let the pieces' meaning outweigh the random position embeddings in the
# sum that LayerNorm normalises. 0.04, 0.1 and 0.2 measured within a point; 0.1 was best.
CORPUS_VECTOR_STD = 0.1


def build_backbone(
    train: str | Path,
    out: str | Path,
    settings: BackboneSettings | None = None,
    *,
    resume: bool = False,
    checkpoint_minutes: float = CHECKPOINT_MINUTES,
    **changes: Any,
) -> Path:
    """Train a tokenizer on ``train``'s texts, build (and optionally MLM-pretrain) an encoder.

    ``settings`` (default: ``BackboneSettings()``) with ``changes`` applied by field name,
    e.g. ``build_backbone(train, out, layers=1, hidden=32)``. The folder is built beside
    ``out`` and renamed into place at the end, so a failure leaves no half-made backbone.
    MLM pretraining saves a checkpoint every ``checkpoint_minutes`` beside ``out``;
    ``resume`` continues an interrupted build from it. Returns ``out``.
    """
    settings = replace(settings or BackboneSettings(), **changes).resolved()
    settings.check()
    if not (math.isfinite(checkpoint_minutes) and checkpoint_minutes >= 0):
        raise BadInput(f"--checkpoint-minutes {checkpoint_minutes} must be a number >= 0")
    train, out = Path(train), Path(out)
    if out.exists():
        raise BadInput(f"output folder {out} already exists; remove it or choose another --out")
    check_resumable(out, resume)
    started = time.perf_counter()
    texts = read_texts(train, settings.text_column, settings.max_samples, settings.seed)
    record = {"settings": asdict(settings), "data": fingerprint(train, texts)}
    if resume:
        check_same_build(out, record)
    log.info("read %d texts from %s in %.1f s", len(texts), train, time.perf_counter() - started)
    checkpoint = Checkpoint(out, checkpoint_minutes * 60, record)
    tokenizer = load_tokenizer(out) if resume else None
    model, tokenizer, report, state = _make(texts, settings, tokenizer, checkpoint)
    report |= {"train": str(train), "seconds_total": round(time.perf_counter() - started, 2)}
    with staged_folder(out) as staging:
        _save(staging, model, tokenizer, report, state)
    checkpoint.remove()
    log.info("backbone written to %s in %.1f s", out, report["seconds_total"])
    return out


def read_texts(path: Path, column: str, max_samples: int | None, seed: int) -> list[str]:
    """Non-empty texts of ``column`` in any table ``trainer.tables`` reads
    (csv/tsv/json/jsonl/parquet, .gz too), stripped; a seeded sample of ``max_samples``."""
    frame = read_table(path, what="--train")
    if column not in frame.columns:
        raise BadInput(
            f"text column {column!r} not found in {path} (columns: {', '.join(map(str, frame))});"
            " pass --text-column with one of them"
        )
    texts = frame[column].dropna().astype(str).str.strip()
    texts = texts[texts != ""]
    if texts.empty:
        raise BadInput(
            f"column {column!r} of {path} has no non-empty texts; fill it or pick another"
        )
    if max_samples is not None and len(texts) > max_samples:
        texts = texts.sample(n=max_samples, random_state=seed)
    return texts.tolist()


def make_model(tokenizer: PreTrainedTokenizerFast, settings: BackboneSettings) -> PreTrainedModel:
    """A freshly initialised ``settings.arch`` encoder with an MLM head, seeded."""
    config = make_config(
        settings.arch,
        tokenizer,
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=settings.intermediate,
        max_length=settings.max_length,
    )
    set_seed(settings.seed)
    return ARCHS[settings.arch].masked_lm(config)


def _make(
    texts: list[str],
    settings: BackboneSettings,
    tokenizer: PreTrainedTokenizerFast | None,
    checkpoint: Checkpoint,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, dict, MlmState | None]:
    """The tokenizer (trained, unless a resumed build brings its own), the model, the report
    and the MLM state (None without MLM)."""
    started = time.perf_counter()
    resumed = tokenizer is not None
    tokenizer = tokenizer or _train_tokenizer(texts, settings)
    unk = unk_rate(tokenizer, texts[:2000])
    tok_seconds = time.perf_counter() - started
    log.info("tokenizer: vocab %d, UNK rate %.2f%%, %.1f s", len(tokenizer), 100 * unk, tok_seconds)
    model = make_model(tokenizer, settings)
    encoder = model.base_model.num_parameters()  # what a classifier reuses, without MLM head
    log.info("model: %s with %d encoder parameters", type(model.base_model).__name__, encoder)
    # A resumed build's checkpoint holds every weight, these initial vectors long changed.
    vec_seconds = 0.0 if resumed else _init_embeddings(model, tokenizer, texts, settings)
    started = time.perf_counter()
    loss, state = None, None
    if settings.mlm_epochs > 0:
        loss, state = _pretrain(model, tokenizer, texts, settings, checkpoint)
    mlm_seconds = time.perf_counter() - started
    # Fine-tuning adds a head that this folder lacks (BERT: pooler and classifier; RoBERTa:
    # classifier.dense and out_proj), drawn from N(0, initializer_range). BERT's 0.02 suits
    # a pretrained 768-wide pooler's big features; here logits start ~0.03 and a few
    # hundred Adam steps (each <= lr) cannot grow them past the class prior, so predictions
    # stay on the majority class. 1/sqrt(hidden) gives the new layers unit gain (+3 points
    # measured, BERT); the encoder keeps 0.02, which trains best.
    model.config.initializer_range = settings.hidden**-0.5
    report = {
        "settings": asdict(settings),
        "texts": len(texts),
        "vocab_size": len(tokenizer),
        "unk_rate_train": round(unk, 5),  # on up to 2,000 training texts
        "parameters": encoder,  # the encoder a classifier reuses
        "seconds_tokenizer": round(tok_seconds, 2),
        "seconds_vectors": round(vec_seconds, 2),
        "seconds_mlm": round(mlm_seconds, 2),  # this run's; mlm.training_seconds: every run's
        "mlm_loss": loss,
        "mlm": state and state.summary(),  # steps done of planned, why it stopped
        "head_init_std": round(model.config.initializer_range, 5),
    }
    return model, tokenizer, report, state


def _train_tokenizer(texts: list[str], settings: BackboneSettings) -> PreTrainedTokenizerFast:
    segments = ARCHS[settings.arch].segments
    with phase("tokenizer", unit="texts") as progress:
        return train_tokenizer(
            texts, settings.vocab_size, settings.max_length, segments=segments, progress=progress
        )


def _save(
    folder: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    report: dict,
    state: MlmState | None,
) -> None:
    tokenizer.save_pretrained(folder)
    # Quiet: transformers' "Writing model shards" bar would land in a build's log file.
    with quiet_loading():
        model.to(device="cpu", dtype=torch.float32).save_pretrained(folder)
    if state is not None:
        curve = state.curve | {"held_out_loss": report["mlm_loss"]} | state.summary()
        (folder / "mlm_curve.json").write_text(json.dumps(curve, indent=2) + "\n")
        title = f"MLM pretraining: {state.step} of {state.planned} planned steps"
        mlm_curve_png(curve, folder / "mlm_curve.png", title)
    (folder / "backbone.json").write_text(json.dumps(report, indent=2) + "\n")


def _init_embeddings(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    settings: BackboneSettings,
) -> float:
    """Corpus vectors into the word embeddings when asked; returns the seconds it took."""
    if settings.embedding_init != "corpus":
        return 0.0
    started = time.perf_counter()
    with phase("vectors") as progress:
        vectors = corpus_vectors(tokenizer, texts, settings.hidden, settings.seed, progress)
    # Through get_input_embeddings(): the embeddings' path differs per family.
    load_into(model.get_input_embeddings(), vectors, CORPUS_VECTOR_STD)
    seconds = time.perf_counter() - started
    log.info("embeddings: corpus vectors for %d pieces, %.1f s", len(tokenizer), seconds)
    return seconds


def _pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    s: BackboneSettings,
    checkpoint: Checkpoint,
) -> tuple[dict[str, float], MlmState]:
    budget = None if s.time_budget is None else 60 * s.time_budget
    mlm = MlmSettings(
        s.mlm_epochs, s.mlm_batch_size, s.mlm_learning_rate, s.max_length, s.seed, budget
    )
    loss, state = pretrain_mlm(model, tokenizer, texts, mlm, checkpoint)
    log.info(
        "MLM: held-out loss %.3f -> %.3f, %d of %d planned steps, %.1f s of training",
        loss["before"], loss["after"], state.step, state.planned, state.seconds,
    )  # fmt: skip
    return loss, state


__all__ = ["build_backbone", "make_model", "mlm_loss", "read_texts"]
