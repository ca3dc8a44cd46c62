"""Batched inference: one model's class probabilities, the ensemble's, and a predictions file.

``predict_probs`` is the single inference path: ``final`` evaluates members with it and
``predict`` serves the bundle with it, so a reloaded bundle reproduces the probabilities
measured at training time exactly (same tokenisation, batching and dtype).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from transformers import DataCollatorWithPadding

from trainer.data import INT_LIKE
from trainer.devices import Precision, inference_precision
from trainer.errors import BadInput
from trainer.files import atomic_file
from trainer.final.bundle import Bundle, load_bundle, load_member
from trainer.final.ensemble import combine
from trainer.progress import progress_bar  # also final's: trainer/final/run.py imports it here
from trainer.tables import read_table

WRITERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device on this machine; use --device cpu or auto")
    return torch.device(name)


def predict_probs(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int | None = None,
    precision: Precision = "fp32",
    progress: Progress | None = None,
    description: str = "predict",
) -> np.ndarray:
    """Softmax probabilities (float64, shape (len(texts), num_labels)) in input order.

    ``batch_size`` None: 64 on a CPU, 256 on a GPU. ``precision`` is the bundle's one
    inference precision (``devices.inference_precision``).
    """
    model.eval()  # dropout off; a model straight out of the Trainer is still in train mode
    device = next(model.parameters()).device
    batch_size = batch_size or (256 if device.type == "cuda" else 64)
    # Tokenised in one call up front (the fast tokenizer works in parallel), so the GPU does
    # not wait on Python between batches; each batch then only pads.
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    pad = DataCollatorWithPadding(tokenizer)  # the tokenizer's own padding, as in training
    # Texts of similar length share a batch, so little compute goes to padding.
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    out = np.empty((len(texts), model.config.num_labels), dtype=np.float64)
    task = None if progress is None else progress.add_task(description, total=len(texts))
    with torch.inference_mode(), inference_precision(precision, device):
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            rows = [{key: encoded[key][i] for key in encoded} for i in index]
            batch = {k: v.to(device) for k, v in pad(rows).items()}
            # Softmax in float64, so each row sums to 1 to ~1e-16 in the written file.
            logits = model(**batch).logits.double()
            out[index] = torch.softmax(logits, dim=-1).cpu().numpy()
            if task is not None:
                progress.advance(task, len(index))
    return out


def bundle_probs(
    bundle: Bundle,
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Ensemble probabilities of ``texts``; one member in memory at a time."""
    device = device or pick_device()
    # A member with weight 0 (all but one when the bundle serves the best member alone)
    # adds nothing to the mean: not loading or running it saves a whole forward pass.
    used = [i for i, weight in enumerate(bundle.weights) if weight > 0]
    member_probs = []
    for i in used:
        model, tokenizer = load_member(bundle, bundle.members[i], device)
        description = f"member {i + 1}/{len(bundle.members)}"
        member_probs.append(
            predict_probs(
                model,
                tokenizer,
                texts,
                max_length=bundle.max_length,
                batch_size=batch_size,
                precision=bundle.precision,
                progress=progress,
                description=description,
            )
        )
        del model
        gc.collect()
    return combine(member_probs, [bundle.weights[i] for i in used], bundle.bias)


def input_texts(frame: pd.DataFrame, column: str, source: str) -> list[str]:
    if column not in frame.columns:
        raise BadInput(
            f"text column {column!r} (the bundle's data.text_column) not found in {source}; "
            f"its columns are {[str(c) for c in frame.columns]}; rename the text column to "
            f"{column!r}"
        )
    values = frame[column]
    empty = values.isna().to_numpy() | values.astype(str).str.strip().eq("").to_numpy()
    if empty.any():
        rows = ", ".join(str(r + 1) for r in np.flatnonzero(empty)[:3])
        raise BadInput(
            f"empty text at row(s) {rows} of {source} (column {column!r}); "
            "fill in or remove those rows"
        )
    return [str(value) for value in values]


def check_label_set(frame: pd.DataFrame, bundle: Bundle, source: str) -> None:
    """An input label column must use the bundle's labels (names, or ids 0..K-1)."""
    column = bundle.label_column
    if column not in frame.columns:
        return
    known = set(bundle.label_names)
    for row, value in enumerate(frame[column]):
        if pd.isna(value):
            continue
        text = str(value).strip()
        if text.endswith(".0") and INT_LIKE.match(text[:-2]):
            text = text[:-2]
        is_id = INT_LIKE.match(text) and 0 <= int(text) < len(bundle.label_names)
        if text not in known and not is_id:
            raise BadInput(
                f"label {text!r} at row {row + 1} of {source} (column {column!r}) is not one "
                f"of the bundle's labels {bundle.label_names}: the bundle was trained on a "
                "different label set; use a bundle trained on these labels"
            )


def output_frame(frame: pd.DataFrame, probs: np.ndarray, bundle: Bundle) -> pd.DataFrame:
    """id column (if any), predicted label id and name, one ``prob_<name>`` column per class."""
    out = pd.DataFrame(index=range(len(frame)))
    for id_column in (bundle.id_column, "id"):
        if id_column and id_column in frame.columns:
            out[id_column] = frame[id_column].to_numpy()
            break
    labels = probs.argmax(axis=1)
    out["label"] = labels
    out["label_name"] = [bundle.label_names[i] for i in labels]
    for k, name in enumerate(bundle.label_names):
        out[f"prob_{name}"] = probs[:, k]
    return out


def output_kind(path: Path) -> tuple[str, bool]:
    """The output format from the file name, and whether it is gzipped."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    kind = WRITERS.get(Path(name.removesuffix(".gz")).suffix)
    if kind is None or (gz and kind == "parquet"):
        raise BadInput(
            f"--output {path}: unsupported suffix; use .csv, .tsv, .jsonl (each optionally .gz) "
            "or .parquet"
        )
    return kind, gz


def write_frame_atomic(frame: pd.DataFrame, path: Path) -> Path:
    """Write csv/tsv/jsonl/parquet (.gz for text formats) to a temp file, then rename."""
    kind, gz = output_kind(path)
    compression = "gzip" if gz else None
    with atomic_file(path) as tmp:
        if kind == "parquet":
            frame.to_parquet(tmp, index=False)
        elif kind == "jsonl":
            frame.to_json(
                tmp,
                orient="records",
                lines=True,
                force_ascii=False,
                double_precision=15,
                compression=compression,
            )  # double_precision: pandas' default keeps only 10 digits
        else:
            sep = "," if kind == "csv" else "\t"
            frame.to_csv(tmp, sep=sep, index=False, compression=compression)
    return path


def predict_file(
    bundle_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Predict every row of ``input_path`` with the bundle; write and return the predictions."""
    if batch_size is not None and batch_size < 1:
        raise BadInput(f"--batch-size {batch_size} must be at least 1")
    output_kind(Path(output_path))  # a bad name fails now, not after the predictions
    bundle = load_bundle(bundle_dir)
    torch_device = pick_device(device)
    frame = read_table(input_path, what="--input")
    texts = input_texts(frame, bundle.text_column, str(input_path))
    check_label_set(frame, bundle, str(input_path))
    with progress_bar(progress) as bar:
        probs = bundle_probs(
            bundle, texts, batch_size=batch_size, device=torch_device, progress=bar
        )
    out = output_frame(frame, probs, bundle)
    write_frame_atomic(out, Path(output_path))
    return out
