"""Offline backbone: a WordPiece tokenizer trained on the corpus and a small BERT.

Optionally the BERT is pretrained with masked-language modelling on the same texts
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast, set_seed

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
from trainer.backbone.vectors import corpus_vectors, load_into
from trainer.backbone.wordpiece import MIN_VOCAB, train_tokenizer, unk_rate
from trainer.errors import BadInput
from trainer.files import staged_folder
from trainer.plots import mlm_curve_png
from trainer.tables import read_table

log = logging.getLogger(__name__)

# Upper limits of the settings: far beyond any useful offline backbone, below what crashes.
MAX_SIZES = {
    "vocab_size": 1_000_000,
    "layers": 96,
    "hidden": 16_384,
    "heads": 256,
    "intermediate": 65_536,
    "max_length": 8192,  # DataConfig.max_length's limit
    "mlm_batch_size": 65_536,
}
MAX_PARAMETERS = 2_000_000_000
EMBEDDING_INITS = ("random", "corpus")
# Standard deviation of corpus vectors copied into the embeddings. BERT's random rows have
# 0.02; larger rows let the pieces' meaning outweigh the random position embeddings in the
# sum that LayerNorm normalises. 0.04, 0.1 and 0.2 measured within a point; 0.1 was best.
CORPUS_VECTOR_STD = 0.1
MAX_MLM_EPOCHS = 1000


def _setting(default: Any, text: str) -> Any:
    """A field whose ``text`` becomes its ``focaltune backbone build`` flag's help."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class BackboneSettings:
    """Everything that shapes a backbone; written to ``backbone.json``.

    The one list of the settings: each field is a ``focaltune backbone build`` flag
    (``--vocab-size`` for ``vocab_size``) with this default and its metadata's help.
    """

    text_column: str = _setting("review", "column holding the texts")
    vocab_size: int = _setting(8000, "WordPiece vocabulary size (>= 256)")
    layers: int = _setting(2, "transformer layers")
    hidden: int = _setting(128, "hidden size; a multiple of --heads")
    heads: int = _setting(2, "attention heads")
    intermediate: int | None = _setting(None, "feed-forward size (default: 4 x hidden)")
    max_length: int = _setting(128, "tokenizer model_max_length and MLM truncation, in tokens")
    max_samples: int | None = _setting(
        None, "use a seeded random sample of this many texts (default: all)"
    )
    embedding_init: str = _setting(
        "random", "word-piece embeddings: random, or corpus (vectors learnt from the texts)"
    )
    mlm_epochs: float = _setting(0, "masked-LM pretraining epochs on the texts (0 = none)")
    mlm_batch_size: int = _setting(64, "masked-LM batch size")
    mlm_learning_rate: float = _setting(5e-4, "masked-LM peak learning rate")
    time_budget: float | None = _setting(
        None,
        "minutes masked-LM pretraining may run: it then stops and the backbone keeps what it "
        "learnt; the learning-rate decay is re-planned to end there (default: no limit)",
    )
    seed: int = _setting(0, "seed of sampling, initialisation and masking")

    def resolved(self) -> BackboneSettings:
        """With ``intermediate`` filled in: unset (None or 0) is 4 x hidden, BERT's ratio.

        Resolved only when building, so ``replace(settings, hidden=...)`` still follows."""
        return replace(self, intermediate=self.intermediate or 4 * self.hidden)

    def check(self) -> None:
        """Collect every bad setting and raise one ``BadInput`` naming them all (resolved
        settings: ``intermediate`` set)."""
        problems = [
            f"{name}={getattr(self, name)} must be >= {low}"
            for name, low in (("layers", 1), ("heads", 1), ("max_length", 8), ("mlm_batch_size", 1))
            if getattr(self, name) < low
        ]
        if self.vocab_size < MIN_VOCAB:
            problems.append(
                f"vocab_size={self.vocab_size} is too small: needs >= {MIN_VOCAB} for the "
                "special tokens and the corpus's characters (8000 is a good start)"
            )
        if self.heads >= 1 and (self.hidden < 1 or self.hidden % self.heads):
            problems.append(
                f"hidden={self.hidden} must be a positive multiple of heads={self.heads}"
            )
        if self.intermediate < 1:
            problems.append(f"intermediate={self.intermediate} must be >= 1 (default 4 * hidden)")
        if self.embedding_init not in EMBEDDING_INITS:
            problems.append(
                f"embedding_init={self.embedding_init!r} must be one of "
                + ", ".join(EMBEDDING_INITS)
            )
        if self.max_samples is not None and self.max_samples < 1:
            problems.append(f"max_samples={self.max_samples} must be >= 1 or None (all texts)")
        if not (math.isfinite(self.mlm_epochs) and 0 <= self.mlm_epochs <= MAX_MLM_EPOCHS):
            problems.append(f"mlm_epochs={self.mlm_epochs} must be a number in 0..{MAX_MLM_EPOCHS}")
        if not (math.isfinite(self.mlm_learning_rate) and 0 < self.mlm_learning_rate < 1):
            problems.append(f"mlm_learning_rate={self.mlm_learning_rate} must be in (0, 1)")
        problems += self._budget_problems()
        problems += self._too_big()
        if problems:
            raise BadInput("backbone settings: " + "; ".join(problems))

    def _budget_problems(self) -> list[str]:
        if self.time_budget is None:
            return []
        if not (math.isfinite(self.time_budget) and self.time_budget > 0):
            return [f"time_budget={self.time_budget} must be a positive number of minutes"]
        if self.mlm_epochs == 0:
            return [
                f"time_budget={self.time_budget} limits masked-LM pretraining, which is off "
                "(mlm_epochs=0); set --mlm-epochs or drop --time-budget"
            ]
        return []

    def _too_big(self) -> list[str]:
        """Sizes past these abort in native code or exhaust memory long before a result."""
        problems = [
            f"{name}={getattr(self, name)} must be <= {high}"
            for name, high in MAX_SIZES.items()
            if getattr(self, name) > high
        ]
        params = self.vocab_size * self.hidden + self.layers * (
            4 * self.hidden**2 + 2 * self.hidden * self.intermediate
        )
        if not problems and params > MAX_PARAMETERS:
            problems.append(
                f"the model would have ~{params:,} parameters (> {MAX_PARAMETERS:,}); "
                "lower vocab_size, layers, hidden or intermediate"
            )
        return problems


