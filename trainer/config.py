"""Typed settings of one training run, validated once at the edge.

The search side composes these into its study config; nothing below the CLI reads
raw dicts. Field names of ``Hyperparams`` equal the Optuna parameter names, so a
trial's params map straight back to a config.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveInt,
    field_validator,
    model_validator,
)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class DataConfig(Strict):
    train: str = Field(description="training file (csv/tsv/json/jsonl/parquet, .gz ok) or Hub name")
    validation: str | None = Field(None, description="validation file; None = split of train")
    test: str | None = Field(None, description="optional test file, evaluated by `final`")
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    text_column: str = "review"
    label_column: str = "label"
    id_column: str | None = Field(None, description="kept in predictions when present")
    labels: list[str] | None = Field(
        None, description="label names in id order; None = sorted distinct labels of train"
    )
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None
    max_length: int = Field(128, ge=8, le=8192)
    split_seed: int = Field(0, description="seed of the validation split and subsampling")
    cache_dir: str | None = Field(
        None, description="tokenisation cache; default $FOCALTUNE_CACHE or ~/.cache/focaltune"
    )


class ModelConfig(Strict):
    name_or_path: str = Field(description="Hub model name or local folder")


class TrainSettings(Strict):
    """Fixed (not searched) training settings."""

    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 256
    gradient_accumulation_steps: PositiveInt = 1
    evals_per_epoch: PositiveInt = 1
    seed: int = 42
    weight_decay: NonNegativeFloat = Field(0.01, allow_inf_nan=False)
    warmup_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    lr_scheduler: Literal["linear", "constant", "cosine"] = "linear"
    lr_flat_tail: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="the last fraction of optimizer steps holds the learning rate reached "
        "when it starts (a flat tail for SWA to average over); 0 = none",
    )
    max_grad_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="mixed precision of training and inference; auto = bf16 on GPUs that "
        "have it in hardware, fp16 (loss-scaled) on older GPUs, fp32 on CPU",
    )
    bf16: Literal["auto", "on", "off"] | None = Field(
        None, description="deprecated: use precision (on = bf16, off = fp32)"
    )
    group_by_length: bool = True
    data_stages: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default_factory=list,
        description="data-size fidelity: before its epochs a run trains one pass over each "
        "of these fractions of the rows (nested, stratified), evaluating after each; [] = off",
    )

    @field_validator("data_stages")
    @classmethod
    def _stages_grow(cls, stages: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
            raise ValueError(f"{stages} must be strictly increasing, e.g. [0.25, 0.5]")
        return stages

    @model_validator(mode="after")
    def _bf16_is_an_old_name_for_precision(self) -> TrainSettings:
        if self.bf16 in ("on", "off") and self.precision == "auto":
            # object.__setattr__: a validated assignment would run this validator again.
            object.__setattr__(self, "precision", "bf16" if self.bf16 == "on" else "fp32")
        return self


class Hyperparams(Strict):
    """What the search varies; names equal the Optuna parameter names."""

    focal_gamma: NonNegativeFloat = Field(2.0, allow_inf_nan=False)
    focal_alpha: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] | None = Field(
        None, description="one weight per class, normalised to mean 1; None = all 1"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0)
    epochs: PositiveInt = Field(3, le=1000)


class TrainConfig(Strict):
    """Everything one training run needs."""

    data: DataConfig
    model: ModelConfig
    train: TrainSettings = TrainSettings()
    params: Hyperparams = Hyperparams()


class WandbConfig(Strict):
    enabled: bool = False
    project: str = "focaltune"
    mode: Literal["offline", "online", "disabled"] = "offline"
    dir: str | None = None


class MemberConfig(Strict):
    """One member of the final ensemble: a backbone, its hyperparameters and its own seed."""

    model: str
    params: Hyperparams
    seed: int
    source_trial: int | None = Field(None, description="trial number it came from")


class SwaConfig(Strict):
    last_k: PositiveInt = Field(2, description="average the weights of the last K epochs")
    flat_tail: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="train the last fraction of steps at a constant learning rate and "
        "average `snapshots` weights spread evenly over it instead of the last K epochs; "
        "0 = epoch ends with the usual decay",
    )
    snapshots: int = Field(8, ge=2, le=1000, description="weights averaged over a flat tail")


class EnsembleConfig(Strict):
    weights: Literal["auto", "best", "uniform", "tuned"] = Field(
        "auto",
        description="what the bundle serves: auto = whichever candidate (best member alone, "
        "uniform or tuned weights, each with and without the prior bias) scores highest on "
        "validation; best, uniform or tuned = that kind of weights",
    )
    prior_correction: bool = Field(
        True,
        description="fit a per-class bias on validation that makes the predicted class "
        "shares match the training labels'; with weights best, uniform or tuned it is "
        "served when it does not lower the validation score",
    )
    select: Literal["accuracy", "macro_f1"] = Field(
        "accuracy",
        description="the validation score that chooses the served variant; macro_f1 favours "
        "the minority classes (and usually the prior bias) at some cost in accuracy",
    )


class FinalConfig(Strict):
    """What `focaltune export` writes and `focaltune final` trains."""

    data: DataConfig
    train: TrainSettings = TrainSettings()
    members: list[MemberConfig] = Field(min_length=1)
    swa: SwaConfig = SwaConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    full_data: bool = Field(False, description="retrain each member on train + validation")
    wandb: WandbConfig = Field(WandbConfig(), description="log members and report to W&B")
    provenance: dict[str, str | int | list[int]] = Field(default_factory=dict)
