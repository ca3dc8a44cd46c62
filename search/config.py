"""The study config: one YAML file, validated once, stored whole in the study.

Sections ``data``, ``model`` and ``train`` are the trainer's own types; this module adds
the Optuna side (``study``, ``space``, ``tracking``) and turns a pydantic error into the
one-line message the CLI prints.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
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
from trainer.errors import BadInput, first_line

SCHEMA_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; past this it is not one (or a bomb)
MAX_YAML_NODES = 100_000  # scalars, lists and maps after aliases are expanded
# How much of a user's value a message quotes: nested and long values are cut.
QUOTE = reprlib.Repr()
QUOTE.maxlevel, QUOTE.maxstring, QUOTE.maxother = 3, 80, 80
QUOTE.maxlist = QUOTE.maxtuple = QUOTE.maxdict = QUOTE.maxset = 6
Config = TypeVar("Config", bound=BaseModel)  # StudyConfig, FinalConfig


class SamplerConfig(Strict):
    type: Literal["tpe", "random"] = Field("tpe", description="random: the ablation baseline")
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


Bound = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class FloatRange(Strict):
    low: Bound
    high: Bound

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

    @field_validator("focal_gamma", "focal_alpha", "label_smoothing", "learning_rate", "epochs")
    @classmethod
    def _bounds_are_trial_values(cls, value: Any, info: ValidationInfo) -> Any:
        """Both bounds must be values a trial's own settings (``Hyperparams``) accept: one
        source of truth for the limits, so a sampled value never fails inside a trial."""
        if value is None:
            return value
        for side in ("low", "high"):
            bound = getattr(value, side)
            trial_value = [bound] if info.field_name == "focal_alpha" else bound
            try:
                Hyperparams.model_validate({info.field_name: trial_value})
            except ValidationError as err:
                raise ValueError(
                    f"{side} {bound}: {err.errors()[0]['msg'].lower()} (a trial's limit); "
                    "keep both bounds within it"
                ) from None
        return value


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


def shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad key, its value and what was expected; every part that
    quotes the input is bounded, however large or nested the input is."""
    errors = err.errors()
    first = errors[0]
    where = shorten(".".join(str(p) for p in first["loc"]) or "(top level)")
    msg = shorten(first["msg"].removeprefix("Value error, "), 300)
    if first["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling against the README"
    elif first["type"] == "missing":
        msg = "required key is missing; add it"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    value = "" if first["type"] == "missing" else f" = {shorten(QUOTE.repr(first['input']), 60)}"
    return f"{source}: {where}{value}: {msg}{more}"


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing documents whose aliases expand past MAX_YAML_NODES
    ("billion laughs"): aliases share one node, so the check costs one walk of the graph."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"aliases expand it to more than {MAX_YAML_NODES:,} values")
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded (memoised per shared node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise yaml.YAMLError("an alias refers to its own anchor (a recursive structure)")
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(
            _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value
        )
    open_.discard(id(node))
    sizes[id(node)] = size = min(size, MAX_YAML_NODES + 1)  # no huge integers either
    return size


def load_yaml(path: Path) -> Any:
    """A YAML file's content, bounded in size, alias expansion and nesting."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise BadInput(
            f"{path} is {size:,} bytes, over the {MAX_CONFIG_BYTES:,} a config may have; "
            "pass the config file, not a data file"
        )
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=BoundedLoader)  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: not valid YAML ({first_line(err)}); fix the file") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply to be a config; fix the file") from None


def validate_config(raw: Any, model: type[Config], source: str, *, sections: str) -> Config:
    """``raw`` (a YAML file's content, a stored dict) as a ``model``, or one BadInput line
    naming ``source`` and the first bad key; ``sections`` says what the mapping holds."""
    if not isinstance(raw, dict):
        raise BadInput(f"{source}: expected a mapping {sections}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise BadInput(describe_error(err, source)) from None


def load_config(path: str | Path, model: type[Config], *, missing: str, sections: str) -> Config:
    """Read a config YAML (bounded: ``load_yaml``) and validate it as a ``model``; ``missing``
    is what to tell a user whose file does not exist."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: {missing}")
    return validate_config(load_yaml(path), model, str(path), sections=sections)


STUDY_SECTIONS = "of sections (study, data, model, ...)"


def parse_study_config(raw: Any, source: str) -> StudyConfig:
    """Validate a dict (from YAML or from the study) into a StudyConfig, or raise BadInput."""
    return validate_config(raw, StudyConfig, source, sections=STUDY_SECTIONS)


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML; relative data paths are resolved against the CWD."""
    missing = "config file not found; pass the path of a study YAML"
    return load_config(path, StudyConfig, missing=missing, sections=STUDY_SECTIONS)
