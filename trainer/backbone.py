"""Offline backbone: a WordPiece tokenizer trained on the corpus and a small BERT.

Optionally the BERT is pretrained with masked-language modelling on the same texts
(task-adaptive pretraining). The folder loads with ``AutoTokenizer`` and
``AutoModelForSequenceClassification`` without the Hub, so the whole pipeline runs offline.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)

from trainer.errors import BadInput

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]"}
SPECIAL_TOKENS |= {"sep_token": "[SEP]", "mask_token": "[MASK]"}
MIN_VOCAB = 256
WORD_START = "\ue000"  # private-use character: marks word starts while learning merges
MLM_PROBABILITY = 0.15
MAX_EVAL_TEXTS = 500  # held-out texts for the before/after MLM loss
READERS = {".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t")}
READERS |= {".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}


@dataclass(frozen=True)
class BackboneSettings:
    """Everything that shapes a backbone; written to ``backbone.json``."""

    text_column: str
    vocab_size: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    max_length: int
    max_samples: int | None
    mlm_epochs: float
    mlm_batch_size: int
    mlm_learning_rate: float
    seed: int

    def check(self) -> None:
        """Collect every bad setting and raise one ``BadInput`` naming them all."""
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
        if self.max_samples is not None and self.max_samples < 1:
            problems.append(f"max_samples={self.max_samples} must be >= 1 or None (all texts)")
        if self.mlm_epochs < 0 or self.mlm_learning_rate <= 0:
            problems.append("mlm_epochs must be >= 0 and mlm_learning_rate > 0")
        if problems:
            raise BadInput("backbone settings: " + "; ".join(problems))


def build_backbone(
    train: str | Path,
    out: str | Path,
    *,
    text_column: str = "review",
    vocab_size: int = 8000,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 2,
    intermediate: int | None = None,
    max_length: int = 128,
    max_samples: int | None = None,
    mlm_epochs: float = 0,
    mlm_batch_size: int = 64,
    mlm_learning_rate: float = 5e-4,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``train``'s texts, build (and optionally MLM-pretrain) a BERT.

    The folder is built beside ``out`` and renamed into place at the end, so a failure
    leaves no half-made backbone. Returns ``out``.
    """
    # fmt: off
    settings = BackboneSettings(
        text_column, vocab_size, layers, hidden, heads, intermediate or 4 * hidden,
        max_length, max_samples, mlm_epochs, mlm_batch_size, mlm_learning_rate, seed,
    )
    # fmt: on
    settings.check()
    train, out = Path(train), Path(out)
    if out.exists():
        raise BadInput(f"output folder {out} already exists; remove it or choose another --out")
    started = time.perf_counter()
    texts = read_texts(train, settings.text_column, settings.max_samples, settings.seed)
    log.info("read %d texts from %s in %.1f s", len(texts), train, time.perf_counter() - started)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".partial", dir=out.parent))
    try:
        report = _build_into(staging, texts, settings)
        report |= {"train": str(train), "seconds_total": round(time.perf_counter() - started, 2)}
        (staging / "backbone.json").write_text(json.dumps(report, indent=2) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("backbone written to %s in %.1f s", out, report["seconds_total"])
    return out


def read_texts(path: Path, column: str, max_samples: int | None, seed: int) -> list[str]:
    """Non-empty texts of ``column`` in a csv/tsv/jsonl/parquet file (.gz ok)."""
    if not path.is_file():
        raise BadInput(f"training file {path} not found; pass --train with an existing file")
    suffixes = [s for s in path.suffixes[-2:] if s != ".gz"]
    reader = READERS.get(suffixes[-1].lower() if suffixes else "")
    if reader is None:
        raise BadInput(f"{path}: unknown file type; use one of {', '.join(READERS)} (.gz ok)")
    try:
        frame = reader(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        reason = " ".join(str(err).split())
        raise BadInput(f"cannot read {path}: {reason}; fix the file or convert it to CSV") from None
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


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A cased BERT WordPiece tokenizer trained on ``texts``; keeps Hangul intact."""
    # NFC keeps Hangul syllables composed; NFKC would turn compatibility jamo (the ㅋㅋ and
    # ㅠㅠ of Korean reviews) into conjoining jamo, and accent stripping decomposes
    # syllables into jamo (NFD): both make decoded text unreadable.
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.BertNormalizer(strip_accents=False, lowercase=False)]
    )
    splitter = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    words = [[w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(t))] for t in texts]
    vocab = {token: i for i, token in enumerate(learn_wordpieces(words, vocab_size))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    # The generic class, not BertTokenizer: in transformers 5 BertTokenizer rebuilds its
    # own normaliser on load (lowercase + accent stripping) and would ignore ours.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        **SPECIAL_TOKENS,
    )


def learn_wordpieces(words: list[list[str]], vocab_size: int) -> list[str]:
    """A WordPiece vocabulary learnt by BPE merges; the same words always give the same list.

    tokenizers' WordPieceTrainer numbers its ``##`` pieces in hash-map order, so merges of
    equal count tie-break differently on every run (huggingface/tokenizers#1794). A BPE
    without a continuation prefix numbers everything in sorted order: learn on words that
    carry a word-start mark instead, then map marked pieces to words, the rest to ``##``.
    """
    # Korean has thousands of syllables; without a cap the alphabet alone (x and ##x) can
    # exceed vocab_size and leave no room for whole words. Half keeps UNK rare (~1%).
    # Capped here, not by the trainer, whose cut breaks count ties at random.
    counts = Counter("".join(w for row in words for w in row))
    alphabet = sorted(counts, key=lambda c: (-counts[c], c))[: vocab_size // 2]
    trainer = BpeTrainer(
        vocab_size=2 * vocab_size,  # marked single characters and duplicates are dropped below
        initial_alphabet=[WORD_START, *alphabet],
        limit_alphabet=len(alphabet) + 1,
        show_progress=False,
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    marked = (" ".join(WORD_START + w for w in row) for row in words)
    bpe.train_from_iterator(marked, trainer, length=len(words))
    starts = set(alphabet) & {w[0] for row in words for w in row}
    inside = set(alphabet) & {c for row in words for w in row for c in w[1:]}
    vocab = dict.fromkeys([*SPECIAL_TOKENS.values(), *sorted(starts)])
    vocab |= dict.fromkeys(f"##{c}" for c in sorted(inside))
    for piece in sorted(bpe.get_vocab(), key=bpe.token_to_id):
        if len(vocab) >= vocab_size:
            break
        if len(piece) > 1:  # single characters are in already
            vocab.setdefault(piece[1:] if piece.startswith(WORD_START) else f"##{piece}")
    return list(vocab)


def unk_rate(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> float:
    """Share of [UNK] among the word pieces of ``texts``."""
    ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    unk = sum(row.count(tokenizer.unk_token_id) for row in ids)
    return unk / max(sum(map(len, ids)), 1)


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


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str], max_length: int) -> list[dict]:
    """Unpadded features for the MLM collator (it pads per batch)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    return [dict(zip(enc.keys(), row, strict=True)) for row in zip(*enc.values(), strict=True)]


def masker(tokenizer: PreTrainedTokenizerFast, seed: int) -> DataCollatorForLanguageModeling:
    """The BERT masking (15 %); its own seeded generator, so masks do not depend on global RNG."""
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=seed)


@torch.no_grad()
def mlm_loss(
    model: BertForMaskedLM,
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
            loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
            total, count = total + loss.item() * masked, count + masked
    model.train(was_training)
    return total / max(count, 1)


def pretrain_mlm(
    model: BertForMaskedLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    settings: BackboneSettings,
) -> dict[str, float]:
    """Masked-language-model pretraining; returns the held-out loss before and after."""
    shuffled = random.Random(settings.seed).sample(texts, len(texts))
    n_eval = min(MAX_EVAL_TEXTS, len(texts) // 20)
    # Tiny corpora have nothing to spare: evaluate on the training texts then.
    eval_texts, train_texts = shuffled[:n_eval] or shuffled, shuffled[n_eval:]
    loss_kw = {"max_length": settings.max_length, "seed": settings.seed}
    before = mlm_loss(model, tokenizer, eval_texts, **loss_kw)
    with tempfile.TemporaryDirectory(prefix="focaltune-mlm-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.mlm_epochs,
            per_device_train_batch_size=settings.mlm_batch_size,
            learning_rate=settings.mlm_learning_rate,
            weight_decay=0.01,
            warmup_steps=0.06,  # a fraction of all steps in transformers 5
            save_strategy="no",
            report_to="none",
            logging_steps=0.1,
            disable_tqdm=True,
            dataloader_pin_memory=torch.cuda.is_available(),
            seed=settings.seed,
            data_seed=settings.seed,
        )
        features = encode(tokenizer, train_texts, settings.max_length)
        collator = masker(tokenizer, settings.seed)
        Trainer(model, args, collator, features, processing_class=tokenizer).train()
    after = mlm_loss(model, tokenizer, eval_texts, **loss_kw)
    return {"before": round(before, 4), "after": round(after, 4), "eval_texts": len(eval_texts)}


def _build_into(folder: Path, texts: list[str], settings: BackboneSettings) -> dict:
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, settings.vocab_size, settings.max_length)
    unk = unk_rate(tokenizer, texts[:2000])
    tok_seconds = time.perf_counter() - started
    log.info("tokenizer: vocab %d, UNK rate %.2f%%, %.1f s", len(tokenizer), 100 * unk, tok_seconds)
    model = make_model(tokenizer, settings)
    log.info("model: BERT with %d encoder parameters", model.bert.num_parameters())
    started, loss = time.perf_counter(), None
    if settings.mlm_epochs > 0:
        loss = pretrain_mlm(model, tokenizer, texts, settings)
    mlm_seconds = time.perf_counter() - started
    if loss:
        before, after = loss["before"], loss["after"]
        log.info("MLM: held-out loss %.3f -> %.3f, %.1f s", before, after, mlm_seconds)
    tokenizer.save_pretrained(folder)
    model.to(device="cpu", dtype=torch.float32).save_pretrained(folder)
    return {
        "settings": asdict(settings),
        "texts": len(texts),
        "vocab_size": len(tokenizer),
        "unk_rate_train": round(unk, 5),  # on up to 2,000 training texts
        "parameters": model.bert.num_parameters(),  # the encoder a classifier reuses
        "seconds_tokenizer": round(tok_seconds, 2),
        "seconds_mlm": round(mlm_seconds, 2),
        "mlm_loss": loss,
    }
