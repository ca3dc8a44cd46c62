"""An interrupted backbone build, on disk: ``.<out name>.checkpoint/`` beside ``--out``.

It holds what a resumed build needs to go on as the uninterrupted one would: the
tokenizer, the settings and a fingerprint of the texts (``build.json``, written once), and
the MLM training state (``state.pt``: weights, optimizer, schedule, step, the masking and
dropout generators, the loss curve), replaced every few minutes. The folder appears whole
(built in a staging folder, then renamed) and ``state.pt`` is replaced atomically, so a
kill at any moment leaves the previous checkpoint intact. A finished build removes it.

``MlmState`` is the numbers part of that state; ``snapshot`` and ``restore`` add and set
the tensors (model, optimizer, generators) around it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling, PreTrainedModel, PreTrainedTokenizerFast

from trainer.backbone.settings import BackboneSettings
from trainer.errors import BadInput
from trainer.files import atomic_file, staged_folder

log = logging.getLogger(__name__)

CHECKPOINT_MINUTES = 5.0  # default interval: at most this much work lost to a kill
RECORD, STATE = "build.json", "state.pt"
CURVE_POINTS = 200  # about this many points on the loss curve, each the mean of its interval
CURVE = ("steps", "loss", "learning_rate", "elapsed_seconds")  # a point's values, in order


@dataclass
class MlmState:
    """Where pretraining stands: numbers and lists only, saved in every checkpoint."""

    planned: int  # steps the epochs ask for
    total: int  # steps scheduled: ``planned``, or fewer once re-planned for the time budget
    warmup: int  # steps of linear warmup
    before: float  # held-out loss before pretraining
    step: int = 0
    seconds: float = 0.0  # training time so far, over every run of an interrupted build
    replanned: bool = False
    resumed_from: int | None = None
    learning_rate: float = 0.0  # of the last step
    interval_loss: float = 0.0  # sum over the batches of the curve's open interval
    interval_batches: int = 0
    curve: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CURVE})

    def record(self, loss: float | None, learning_rate: float, seconds: float) -> None:
        """A step done (``loss`` None: it masked nothing); a curve point once the interval
        of ``total / CURVE_POINTS`` steps is full."""
        self.step, self.seconds, self.learning_rate = self.step + 1, seconds, learning_rate
        if loss is not None:
            self.interval_loss += loss
            self.interval_batches += 1
        since = self.step - (self.curve["steps"] or [0])[-1]
        if since >= max(1, self.total // CURVE_POINTS):
            self.close_interval()

    def close_interval(self) -> None:
        """The interval so far becomes a curve point (when any of its batches had a loss)."""
        if self.interval_batches:
            loss, seconds = round(self.recent_loss(), 4), round(self.seconds, 2)
            point = (self.step, loss, self.learning_rate, seconds)
            for key, value in zip(CURVE, point, strict=True):
                self.curve[key].append(value)
            self.interval_loss, self.interval_batches = 0.0, 0

    def recent_loss(self) -> float:
        """The mean loss of the open interval, else the last point's (nan before any)."""
        if self.interval_batches:
            return self.interval_loss / self.interval_batches
        return self.curve["loss"][-1] if self.curve["loss"] else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "steps_planned": self.planned,
            "steps_scheduled": self.total,
            "steps_done": self.step,
            "stopped_by": "time budget" if self.step < self.planned else "plan",
            "resumed_from_step": self.resumed_from,
            "training_seconds": round(self.seconds, 1),  # over every run
        }


