"""A real pretrained checkpoint by Hub name with no Hub: sentence-transformers/all-MiniLM-L6-v2
from a temporary Hugging Face cache (tests/hub.py). What a BERT pretrained for real brings
that our built backbones do not: a trained pooler, token_type_ids, a WordPiece vocabulary
that has never seen Korean; and what `study create` says when the cache is incomplete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import read_nsmc
from tests.hub import HUB_NAME, TOKENIZER, lay_hub_cache, offline_cli, package_files, use_hub_cache
from trainer.errors import BadInput
from trainer.loading import check_backbone, hub_cache_gaps, load_backbone
from trainer.tokens import encode_cached

KEY = "model.name_or_path"


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose cache holds the whole checkpoint."""
    return lay_hub_cache(tmp_path_factory.mktemp("hf-full"))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hub_home: Path) -> Path:
    use_hub_cache(monkeypatch, hub_home)
    return hub_home


def test_the_gaps_of_a_cache_name_what_a_load_would_miss(tmp_path, monkeypatch, hub_home):
    use_hub_cache(monkeypatch, hub_home)
    assert hub_cache_gaps(HUB_NAME) == []
    use_hub_cache(monkeypatch, lay_hub_cache(tmp_path / "config-only", ["config.json"]))
    gaps = hub_cache_gaps(HUB_NAME)
    assert len(gaps) == 2 and "model.safetensors" in gaps[0] and "tokenizer.json" in gaps[1]
    use_hub_cache(monkeypatch, tmp_path / "empty")
    assert [g.split()[0] for g in hub_cache_gaps(HUB_NAME)] == ["config.json", "the", "the"]


def test_check_backbone_passes_the_cached_checkpoint_and_knows_its_positions(offline):
    check_backbone(HUB_NAME, KEY, 512)
    with pytest.raises(BadInput, match="data.max_length 513 exceeds the 512 positions"):
        check_backbone(HUB_NAME, KEY, 513)


def test_an_unreachable_hub_without_the_offline_flag_is_checked_against_the_cache(
    tmp_path, monkeypatch
):
    from huggingface_hub import constants

    use_hub_cache(monkeypatch, lay_hub_cache(tmp_path, ["config.json", *TOKENIZER]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(BadInput) as caught:
        check_backbone(HUB_NAME, KEY, 64)
    line = str(caught.value)
    assert "the Hugging Face Hub is not reachable" in line and "model.safetensors" in line
    assert "tokenizer" not in line.split("without", 1)[1].split(";")[0]  # the tokenizer is there


def test_every_pretrained_weight_is_kept_the_pooler_too_and_only_the_head_is_new(offline):
    checkpoint = load_file(package_files() / "model.safetensors")
    _, first = load_backbone(HUB_NAME, 4, seed=0)
    _, second = load_backbone(HUB_NAME, 4, seed=1)
    state = first.state_dict()
    for name, tensor in checkpoint.items():
        if name != "embeddings.position_ids":  # a buffer transformers rebuilds, not a weight
            assert torch.equal(state[f"bert.{name}"], tensor), name
    pretrained = {f"bert.{name}" for name in checkpoint if name != "embeddings.position_ids"}
    assert set(state) - pretrained == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(first.classifier.weight, second.classifier.weight)  # seeded head
    assert first.config.hidden_size == 384 and first.config.num_hidden_layers == 6


def test_token_type_ids_reach_the_model_and_korean_is_read_in_pieces(offline, tmp_path):
    tokenizer, model = load_backbone(HUB_NAME, 4, seed=0)
    texts = read_nsmc("train", 200)["review"].astype(str).tolist()
    encoded = encode_cached(texts, None, tokenizer, 64, tmp_path)
    assert set(encoded.column_names) >= {"input_ids", "attention_mask", "token_type_ids"}
    ids = [i for row in encoded["input_ids"] for i in row[1:-1]]  # without [CLS] and [SEP]
    unknown = sum(i == tokenizer.unk_token_id for i in ids) / len(ids)
    # Uncased BERT normalises with NFD, which splits Hangul syllables into jamo, its vocabulary
    # has most jamo: measured on 1,000 test reviews, 3.1x the standard backbone's pieces, 6 % of
    # them [UNK] (a third of the Korean words, whole: one unknown jamo makes the word [UNK]).
    assert 0.01 < unknown < 0.15, unknown
    batch = tokenizer(texts[:8], padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (8, 4) and torch.isfinite(logits).all()


@pytest.mark.slow
@pytest.mark.process
def test_train_by_hub_name_offline(hub_home, nsmc_csv, tmp_path):
    config = {
        "study": {"name": "hub-train"},
        "data": {"train": str(nsmc_csv(300)), "max_length": 32},
        "model": {"name_or_path": HUB_NAME},
        "train": {"batch_size": 32},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    params = '{"learning_rate": 1e-4, "epochs": 1}'
    result = offline_cli(
        hub_home, "train", str(path), "--params", params, "--out", str(tmp_path / "run"),
        FOCALTUNE_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best accuracy" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["evaluations"]) == 1 and 0.0 <= metrics["best_accuracy"] <= 1.0
