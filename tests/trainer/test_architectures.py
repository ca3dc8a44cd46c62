"""A non-BERT backbone end to end: a tiny RoBERTa built from nsmc4 reviews (`--arch roberta`),
fine-tuned, averaged with SWA as `final` does, bundled, loaded back and served by predict."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from search.cli import main
from tests.trainer.runs import small_config
from tests.trainer.test_backbone import TINY
from trainer.backbone import BackboneSettings, build_backbone
from trainer.backbone.cache import RECIPE, cache_key
from trainer.config import Hyperparams
from trainer.errors import BadInput
from trainer.final.bundle import load_bundle, load_member, save_member, write_manifest
from trainer.final.members import EpochSnapshots
from trainer.final.predict import predict_file
from trainer.swa import LastK, snapshot
from trainer.train import train_model

# 2 layers x 32: big enough to have every part, small enough to train in seconds.
ROBERTA = {**TINY, "arch": "roberta", "vocab_size": 500, "layers": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: tests/trainer/conftest.py


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory, nsmc_csv) -> Path:
    """Corpus vectors and an MLM epoch too: both reach into the model, per family."""
    out = tmp_path_factory.mktemp("roberta") / "backbone"
    settings = {**ROBERTA, "embedding_init": "corpus", "mlm_epochs": 1, "mlm_batch_size": 32}
    return build_backbone(nsmc_csv(300), out, **settings)


def test_a_roberta_backbone_has_no_bert_parts(roberta: Path) -> None:
    config = json.loads((roberta / "config.json").read_text())
    assert config["model_type"] == "roberta" and config["type_vocab_size"] == 1
    # RoBERTa numbers positions from pad_token_id + 1: 512 inputs need 2 more slots.
    assert config["max_position_embeddings"] == 514
    tokenizer = AutoTokenizer.from_pretrained(roberta)
    assert config["pad_token_id"] == tokenizer.pad_token_id
    assert config["bos_token_id"] == tokenizer.cls_token_id
    assert "token_type_ids" not in tokenizer.model_input_names
    pair = tokenizer("재밌다", "별로다")
    assert "token_type_ids" not in pair
    tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 3  # RoBERTa's A </s></s> B
    keys = load_file(roberta / "model.safetensors").keys()
    assert all(k.startswith(("roberta.", "lm_head.")) for k in keys)
    report = json.loads((roberta / "backbone.json").read_text())
    assert report["settings"]["arch"] == "roberta" and report["seconds_vectors"] > 0
    assert report["mlm"]["steps_done"] == report["mlm"]["steps_planned"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(roberta, num_labels=4)
    assert type(model).__name__ == "RobertaForSequenceClassification"
    head = {name for name, _ in model.classifier.named_parameters()}
    assert head == {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}
    assert getattr(model.roberta, "pooler", None) is None


def test_corpus_vectors_reach_the_roberta_word_embeddings(nsmc_csv, tmp_path: Path) -> None:
    train, small = nsmc_csv(300), {**ROBERTA, "layers": 1}
    random = build_backbone(train, tmp_path / "random", **small)
    corpus = build_backbone(train, tmp_path / "corpus", **small, embedding_init="corpus")
    key = "roberta.embeddings.word_embeddings.weight"
    before, after = load_file(random / "model.safetensors"), load_file(corpus / "model.safetensors")
    # The same seed: only the word embeddings may differ, and they must.
    assert not torch.equal(before[key], after[key])
    assert all(torch.equal(before[k], after[k]) for k in before if k != key)


def test_roberta_trains_averages_bundles_and_predicts(
    roberta: Path, nsmc_csv, tmp_path: Path
) -> None:
    cfg = small_config(roberta, nsmc_csv, tmp_path)
    cfg = cfg.model_copy(update={"params": Hyperparams(learning_rate=2e-3, epochs=2)})
    last_k = LastK(2)
    result = train_model(cfg, callbacks=[EpochSnapshots(last_k)])
    assert last_k.epochs == [1.0, 2.0]
    last, averaged = last_k.states[-1], last_k.average()
    moved = [
        k for k, v in averaged.items() if v.is_floating_point() and not torch.equal(v, last[k])
    ]
    assert "roberta.embeddings.word_embeddings.weight" in moved
    assert "classifier.out_proj.weight" in moved

    model, tokenizer = result.model, AutoTokenizer.from_pretrained(roberta)
    model.load_state_dict(averaged, strict=True)
    bundle_dir = tmp_path / "bundle"
    save_member(model, tokenizer, bundle_dir / "members" / "member-1", result.label_names)
    write_manifest(bundle_dir, _manifest(result.label_names))

    bundle = load_bundle(bundle_dir)
    loaded, loaded_tokenizer = load_member(bundle, bundle.members[0], torch.device("cpu"))
    assert type(loaded).__name__ == "RobertaForSequenceClassification"
    assert "token_type_ids" not in loaded_tokenizer("다시 보고 싶다")
    state = snapshot(loaded)
    assert all(torch.equal(state[k], averaged[k].cpu()) for k in averaged)
    rows = nsmc_csv(50, split="test")
    out = predict_file(bundle_dir, rows, tmp_path / "predictions.csv", device="cpu", progress=False)
    written = pd.read_csv(tmp_path / "predictions.csv")
    assert len(out) == len(written) == 50
    probs = written[[f"prob_{name}" for name in result.label_names]].to_numpy()
    assert probs.min() >= 0 and abs(probs.sum(axis=1) - 1).max() < 1e-6


def _manifest(label_names: list[str]) -> dict:
    """What `final` writes into ensemble.json, for one member (tests/trainer/test_bundle.py)."""
    return {
        "label_names": label_names,
        "data": {
            "text_column": "review",
            "label_column": "label",
            "id_column": None,
            "max_length": 32,
        },
        "members": [{"name": "member-1", "path": "members/member-1"}],
        "weights": [1.0],
        "bias": None,
        "bias_applied": False,
    }


def test_an_unknown_arch_is_one_line_naming_the_choices(
    nsmc_csv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["backbone", "build", "--train", str(nsmc_csv(50)), "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--arch", "gpt2"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1
    assert "--arch" in err and "'gpt2'" in err and "bert" in err and "roberta" in err
    with pytest.raises(BadInput, match=r"arch='gpt2' must be one of bert, roberta"):
        build_backbone(nsmc_csv(50), out, **{**TINY, "arch": "gpt2"})
    assert not out.exists()


def test_bert_cache_keys_are_those_from_before_arch(nsmc_csv) -> None:
    # A key computed as before --arch existed (settings without the field): existing caches
    # of BERT backbones must still be found; a RoBERTa build must get another key.
    train, settings = nsmc_csv(50), BackboneSettings(**TINY)
    fields = {k: v for k, v in asdict(settings.resolved()).items() if k != "arch"}
    digest = hashlib.sha256(f"recipe {RECIPE}\n".encode())
    digest.update(json.dumps(fields, sort_keys=True).encode())
    digest.update(train.read_bytes())
    assert cache_key(train, settings) == digest.hexdigest()[:16]
    other = cache_key(train, BackboneSettings(**TINY, arch="roberta"))
    assert other != cache_key(train, settings)
