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
    import numpy as np
    import pandas as pd

    from search.space import params_to_config
    from trainer.final.predict import predict_probs
    from trainer.loading import quiet_loading
    from trainer.train import train_model

    cfg = params_to_config(params, base)
    result = train_model(cfg, keep_best_weights=True)
    with quiet_loading():
        result.model.load_state_dict(result.best_weights)
    test = pd.read_csv(test_csv)
    texts = test[cfg.data.text_column].astype(str).tolist()
    tokenizer = _tokenizer(cfg.model.name_or_path)
    probs = predict_probs(result.model, tokenizer, texts, max_length=cfg.data.max_length)
    names = [str(n) for n in result.label_names]
    truth = np.array([names.index(str(v)) for v in test[cfg.data.label_column]])
    return {
        "test_accuracy": float((probs.argmax(1) == truth).mean()),
        "validation_accuracy": result.best.accuracy,
        "best_epoch": result.best.epoch,
    }


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
