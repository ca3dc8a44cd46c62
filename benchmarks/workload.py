"""The shared workload of every part: sizes, data slices, one offline backbone, a study config.

Every search peer reads the same two CSV slices, fine-tunes the same backbone and samples
from the same search space with the same focal loss, so their numbers differ only by how
the trials are chosen and run. Slices and backbone are built once into ``--work`` and reused (not
timed): building them is not what the benchmark compares.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
NSMC4 = ROOT.parent / "shared" / "data" / "nsmc4"
STUDY_NAME = "bench"
TRIALS = 10_000  # more than any search finishes: the wall-time budget ends each one


@dataclass(frozen=True)
class Sizes:
    """Everything that sizes the workload; each field is a command-line flag of bench.py."""

    train_rows: int = 2000
    eval_rows: int = 3000  # validation accuracy SE ~0.9 pt at 61 %: smaller sets rank luck
    test_rows: int = 5000  # of test.csv.gz, for each peer's best configuration retrained
    hidden: int = 128
    layers: int = 2
    vocab_size: int = 48_000  # the standard backbone's (README, Backbone recipe)
    max_length: int = 128
    epochs_max: int = 4
    batch_size: int = 32
    evals_per_epoch: int = 1  # the product's default, and the seed's: one per epoch
    lr_low: float = 1e-4
    lr_high: float = 1e-3
    workers: int = 2  # as `make search` runs the demo; threads are split between them
    threads: int = 2
    seed: int = 0
    backbone_texts: int = 0  # reviews of train.csv.gz the backbone is built from; 0 = all

    @property
    def heads(self) -> int:
        # BERT keeps 64 dimensions per head (768 / 12); tiny models get at least one head.
        return max(1, self.hidden // 64)


def write_slices(data_dir: Path, work: Path, sizes: Sizes, skip: int = 0) -> tuple[Path, Path]:
    """Train rows [s, s + n) and eval rows [s + n, s + n + m) of nsmc4's train file, as two
    CSVs, with s = ``skip``."""
    source = data_dir / "train.csv.gz"
    if not source.is_file():
        raise SystemExit(f"bench: {source} not found; pass --data with the nsmc4 folder")
    after = f"-after-{skip}" if skip else ""
    train = work / f"train-{sizes.train_rows}{after}.csv"
    evals = work / f"eval-{sizes.train_rows}-{sizes.eval_rows}{after}.csv"
    if not (train.exists() and evals.exists()):
        work.mkdir(parents=True, exist_ok=True)
        skipped = range(1, skip + 1)  # row 0 is the header
        rows = pd.read_csv(source, skiprows=skipped, nrows=sizes.train_rows + sizes.eval_rows)
        if len(rows) < sizes.train_rows + sizes.eval_rows:
            raise SystemExit(f"bench: {source} has only {len(rows)} rows")
        rows.iloc[: sizes.train_rows].to_csv(train, index=False)
        rows.iloc[sizes.train_rows :].to_csv(evals, index=False)
    return train, evals


def write_test_slice(data_dir: Path, work: Path, rows: int) -> Path:
    """The first ``rows`` reviews of nsmc4's test file (never used to choose anything)."""
    path = work / f"test-{rows}.csv"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        pd.read_csv(data_dir / "test.csv.gz", nrows=rows).to_csv(path, index=False)
    return path


def ensure_backbone(
    texts: Path, cache: Path, sizes: Sizes, *, embedding_init: str = "corpus"
) -> Path:
    """The standard recipe at ``sizes`` (corpus vectors, no MLM: a backbone that learns),
    built from ``texts`` once into ``cache``; at the default sizes it is `make backbone`'s."""
    from trainer.backbone import PRESETS, cached_backbone

    settings = replace(
        PRESETS["standard"],
        vocab_size=sizes.vocab_size,
        layers=sizes.layers,
        hidden=sizes.hidden,
        heads=sizes.heads,
        max_length=sizes.max_length,
        max_samples=sizes.backbone_texts or None,
        embedding_init=embedding_init,
    )
    return cached_backbone(texts, cache, settings)[0]


def study_config(
    sizes: Sizes, train_csv: Path, eval_csv: Path, backbone: Path, cache_dir: Path
) -> Any:
    """The StudyConfig both loops use: data, model, space; default pruner and sampler."""
    from search.config import parse_study_config

    raw = {
        "study": {"name": STUDY_NAME, "n_trials": TRIALS, "sampler": {"seed": sizes.seed}},
        "data": {
            "train": str(train_csv),
            "validation": str(eval_csv),
            "max_length": sizes.max_length,
            "cache_dir": str(cache_dir),
        },
        "model": {"name_or_path": str(backbone)},
        "train": {
            "batch_size": sizes.batch_size,
            "evals_per_epoch": sizes.evals_per_epoch,
            "seed": sizes.seed,
        },
        "space": {"learning_rate": [sizes.lr_low, sizes.lr_high], "epochs": [1, sizes.epochs_max]},
    }
    return parse_study_config(raw, "benchmark config")


def with_cache(base: Any, folder: Path) -> Any:
    """A copy of ``base`` tokenising into ``folder``: each search starts from a cold cache
    (and may change its copy)."""
    copy = base.model_copy(deep=True)
    copy.data.cache_dir = str(folder / "token-cache")
    return copy


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes) | {"heads": sizes.heads}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
