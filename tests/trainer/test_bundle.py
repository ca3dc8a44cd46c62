"""The bundle on disk: real safetensors members, sha256 manifest, tamper checks, publishing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainer.errors import BadInput
from trainer.final.bundle import (
    MANIFEST,
    check_destination,
    load_bundle,
    load_member,
    publish,
    save_member,
    staging_dir,
    verify_bundle,
    write_manifest,
)

LABELS = ["0", "1", "2", "3"]


def write_bundle(root: Path, backbone: Path, n_members: int = 2) -> torch.nn.Module:
    """A bundle of ``n_members`` copies of one freshly initialised tiny classifier."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=len(LABELS), dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    names = [f"member-{i + 1}" for i in range(n_members)]
    for name in names:
        save_member(model, tokenizer, root / "members" / name, LABELS)
    (root / "report.md").write_text("# report\n", encoding="utf-8")
    body = {
        "label_names": LABELS,
        "data": {
            "text_column": "review",
            "label_column": "label",
            "id_column": None,
            "max_length": 32,
        },
        "members": [{"name": n, "path": f"members/{n}"} for n in names],
        "weights": [1.0 / n_members] * n_members,
        "bias": None,
        "bias_applied": False,
    }
    write_manifest(root, body)
    return model


@pytest.fixture
def bundle_dir(tmp_path: Path, tiny_backbone: Path) -> Path:
    root = tmp_path / "bundle"
    write_bundle(root, tiny_backbone)
    return root


def test_manifest_lists_every_file_with_its_sha256(bundle_dir: Path) -> None:
    manifest = verify_bundle(bundle_dir)
    on_disk = {
        p.relative_to(bundle_dir).as_posix()
        for p in bundle_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST
    }
    assert set(manifest["files"]) == on_disk
    assert "members/member-1/model.safetensors" in on_disk
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest() == digest


def test_member_reloads_bit_identical_weights_and_label_names(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    model = write_bundle(tmp_path / "b", tiny_backbone, n_members=1)
    bundle = load_bundle(tmp_path / "b")
    loaded, tokenizer = load_member(bundle, bundle.members[0], torch.device("cpu"))
    saved = model.state_dict()
    assert set(loaded.state_dict()) == set(saved)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[key]), key
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert tokenizer("좋은 영화")["input_ids"][0] == tokenizer.cls_token_id
    assert bundle.max_length == 32 and bundle.text_column == "review" and bundle.bias is None


def test_one_flipped_byte_in_the_weights_is_refused(bundle_dir: Path) -> None:
    weights = bundle_dir / "members" / "member-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(BadInput, match=r"members/member-2/model\.safetensors does not match"):
        load_bundle(bundle_dir)


def test_an_edited_manifest_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["weights"] = [0.9, 0.1]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BadInput, match="modified after it was written"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("weights", [[0.0, 0.0], [-0.5, 1.5], [float("nan"), 1.0]], ids=str)
def test_weights_predict_cannot_serve_are_refused(bundle_dir: Path, weights: list) -> None:
    # Hand-made, with a matching digest: refused by the shape check, not deep in predict.
    manifest = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))
    body = {k: v for k, v in manifest.items() if k not in ("format", "files", "sha256")}
    write_manifest(bundle_dir, body | {"weights": weights})
    with pytest.raises(BadInput, match="weights must be finite, non-negative and not all zero"):
        load_bundle(bundle_dir)


def test_a_file_slipped_into_a_member_folder_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "members" / "member-1" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BadInput, match=r"unexpected file members/member-1/pytorch_model\.bin"):
        load_bundle(bundle_dir)


def test_a_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "members" / "member-1" / "tokenizer.json").unlink()
    with pytest.raises(
        BadInput, match=r"member-1/tokenizer\.json listed in ensemble\.json is miss"
    ):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "ensemble.json is missing"), ("{not json", "unreadable"), ("[]", "not a focaltune")],
)
def test_folders_that_are_not_bundles_are_refused(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / MANIFEST).write_text(content, encoding="utf-8")
    with pytest.raises(BadInput, match=message):
        load_bundle(tmp_path)
    with pytest.raises(BadInput, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_publish_refuses_a_non_empty_destination_unless_overwriting(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "final"
    check_destination(out, overwrite=False)  # not there yet: fine
    staging = staging_dir(out)
    assert staging.parent == out.parent and staging.name.startswith(".final.tmp-")
    (staging / "new.txt").write_text("new")
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(BadInput, match="already exists and is not empty"):
        publish(staging, out, overwrite=False)
    publish(staging, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["final"]  # no staging, no old copy
