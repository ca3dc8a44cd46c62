"""The study config: one YAML file, validated once, stored whole in the study.

Sections ``data``, ``model`` and ``train`` are the trainer's own types; this module adds
the Optuna side (``study``, ``space``, ``tracking``) and turns a pydantic error into the
one-line message the CLI prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from trainer.config import (
    DataConfig,
    Hyperparams,
    ModelConfig,
    Strict,
    TrainSettings,
    WandbConfig,
)
from trainer.errors import BadInput

SCHEMA_VERSION = 1


class SamplerConfig(Strict):
    seed: int = Field(0, description="base seed; worker k uses seed + k")
    n_startup_trials: PositiveInt = 8


class PrunerConfig(Strict):
    type: Literal["hyperband", "median", "none"] = "hyperband"
    min_resource: PositiveInt = Field(1, description="hyperband: evaluations before a first cut")
    reduction_factor: int = Field(3, ge=2)
    n_startup_trials: int = Field(4, ge=0, description="median: trials before pruning starts")
    n_warmup_steps: int = Field(0, ge=0, description="median: evaluations never pruned")


class StudySection(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    storage: str | None = Field(None, description="None = sqlite:///focaltune.db")
    n_trials: PositiveInt = Field(24, description="global budget: COMPLETE + PRUNED trials")
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    enqueue: list[Hyperparams] = Field(default_factory=list)
    heartbeat_interval: PositiveInt = 20
    grace_period: PositiveInt = 60
    max_retry: int = Field(3, ge=0, description="retries of a trial whose worker died")

    @model_validator(mode="after")
    def _heartbeat_below_grace(self) -> StudySection:
        if self.heartbeat_interval >= self.grace_period:
            raise ValueError(
                f"heartbeat_interval {self.heartbeat_interval} must be below grace_period "
                f"{self.grace_period}, or live trials are failed as stale"
            )
        return self


class FloatRange(Strict):
    low: NonNegativeFloat
    high: NonNegativeFloat

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}; swap them")
        return self


def _as_range(value: Any) -> Any:
    # YAML writes ranges as [low, high]; a single number pins the value.
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"expected [low, high], got {len(value)} values")
        return {"low": value[0], "high": value[1]}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"low": value, "high": value}
    return value


class IntRange(Strict):
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}; swap them")
        return self


Floats = Annotated[FloatRange, BeforeValidator(_as_range)]
Ints = Annotated[IntRange, BeforeValidator(_as_range)]


class SpaceConfig(Strict):
    """Searched ranges, written [low, high] in YAML; a single number pins the value."""

    focal_gamma: Floats = FloatRange(low=0.0, high=5.0)
    focal_alpha: Floats | None = Field(
        FloatRange(low=0.25, high=4.0), description="per class, log scale; None = all 1"
    )
    label_smoothing: Floats = FloatRange(low=0.0, high=0.3)
    learning_rate: Floats = FloatRange(low=1e-5, high=1e-4)
    epochs: Ints = IntRange(low=2, high=8)
    backbones: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _bounds(self) -> SpaceConfig:
        problems = []
        if self.learning_rate.low <= 0:
            problems.append("learning_rate low must be > 0 (log scale)")
        if self.focal_alpha is not None and self.focal_alpha.low <= 0:
            problems.append("focal_alpha low must be > 0 (log scale)")
        if self.label_smoothing.high >= 1:
            problems.append("label_smoothing high must be < 1")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrackingConfig(Strict):
    wandb: WandbConfig = WandbConfig()
    artifacts: str | None = Field(None, description="artifact folder; default beside the DB")


class StudyConfig(Strict):
    study: StudySection
    data: DataConfig
    model: ModelConfig
    train: TrainSettings = TrainSettings()
    space: SpaceConfig = SpaceConfig()
    tracking: TrackingConfig = TrackingConfig()


def describe_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad key, its value and what was expected."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling against the README"
    elif first["type"] == "missing":
        msg = "required key is missing; add it"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    value = f" = {first['input']!r}" if first["type"] not in ("missing",) else ""
    if len(value) > 60:
        value = value[:57] + "..."
    return f"{source}: {where}{value}: {msg}{more}"


def parse_study_config(raw: Any, source: str) -> StudyConfig:
    """Validate a dict (from YAML or from the study) into a StudyConfig, or raise BadInput."""
    if not isinstance(raw, dict):
        raise BadInput(f"{source}: expected a mapping of sections (study, data, model, ...)")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise BadInput(describe_error(err, source)) from None


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML; relative data paths are resolved against the CWD."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: config file not found; pass the path of a study YAML")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_study_config(raw, str(path))
