"""Backbones are read from disk once per process; every run still gets a fresh model."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from trainer.errors import BadInput
from trainer.loading import _pretrained, load_backbone


def test_fresh_model_per_run_with_pretrained_encoder(tiny_backbone) -> None:
    _, first = load_backbone(str(tiny_backbone), 4, seed=1)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)  # a trial trains its model; the next one must not see that
    _, second = load_backbone(str(tiny_backbone), 4, seed=1)
    reference = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=4, dtype=torch.float32
    )
    want = reference.state_dict()
    for name, got in second.state_dict().items():
        if not name.startswith(("classifier", "bert.pooler")):
            assert torch.equal(got, want[name]), name
    assert _pretrained.cache_info().hits >= 1  # the second run did not read the disk


def test_head_is_seeded(tiny_backbone) -> None:
    _, a = load_backbone(str(tiny_backbone), 4, seed=3)
    _, b = load_backbone(str(tiny_backbone), 4, seed=3)
    _, c = load_backbone(str(tiny_backbone), 4, seed=4)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_missing_backbone_is_bad_input(tmp_path) -> None:
    with pytest.raises(BadInput, match="model.name_or_path"):
        load_backbone(str(tmp_path / "nothing-here"), 4)