# Named starting points for `backbone build --preset`; explicit flags override them.
PRESETS = {
    "standard": BackboneSettings(
        # README, "Backbone recipe": the best measured recipe that builds in minutes on a
        # CPU. A large vocabulary keeps most Korean words whole, and corpus vectors give
        # each of them a meaning before fine-tuning; MLM on top gained nothing measurable.
        vocab_size=48_000,
        layers=2,
        hidden=128,
        heads=2,
        max_length=128,
        embedding_init="corpus",
    ),
    "tiny": BackboneSettings(  # random and small: for tests and smoke runs, learns little
        vocab_size=8000, layers=2, hidden=128, heads=2, max_length=64, max_samples=20_000
    ),
}


def build_backbone(
    train: str | Path,
    out: str | Path,
    settings: BackboneSettings | None = None,
    *,
    resume: bool = False,
    checkpoint_minutes: float = CHECKPOINT_MINUTES,
    **changes: Any,
) -> Path:
    """Train a tokenizer on ``train``'s texts, build (and optionally MLM-pretrain) a BERT.

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


def make_model(tokenizer: PreTrainedTokenizerFast, settings: BackboneSettings) -> BertForMaskedLM:
    """A freshly initialised BERT with an MLM head, seeded."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        intermediate_size=settings.intermediate,
        # Room for longer inputs later (fine-tuning may use a larger max_length).
        max_position_embeddings=max(512, settings.max_length),
        pad_token_id=tokenizer.pad_token_id,
    )
    set_seed(settings.seed)
    return BertForMaskedLM(config)


