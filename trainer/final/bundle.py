"""The model bundle on disk: member folders, ``ensemble.json`` with every file's sha256.

A bundle is written into a staging folder beside its destination and renamed into place at
the end, so nobody ever sees a half-made one. ``ensemble.json`` lists the sha256 of every
other file and carries a digest of its own content; loading verifies both, so a corrupted
or edited bundle is refused instead of silently predicting something else. Weights load
from safetensors only (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trainer.devices import Precision
from trainer.errors import BadInput
from trainer.files import staging_folder
from trainer.loading import quiet_loading

MANIFEST = "ensemble.json"
FORMAT = "focaltune-ensemble/1"
MEMBERS = "members"
MAX_MANIFEST_BYTES = 16 << 20
REQUIRED = ("members", "weights", "bias", "bias_applied", "label_names", "data", "files")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_member(model: Any, tokenizer: Any, folder: Path, label_names: list[str]) -> None:
    """Weights (model.safetensors), config with the label names, and the tokenizer."""
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {name: i for i, name in enumerate(label_names)}
    with quiet_loading():  # its "Writing model shards" bar too
        model.save_pretrained(folder)  # transformers 5 always writes safetensors
        tokenizer.save_pretrained(folder)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Add the sha256 of every file under ``root`` and a content digest; write ensemble.json."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format": FORMAT, **manifest}
    manifest["files"] = {p.relative_to(root).as_posix(): sha256_file(p) for p in files}
    manifest["sha256"] = _content_digest(manifest)
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def staging_dir(out: Path) -> Path:
    """A fresh folder beside ``out`` to build the bundle in; ``publish`` renames it."""
    return staging_folder(out)


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BadInput(
            f"--out {out} already exists and is not empty; choose a new folder or "
            "pass --overwrite to replace it"
        )


def publish(staging: Path, out: Path, overwrite: bool) -> Path:
    """Rename the finished staging folder to ``out`` (replacing an old bundle if allowed)."""
    check_destination(out, overwrite)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


@dataclass
class Bundle:
    """A verified bundle: where it is and what ``ensemble.json`` says."""

    root: Path
    manifest: dict[str, Any]

    @property
    def members(self) -> list[dict[str, Any]]:
        return self.manifest["members"]

    @property
    def weights(self) -> list[float]:
        return self.manifest["weights"]

    @property
    def bias(self) -> list[float] | None:
        return self.manifest["bias"] if self.manifest["bias_applied"] else None

    @property
    def label_names(self) -> list[str]:
        return self.manifest["label_names"]

    @property
    def precision(self) -> Precision:
        """The one inference precision ``final`` measured with (older bundles: fp32)."""
        return self.manifest.get("precision", "fp32")

    @property
    def text_column(self) -> str:
        return self.manifest["data"]["text_column"]

    @property
    def label_column(self) -> str:
        return self.manifest["data"]["label_column"]

    @property
    def id_column(self) -> str | None:
        return self.manifest["data"]["id_column"]

    @property
    def max_length(self) -> int:
        return self.manifest["data"]["max_length"]


def _bad(root: Path, what: str) -> BadInput:
    return BadInput(
        f"bundle {root}: {what}; re-run `focaltune final` or restore the bundle from a copy"
    )


def _read_manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise BadInput(f"bundle folder {root} not found; pass the --out folder of focaltune final")
    path = root / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise _bad(root, f"{MANIFEST} is over {MAX_MANIFEST_BYTES:,} bytes (not ours)")
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(root, f"{MANIFEST} is missing (not a focaltune bundle?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(root, f"{MANIFEST} is unreadable ({str(err).splitlines()[0][:200]})") from None
    except RecursionError:
        raise _bad(root, f"{MANIFEST} is nested too deeply to be a manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(root, f"{MANIFEST} is not a {FORMAT} manifest")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise _bad(root, f"{MANIFEST} lacks the keys {missing}")
    if manifest.get("sha256") != _content_digest(manifest):
        raise _bad(root, f"{MANIFEST} was modified after it was written (content digest differs)")
    _check_shape(root, manifest)
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    members, weights = manifest["members"], manifest["weights"]
    if not isinstance(manifest["files"], dict):
        return "files must map paths to sha256"
    if not isinstance(manifest["label_names"], list) or len(manifest["label_names"]) < 2:
        return "label_names must list the classes"
    if not isinstance(members, list) or not members:
        return "members must be a non-empty list"
    if not all(isinstance(m, dict) and isinstance(m.get("path"), str) for m in members):
        return "each member needs a path"
    if not isinstance(weights, list) or len(weights) != len(members):
        return "weights must be one number per member"
    if not all(isinstance(w, int | float) for w in weights):
        return "weights must be one number per member"
    # NaN fails the comparison too; predict skips zero weights, so one must be positive.
    if not all(0 <= w < float("inf") for w in weights) or sum(weights) <= 0:
        return "weights must be finite, non-negative and not all zero"
    if not isinstance(manifest["data"], dict):
        return "data must be a mapping"
    return None


def _check_shape(root: Path, manifest: dict[str, Any]) -> None:
    """The types ``predict`` relies on, so a hand-made manifest with a matching digest is
    refused here rather than failing deep inside with a traceback."""
    problem = _shape_problem(manifest)
    if problem:
        raise _bad(root, f"{MANIFEST}: {problem}")


def verify_bundle(root: str | Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's sha256 and that no file was added."""
    root = Path(root)
    manifest = _read_manifest(root)
    listed: dict[str, str] = manifest["files"]
    for name, expected in listed.items():
        path = root / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise _bad(root, f"{MANIFEST} lists a path outside the bundle ({name!r})")
        if not path.is_file():
            raise _bad(root, f"file {name} listed in {MANIFEST} is missing")
        if sha256_file(path) != expected:
            raise _bad(root, f"file {name} does not match its sha256 in {MANIFEST} (tampered?)")
    # A file slipped into a member folder could change what from_pretrained loads.
    for path in sorted((root / MEMBERS).rglob("*")):
        if path.is_file() and path.relative_to(root).as_posix() not in listed:
            raise _bad(root, f"unexpected file {path.relative_to(root)} not in {MANIFEST}")
    return manifest


def load_bundle(root: str | Path) -> Bundle:
    """A verified bundle (BadInput when missing, unreadable or tampered)."""
    return Bundle(Path(root), verify_bundle(root))


def load_member(bundle: Bundle, entry: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """One member's float32 model (safetensors only, no remote code) and its tokenizer."""
    folder = bundle.root / entry["path"]
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, use_safetensors=True, dtype=torch.float32, local_files_only=True
            )
    except (OSError, ValueError) as err:
        raise _bad(bundle.root, f"member {entry['path']} cannot be loaded ({err})") from None
    return model.to(device), tokenizer
