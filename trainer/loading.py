"""Backbones loaded once per process and handed out fresh for every run.

A worker runs many trials on the same backbone: reading weights and the tokenizer from
disk (or the Hub) for each would cost seconds per trial on a BERT-base. The first load
keeps the pretrained weights in memory; each run then builds the model from its config,
seeded, so its new classifier head is initialised exactly as ``from_pretrained`` would.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
from transformers.utils import logging as hf_logging

from trainer.errors import BadInput


# Unbounded: a worker only ever loads its study's backbones (``space.backbones``), and a
# bound below their number would reload one from disk in nearly every trial.
@functools.cache
def _pretrained(name_or_path: str, num_labels: int) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    verbosity = hf_logging.get_verbosity()
    # A backbone never has a classifier head, and ours carry an MLM head: transformers'
    # load report would print the same table of MISSING/UNEXPECTED keys in every worker.
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=num_labels, dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise BadInput(
            f"model.name_or_path {name_or_path!r} could not be loaded "
            f"({str(err).splitlines()[0][:120]}); give a local backbone folder "
            "(focaltune backbone build) or a Hub model name reachable from this machine"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
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
