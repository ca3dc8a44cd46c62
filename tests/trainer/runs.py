"""A small real training run's config, shared by the trainer tests."""

from __future__ import annotations

from trainer.config import DataConfig, Hyperparams, ModelConfig, TrainConfig, TrainSettings


def small_config(tiny_backbone, nsmc_csv, tmp_path, **train) -> TrainConfig:
    """300 reviews, 100 for validation, the tiny backbone, batches of 32, one epoch."""
    return TrainConfig(
        data=DataConfig(
            train=str(nsmc_csv(300)),
            validation=str(nsmc_csv(100, offset=5000)),
            max_length=32,
            cache_dir=str(tmp_path / "cache"),
        ),
        model=ModelConfig(name_or_path=str(tiny_backbone)),
        train=TrainSettings(batch_size=32, **train),
        params=Hyperparams(learning_rate=2e-3, epochs=1),
    )
