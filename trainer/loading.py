"""Backbones loaded once per process and handed out fresh for every run.

A worker runs many trials on the same backbone: reading weights and the tokenizer from
disk (or the Hub) for each would cost seconds per trial on a BERT-base. The first load
keeps the pretrained weights in memory; each run then builds the model from its config,
seeded, so its new classifier head is initialised exactly as ``from_pretrained`` would.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from transformers.utils import logging as hf_logging

from trainer.errors import BadInput, first_line


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' load report and its "Loading weights" / "Writing model shards" bars off
    for the block: a backbone never has a classifier head (and ours carry an MLM head), so
    every worker would print the same table of MISSING/UNEXPECTED keys, and `final` and
    `predict` bars per member; the product shows its own progress."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# Unbounded: a worker only ever loads its study's backbones (``space.backbones``), and a
# bound below their number would reload one from disk in nearly every trial.
@functools.cache
def _pretrained(name_or_path: str, num_labels: int) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, num_labels=num_labels, dtype=torch.float32, output_loading_info=True
            )
    except (OSError, ValueError) as err:
        raise BadInput(
            f"model.name_or_path {name_or_path!r} could not be loaded "
            f"({first_line(err, 120)}); give a local backbone folder "
            "(focaltune backbone build) or a Hub model name reachable from this machine"
        ) from None
    fresh = set(info["missing_keys"])  # the new head (and pooler, if never trained)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in fresh}
    return tokenizer, model.config, weights


def load_backbone(name_or_path: str, num_labels: int, seed: int = 0) -> tuple[Any, Any]:
    """Tokenizer and a float32 classifier: pretrained weights, a seeded fresh head."""
    tokenizer, config, weights = _pretrained(name_or_path, num_labels)
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    assert not unexpected, f"cached weights do not fit the model: {unexpected[:3]}"
    return tokenizer, model


# Position slots a model family reserves before the first token (RoBERTa-style models count
# positions from padding_idx + 1), so the longest input is max_position_embeddings minus this.
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def max_input_length(config: Any) -> int | None:
    """The most tokens ``config``'s absolute position embeddings hold; None when unbounded."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    return positions - POSITION_OFFSET.get(getattr(config, "model_type", ""), 0)


def check_backbone(name_or_path: str, key: str, max_length: int) -> None:
    """What every trial will need of a backbone, checked once without loading its weights.

    A local folder must exist and hold weights; config and tokenizer must load (from the
    folder, the Hub cache, or the Hub when it is reachable); the architecture must have a
    sequence-classification head; ``max_length`` must fit its position embeddings.
    """
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
    )

    path = Path(name_or_path).expanduser()
    local = path.is_dir()
    if not local and (path.is_absolute() or name_or_path.startswith((".", "~"))):
        raise BadInput(
            f"{key} {name_or_path!r}: no such folder; build one with `focaltune backbone build` "
            "or give a Hub model name"
        )
    if local and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise BadInput(
            f"{key} {name_or_path!r}: the folder has no weights ({', '.join(WEIGHT_FILES)}); "
            "give a backbone folder written by `focaltune backbone build` or save_pretrained"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(
            f"{key} {name_or_path!r} cannot be loaded ({first_line(err)}); give a local "
            "backbone folder (focaltune backbone build) or a Hub model name reachable from "
            "this machine (or already in its Hugging Face cache)"
        ) from None
    if config.model_type not in CLASSIFIERS:
        raise BadInput(
            f"{key} {name_or_path!r} is a {config.model_type!r} model, which has no "
            "sequence-classification head in transformers; choose an encoder such as BERT"
        )
    longest = max_input_length(config)
    if longest is not None and max_length > longest:
        raise BadInput(
            f"data.max_length {max_length} exceeds the {longest} positions of {key} "
            f"{name_or_path!r}; lower data.max_length to {longest} or less"
        )
