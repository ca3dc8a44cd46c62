"""Shared fixtures: slices of the real nsmc4 reviews, a tiny offline backbone (files), a stub
backbone, tiny in-memory BERTs (``tiny_bert``) and a PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Before transformers/huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ROOT = Path(__file__).resolve().parents[1]
NSMC4 = Path(os.environ.get("FOCALTUNE_NSMC4", ROOT.parent / "shared" / "data" / "nsmc4"))


def read_nsmc(split: str = "train", n: int = 1000, offset: int = 0) -> pd.DataFrame:
    """Rows [offset, offset + n) of nsmc4's train or test file."""
    path = NSMC4 / f"{split}.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not found (set FOCALTUNE_NSMC4)")
    return pd.read_csv(path, skiprows=range(1, offset + 1), nrows=n)


@pytest.fixture(scope="session")
def nsmc_csv(tmp_path_factory: pytest.TempPathFactory):
    """Factory writing a slice of nsmc4 to a CSV file and returning its path."""
    folder = tmp_path_factory.mktemp("nsmc")

    def write(n: int = 1000, offset: int = 0, split: str = "train") -> Path:
        path = folder / f"{split}-{offset}-{n}.csv"
        if not path.exists():
            read_nsmc(split, n, offset).to_csv(path, index=False)
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # Keep the tokenisation cache and W&B out of the user's home during tests.
    monkeypatch.setenv("FOCALTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory, nsmc_csv) -> Path:
    """A 2-layer, 64-wide BERT with a tokenizer trained on 2,000 reviews (no MLM)."""
    from trainer.backbone import build_backbone

    out = tmp_path_factory.mktemp("backbone") / "tiny"
    build_backbone(
        nsmc_csv(2000), out, vocab_size=2000, layers=2, hidden=64, heads=2, max_length=64
    )
    return out


@pytest.fixture(scope="session")
def learning_backbone(tmp_path_factory: pytest.TempPathFactory, nsmc_csv) -> Path:
    """The standard recipe (corpus vectors) at test size, for tests whose point is learning:
    pieces and vectors from 30,000 reviews that no test labels or evaluates (offset 10,000)."""
    from trainer.backbone import PRESETS, build_backbone

    out = tmp_path_factory.mktemp("backbone") / "learning"
    texts = nsmc_csv(30_000, offset=10_000)
    return build_backbone(texts, out, PRESETS["standard"], vocab_size=16_000, max_length=64)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory):
    """A real PostgreSQL server on 127.0.0.1, started once for the test session."""
    from tools.postgres import LocalPostgres

    with LocalPostgres(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture
def postgres_url(postgres, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's server, one per test."""
    return postgres.create_database(f"t_{abs(hash(request.node.nodeid)) % 10**9}")


def stub_backbone(folder: Path) -> Path:
    """A real but untrained 1-layer BERT with a character vocabulary, saved to ``folder``.

    For tests whose trials never train (their logits are drawn) but whose study must pass
    `study create`'s checks: the backbone loads offline and fits ``max_length``.
    """
    from transformers import BertTokenizerFast

    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    make_tiny_bert(vocab_size=len(vocab), layers=1, masked_lm=True).save_pretrained(folder)
    return folder


def make_tiny_bert(
    num_labels: int = 4,
    *,
    seed: int = 0,
    vocab_size: int = 100,
    layers: int = 2,
    dropout: float = 0.1,
    masked_lm: bool = False,
) -> PreTrainedModel:
    """A random 32-wide BERT built in memory (seeded): a sequence classifier with
    ``num_labels`` outputs, or a masked LM. Token ids below ``vocab_size`` are valid."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return BertForMaskedLM(config) if masked_lm else BertForSequenceClassification(config)


@pytest.fixture
def tiny_bert() -> Callable[..., PreTrainedModel]:
    """``make_tiny_bert``: call it for as many tiny in-memory BERTs as a test needs."""
    return make_tiny_bert
