"""Each search's best configuration, retrained once the same way and scored on test rows.

The searches pick their best on validation rows, each by its own rule; the test rows are
never used to choose. So that the figure compares configurations, not training loops,
every one is trained by the product's ``train_model`` on the workload's rows, keeping the
epoch best on validation, as ``focaltune final`` would train it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def retrain_on_test(base: Any, params: dict[str, Any], test_csv: Path) -> dict[str, float]:
    """``params`` trained once on the workload's rows (the epoch best on validation kept),
    then scored on ``test_csv``."""
    from transformers import AutoTokenizer

    from search.space import params_to_config
    from trainer.data import load_labelled
    from trainer.final.predict import predict_probs
    from trainer.train import train_model

    cfg = params_to_config(params, base)
    result = train_model(cfg, keep_best_weights=True)
    result.model.load_state_dict(result.best_weights)
    texts, truth = load_labelled(str(test_csv), cfg.data, result.label_names, what="test rows")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    probs = predict_probs(result.model, tokenizer, texts, max_length=cfg.data.max_length)
    return {
        "test_accuracy": float((probs.argmax(1) == truth).mean()),
        "validation_accuracy": result.best.accuracy,
        "best_epoch": result.best.epoch,
    }
