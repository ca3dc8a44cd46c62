"""Backbones loaded once per process and handed out fresh for every run.

A worker runs many trials on the same backbone: reading weights and the tokenizer from
disk (or the Hub) for each would cost seconds per trial on a BERT-base. The first load
keeps the pretrained weights in memory; each run then builds the model from its config,
seeded, so its new classifier head is initialised exactly as ``from_pretrained`` would.
"""

from __future__ import annotations

import functools
import json
import os
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
        # A worker on a machine without the Hub (or its copy of the cache): say what is missing.
        if is_hub_name(name_or_path) and cache_cannot_serve(name_or_path):
            raise not_in_hub_cache(name_or_path, "model.name_or_path") from None
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

    A local folder must exist and hold weights; a Hub name must be complete in the Hugging
    Face cache when the Hub cannot be asked; config and tokenizer must load (from the
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
    if is_hub_name(name_or_path):
        check_hub_cache(name_or_path, key)
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


# What loading a Hub model reads besides config.json: its weights (one of WEIGHT_FILES) and
# its tokenizer, a fast tokenizer.json or the vocabulary file of a slow tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
HUB_TIMEOUT = 10  # seconds to wait for the Hub before calling it unreachable


def is_hub_name(name: str) -> bool:
    """``name`` is no local folder and has the form of a Hub repository id (org/name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(name).expanduser().is_dir():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _cached(name: str, filename: str) -> str | None:
    """The cached file of Hub model ``name`` at revision main, if the cache holds it."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, filename)
    return found if isinstance(found, str) else None  # (the "known absent" marker is no file)


def _weights_cached(name: str) -> bool:
    for filename in WEIGHT_FILES:
        found = _cached(name, filename)
        if found and filename.endswith(".index.json"):  # sharded: every shard must be there
            shards = set(json.loads(Path(found).read_text(encoding="utf-8"))["weight_map"].values())
            return all(_cached(name, shard) for shard in shards)
        if found:
            return True
    return False


def hub_cache_gaps(name: str) -> list[str]:
    """What the local Hugging Face cache lacks to load Hub model ``name`` offline ([]: nothing)."""
    gaps = [] if _cached(name, "config.json") else ["config.json"]
    if not _weights_cached(name):
        gaps.append(f"the weights ({' or '.join(WEIGHT_FILES)})")
    if not any(_cached(name, filename) for filename in TOKENIZER_FILES):
        gaps.append(f"the tokenizer ({' or '.join(TOKENIZER_FILES[:2])})")
    return gaps


def hub_reachable(name: str) -> bool:
    """Whether the Hub answers about ``name`` within HUB_TIMEOUT seconds."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().model_info(name, timeout=HUB_TIMEOUT)
    except HfHubHTTPError:
        return True  # it answered (gated, unknown, rate-limited): the load will say what
    except Exception:  # refused, DNS, proxy, timeout: whatever the transport, no Hub
        return False
    return True


def _cache_folder() -> tuple[Path, str]:
    """The hub cache huggingface_hub reads, and the variable that chose it."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        source = "HF_HUB_CACHE"
    elif os.environ.get("HF_HOME"):
        source = "HF_HOME/hub"
    else:
        source = "default; set HF_HOME or HF_HUB_CACHE for another"
    return Path(constants.HF_HUB_CACHE), source


def _offline_variable() -> str:
    """Which variable switched huggingface_hub offline, as the user set it."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    name = next((n for n in names if os.environ.get(n)), names[0])
    return f"{name}={os.environ.get(name, '1')}"


def not_in_hub_cache(name: str, key: str) -> BadInput:
    """One line: which model, the cache looked in, what it lacks, how to get it there."""
    from huggingface_hub import constants, is_offline_mode

    cache, source = _cache_folder()
    folder = constants.REPO_ID_SEPARATOR.join(["models", *name.split("/")])
    why = _offline_variable() if is_offline_mode() else "the Hugging Face Hub is not reachable"
    if not (cache / folder).is_dir():
        what = f"has no {folder} (nor is {name!r} a local folder)"
    elif not (cache / folder / "refs" / "main").is_file():
        what = f"has {folder} without refs/main (the revision loaded)"
    else:
        what = f"has {folder} without {', '.join(hub_cache_gaps(name))}"
    return BadInput(
        f"{key} {name!r} cannot be loaded: {why} and the Hugging Face cache {cache} ({source}) "
        f"{what}; run `hf download {name}` (or `huggingface-cli download {name}`) on a machine "
        f"with the Hub and copy its {folder} into {cache}, or give a local backbone folder"
    )


def cache_cannot_serve(name: str) -> bool:
    """Hub model ``name`` lacks files in the cache, and the Hub cannot be asked for them."""
    from huggingface_hub import is_offline_mode

    # Online, a load downloads what is missing: ask the Hub only when something is.
    return bool(hub_cache_gaps(name)) and (is_offline_mode() or not hub_reachable(name))


def check_hub_cache(name: str, key: str) -> None:
    """A Hub model must be whole in the cache when the Hub cannot be asked: otherwise the
    study is created and every trial fails on its first load."""
    if cache_cannot_serve(name):
        raise not_in_hub_cache(name, key)