def snapshot(
    state: MlmState,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    collator: DataCollatorForLanguageModeling,
) -> dict[str, Any]:
    """Everything the next step depends on; dropout draws from torch's global generator."""
    return {
        "state": asdict(state),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "masking": collator.generator.get_state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore(
    saved: dict[str, Any],
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    collator: DataCollatorForLanguageModeling,
) -> MlmState:
    """The inverse of ``snapshot``: model, optimizer and generators as they were."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    # The collator makes its seeded generator on first use; make it now and set its state.
    collator.create_rng("pt")
    collator.generator.set_state(saved["masking"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    state = MlmState(**saved["state"])
    state.resumed_from = state.step
    log.info("MLM resumes at step %d/%d (loss %.2f)", state.step, state.total, state.recent_loss())
    return state


def checkpoint_folder(out: Path) -> Path:
    """Hidden, beside ``out``: the same file system, and not mistaken for a backbone."""
    return out.parent / f".{out.name}.checkpoint"


def fingerprint(train: Path, texts: list[str]) -> dict[str, Any]:
    """What identifies the texts a build learns from (after sampling), for the resume check."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode() + b"\0")
    return {"train": str(train), "texts": len(texts), "sha256": digest.hexdigest()}


def check_resumable(out: Path, resume: bool) -> None:
    """Refuse ``--resume`` without a checkpoint, and a fresh build over one."""
    folder = checkpoint_folder(out)
    if resume and not (folder / STATE).is_file():
        raise BadInput(
            f"--resume: no interrupted build of {out} to resume ({folder} not found); "
            "run without --resume to build it from the start"
        )
    if not resume and folder.exists():
        raise BadInput(
            f"a build of {out} was interrupted (or is still running): its checkpoint is "
            f"{folder}; pass --resume to continue it, or remove {folder} to start over"
        )


def check_same_build(out: Path, record: dict[str, Any]) -> None:
    """Refuse to resume with other settings or texts than the checkpoint's, naming them."""
    folder = checkpoint_folder(out)
    saved = json.loads((folder / RECORD).read_text())
    # A checkpoint older than a setting (e.g. --arch) was made with that setting's default.
    then, now = asdict(BackboneSettings()) | saved["settings"], record["settings"]
    changed = [f"{k}={then.get(k)} (now {v})" for k, v in now.items() if then.get(k) != v]
    if saved["data"]["sha256"] != record["data"]["sha256"]:
        old, new = saved["data"], record["data"]
        changed.append(
            f"the texts: {old['texts']} from {old['train']} (now {new['texts']} from "
            f"{new['train']}, different)"
        )
    if changed:
        raise BadInput(
            f"--resume: the checkpoint {folder} was made with other "
            + "; ".join(changed)
            + "; pass what it was made with, or remove it to start over"
        )


def load_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer as it was trained: MLM's encoding switched its truncation on
    (saved with it), which would cut the texts ``unk_rate`` counts."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint_folder(out))
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer


class Checkpoint:
    """Saves the training state of ``out``'s build every ``every`` seconds of training;
    ``record`` (settings and data fingerprint) goes with it, for the resume check."""

    def __init__(self, out: Path, every: float, record: dict[str, Any]) -> None:
        self.folder, self.every, self.record = checkpoint_folder(out), every, record
        self.saved_at = time.perf_counter()

    def exists(self) -> bool:
        return (self.folder / STATE).is_file()

    def due(self) -> bool:
        return time.perf_counter() - self.saved_at >= self.every

    def save(self, state: dict[str, Any], tokenizer: PreTrainedTokenizerFast) -> None:
        """``state``: tensors, numbers, lists, dicts (what ``torch.load`` reads safely)."""
        if self.folder.exists():
            with atomic_file(self.folder / STATE) as tmp:
                torch.save(state, tmp)
        else:  # the first: tokenizer, record and state appear together
            with staged_folder(self.folder) as staging:
                tokenizer.save_pretrained(staging)
                (staging / RECORD).write_text(json.dumps(self.record, indent=2) + "\n")
                torch.save(state, staging / STATE)
        self.saved_at = time.perf_counter()

    def load(self) -> dict[str, Any]:
        self._remove_leftovers()
        # weights_only: a checkpoint is data; unpickling arbitrary objects could run code.
        return torch.load(self.folder / STATE, map_location="cpu", weights_only=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Temp files of a write that a kill cut short (atomic_file names them .*.tmp)."""
        for tmp in self.folder.glob(f".{STATE}.*.tmp"):
            tmp.unlink(missing_ok=True)