def _make(
    texts: list[str],
    settings: BackboneSettings,
    tokenizer: PreTrainedTokenizerFast | None,
    checkpoint: Checkpoint,
) -> tuple[BertForMaskedLM, PreTrainedTokenizerFast, dict, MlmState | None]:
    """The tokenizer (trained, unless a resumed build brings its own), the model, the report
    and the MLM state (None without MLM)."""
    started = time.perf_counter()
    resumed = tokenizer is not None
    tokenizer = tokenizer or train_tokenizer(texts, settings.vocab_size, settings.max_length)
    unk = unk_rate(tokenizer, texts[:2000])
    tok_seconds = time.perf_counter() - started
    log.info("tokenizer: vocab %d, UNK rate %.2f%%, %.1f s", len(tokenizer), 100 * unk, tok_seconds)
    model = make_model(tokenizer, settings)
    log.info("model: BERT with %d encoder parameters", model.bert.num_parameters())
    # A resumed build's checkpoint holds every weight, these initial vectors long changed.
    vec_seconds = 0.0 if resumed else _init_embeddings(model, tokenizer, texts, settings)
    started = time.perf_counter()
    loss, state = None, None
    if settings.mlm_epochs > 0:
        loss, state = _pretrain(model, tokenizer, texts, settings, checkpoint)
    mlm_seconds = time.perf_counter() - started
    # Fine-tuning adds a pooler and a classifier that this folder lacks, drawn from
    # N(0, initializer_range). BERT's 0.02 suits a pretrained 768-wide pooler's big features;
    # here logits start ~0.03 and a few hundred Adam steps (each <= lr) cannot grow them past
    # the class prior, so predictions stay on the majority class. 1/sqrt(hidden) gives the
    # new layers unit gain (+3 points measured); the encoder keeps 0.02, which trains best.
    model.config.initializer_range = settings.hidden**-0.5
    report = {
        "settings": asdict(settings),
        "texts": len(texts),
        "vocab_size": len(tokenizer),
        "unk_rate_train": round(unk, 5),  # on up to 2,000 training texts
        "parameters": model.bert.num_parameters(),  # the encoder a classifier reuses
        "seconds_tokenizer": round(tok_seconds, 2),
        "seconds_vectors": round(vec_seconds, 2),
        "seconds_mlm": round(mlm_seconds, 2),  # this run's; mlm.training_seconds: every run's
        "mlm_loss": loss,
        "mlm": state and state.summary(),  # steps done of planned, why it stopped
        "head_init_std": round(model.config.initializer_range, 5),
    }
    return model, tokenizer, report, state


def _save(
    folder: Path,
    model: BertForMaskedLM,
    tokenizer: PreTrainedTokenizerFast,
    report: dict,
    state: MlmState | None,
) -> None:
    tokenizer.save_pretrained(folder)
    model.to(device="cpu", dtype=torch.float32).save_pretrained(folder)
    if state is not None:
        curve = state.curve | {"held_out_loss": report["mlm_loss"]} | state.summary()
        (folder / "mlm_curve.json").write_text(json.dumps(curve, indent=2) + "\n")
        title = f"MLM pretraining: {state.step} of {state.planned} planned steps"
        mlm_curve_png(curve, folder / "mlm_curve.png", title)
    (folder / "backbone.json").write_text(json.dumps(report, indent=2) + "\n")


def _init_embeddings(
    model: BertForMaskedLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    settings: BackboneSettings,
) -> float:
    """Corpus vectors into the word embeddings when asked; returns the seconds it took."""
    if settings.embedding_init != "corpus":
        return 0.0
    started = time.perf_counter()
    vectors = corpus_vectors(tokenizer, texts, settings.hidden, settings.seed)
    load_into(model.bert.embeddings.word_embeddings, vectors, CORPUS_VECTOR_STD)
    seconds = time.perf_counter() - started
    log.info("embeddings: corpus vectors for %d pieces, %.1f s", len(tokenizer), seconds)
    return seconds


def _pretrain(
    model: BertForMaskedLM,
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


__all__ = ["PRESETS", "BackboneSettings", "build_backbone", "make_model", "mlm_loss", "read_texts"]
