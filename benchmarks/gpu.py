"""Part 4 (``--gpu``): BERT-base-size training throughput in bf16 and model FLOPs utilisation.

A 12-layer, 768-wide BERT is built offline from the data (no Hub) and trained at sequence
length 128 through the product's Trainer path (``train_model``: bf16, TF32, fused AdamW,
pinned memory, as it sets them on CUDA) and through the bare loop under bf16 autocast.
Reviews are short (median 28 characters), so consecutive reviews are joined into texts
that fill the 128 tokens; every sample then costs a full-length sequence.

MFU = 6 x non-embedding parameters x tokens/s / peak bf16 FLOP/s (dense). The 6 counts the
forward (2) and backward (4) FLOPs per parameter per token; attention's own FLOPs
(about 2 % at length 128) are left out, so the figure is slightly low.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.bare_loop import PARAMS, bare_loop, trainer_path
from benchmarks.workload import Sizes, ensure_backbone
from trainer.config import DataConfig, ModelConfig, TrainConfig, TrainSettings
from trainer.data import load_splits
from trainer.loading import load_backbone
from trainer.tokens import encode_cached

SEQUENCE = 128
# Dense bf16 peak (no sparsity), TFLOP/s, by (model, variant) as the words of
# torch.cuda.get_device_name() spell them ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB").
# Whole words only: "L4" must not match an L40, nor "H100" an H100 NVL.
PEAK_BF16_TFLOPS = {
    ("H100", None): 989.0,
    ("H100", "PCIE"): 756.0,
    ("H100", "NVL"): 835.0,
    ("H200", None): 989.0,
    ("H200", "NVL"): 835.0,
    ("GH200", None): 989.0,
    ("A100", None): 312.0,
    ("L40S", None): 362.0,
    ("L40", None): 181.0,
    ("L4", None): 121.0,
    ("A10", None): 125.0,
}
VARIANTS = ("PCIE", "NVL")


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    words = [w.upper() for w in re.split(r"[\s\-_]+", name) if w]
    variant = next((w for w in words if w in VARIANTS), None)
    for word in words:
        if (word, variant) in PEAK_BF16_TFLOPS:
            return PEAK_BF16_TFLOPS[(word, variant)]
    raise SystemExit(f"bench: unknown peak bf16 FLOP/s of {name!r}; pass --peak-tflops")


def packed_slice(data_dir: Path, work: Path, rows: int, min_chars: int = 320) -> Path:
    """``rows`` texts, each consecutive reviews joined until ``min_chars`` (> 128 tokens)."""
    out = work / f"packed-{rows}-{min_chars}.csv"
    if out.exists():
        return out
    reviews = pd.read_csv(data_dir / "train.csv.gz", nrows=rows * 20)
    texts, labels, current = [], [], []
    for review, label in zip(reviews["review"].astype(str), reviews["label"], strict=True):
        current.append(review)
        if sum(map(len, current)) >= min_chars:
            texts.append(" ".join(current))
            labels.append(int(label))  # the last review's label: only throughput matters
            current = []
        if len(texts) == rows:
            break
    work.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"review": texts, "label": labels}).to_csv(out, index=False)
    return out


def gpu_config(backbone: Path, train: Path, evals: Path, cache: Path, batch: int) -> TrainConfig:
    data = DataConfig(
        train=str(train), validation=str(evals), max_length=SEQUENCE, cache_dir=str(cache)
    )
    settings = TrainSettings(batch_size=batch, evals_per_epoch=1, precision="auto")
    # Two epochs, so the Trainer's set-up (inside its timed span) weighs little.
    params = PARAMS.model_copy(update={"epochs": 2})
    return TrainConfig(
        data=data, model=ModelConfig(name_or_path=str(backbone)), train=settings, params=params
    )


def model_size(cfg: TrainConfig, num_labels: int) -> dict[str, int]:
    _, model = load_backbone(cfg.model.name_or_path, num_labels)
    total = model.num_parameters()
    embeddings = sum(p.numel() for p in model.base_model.embeddings.parameters())  # any family
    return {"parameters": total, "non_embedding_parameters": total - embeddings}


def prepare(data_dir: Path, work: Path, rows: int, batch: int) -> tuple[TrainConfig, Any]:
    """Packed texts, the BERT-base-size backbone (built once) and the run's config."""
    train = packed_slice(data_dir, work, rows)
    sizes = Sizes(hidden=768, layers=12, vocab_size=30000, max_length=SEQUENCE)
    # Throughput only: random embeddings, no corpus vectors to compute at rank 768.
    backbone = ensure_backbone(train, work / "backbones", sizes, embedding_init="random")
    evals = packed_slice(data_dir, work / "eval", 512)
    cfg = gpu_config(backbone, train, evals, work / "cache", batch)
    return cfg, load_splits(cfg.data)


def tokens_per_sample(cfg: TrainConfig, splits: Any) -> float:
    tokenizer, _ = load_backbone(cfg.model.name_or_path, splits.num_labels)
    encoded = encode_cached(
        splits.train_texts, splits.train_labels, tokenizer, SEQUENCE, cfg.data.cache_dir
    )
    return sum(encoded["length"]) / len(encoded)


def run_gpu(
    data_dir: Path, work: Path, *, rows: int, batch: int, peak: float | None
) -> dict[str, Any]:
    """Samples/s, tokens/s and MFU of both paths on the first CUDA device (best of 2)."""
    if not torch.cuda.is_available():
        raise SystemExit("bench: --gpu needs a CUDA device")
    cfg, splits = prepare(data_dir, work, rows, batch)
    per_sample = tokens_per_sample(cfg, splits)
    # The first run of each pays CUDA and kernel start-up: keep the better of two.
    bare = max(bare_loop(cfg, splits, bf16=True)["samples_per_second"] for _ in range(2))
    hf = max(trainer_path(cfg, splits)["samples_per_second"] for _ in range(2))
    name = torch.cuda.get_device_name(0)
    flops = peak_tflops(name, peak) * 1e12
    size = model_size(cfg, splits.num_labels)

    def mfu(samples_per_second: float, params: int) -> float:
        return round(6 * params * samples_per_second * per_sample / flops, 4)

    return {
        "device": name,
        "peak_bf16_tflops": flops / 1e12,
        "rows": len(splits.train_texts),
        "batch_size": batch,
        "tokens_per_sample": round(per_sample, 1),
        **size,
        "bare_samples_per_second": round(bare, 1),
        "trainer_samples_per_second": round(hf, 1),
        "trainer_tokens_per_second": round(hf * per_sample),
        # Embedding look-ups are gathers, not matmuls: 6N counts non-embedding parameters
        # (N of Kaplan et al.); with them, BERT-base's MFU would read ~27 % too high.
        "trainer_mfu": mfu(hf, size["non_embedding_parameters"]),
        "bare_mfu": mfu(bare, size["non_embedding_parameters"]),
    }
