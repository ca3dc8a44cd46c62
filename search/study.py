"""Studies: created once (idempotently) with their whole config; workers only load.

The validated config is stored as a study user attribute, with the storage URL left
out (it may hold a password and a worker already knows it), data paths made absolute
and the label names filled in from the data, so every worker trains the same task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from search.config import SCHEMA_VERSION, StudyConfig, TrackingConfig, parse_study_config
from search.files import check_output, local_absolute
from search.space import hyperparams_to_params
from search.warm import map_params
from storage import describe, open_storage
from trainer.config import DataConfig
from trainer.errors import BadInput

log = logging.getLogger(__name__)
CONFIG_ATTR = "focaltune:config"
SCHEMA_ATTR = "focaltune:schema_version"


def resolve_config(cfg: StudyConfig) -> StudyConfig:
    """Check the data (before anything is created) and pin what workers need to agree on."""
    from trainer.data import load_splits  # pandas: only for creating, not for every worker

    data = cfg.data.model_copy()
    for key in ("train", "validation", "test"):
        value = getattr(data, key)
        if value and Path(value).exists():
            setattr(data, key, str(Path(value).resolve()))
    splits = load_splits(data)
    data.labels = splits.label_names
    for i, entry in enumerate(cfg.study.enqueue):
        check_alphas(entry.focal_alpha, len(data.labels), f"study.enqueue[{i}]")
    # Local backbones and folders are made absolute so every worker, whatever its CWD,
    # loads the same model and writes to the same place; Hub names stay as they are.
    model = cfg.model.model_copy(update={"name_or_path": local_absolute(cfg.model.name_or_path)})
    space = cfg.space.model_copy()
    if space.backbones:
        space.backbones = [local_absolute(name) for name in space.backbones]
    preflight(data, study_backbones(cfg), cfg.tracking)
    study = cfg.study.model_copy(update={"storage": None})
    tracking = cfg.tracking.model_copy(deep=True)
    if tracking.artifacts:
        tracking.artifacts = str(Path(tracking.artifacts).resolve())
    if tracking.wandb.dir:
        tracking.wandb.dir = str(Path(tracking.wandb.dir).resolve())
    return cfg.model_copy(
        update={"data": data, "model": model, "space": space, "study": study, "tracking": tracking}
    )


def check_alphas(alpha: list[float] | None, num_labels: int, where: str) -> None:
    if alpha is not None and len(alpha) != num_labels:
        raise BadInput(
            f"{where}.focal_alpha has {len(alpha)} values but the data has {num_labels} "
            "classes; give one weight per class"
        )


def data_inputs(data: DataConfig) -> list[tuple[str, str | None]]:
    """The data files of a config, as inputs no output may overwrite."""
    return [(f"data.{key}", getattr(data, key)) for key in ("train", "validation", "test")]


def preflight(data: DataConfig, backbones: dict[str, str], tracking: TrackingConfig | None) -> None:
    """What every trial will need beyond the data, checked once before anything is made:
    each backbone (``key -> name``) loadable and long enough for ``data.max_length``, and the
    folders trials write (token cache; artifacts and W&B unless ``tracking`` is None, as
    for `train`, which writes neither) writable."""
    from trainer.loading import check_backbone  # torch: only for the commands that train
    from trainer.tokens import cache_root

    for key, name in backbones.items():
        check_backbone(name, key, data.max_length)
    folders = [("data.cache_dir", cache_root(data.cache_dir))]
    if tracking is not None:
        folders += [
            ("tracking.artifacts", tracking.artifacts),
            ("tracking.wandb.dir", tracking.wandb.dir if tracking.wandb.enabled else None),
        ]
    for key, folder in folders:
        if folder:
            check_output(folder, key, [], folder=True)


def study_backbones(cfg: StudyConfig) -> dict[str, str]:
    names = {"model.name_or_path": cfg.model.name_or_path}
    names |= {f"space.backbones[{i}]": n for i, n in enumerate(cfg.space.backbones or [])}
    return names


def stored_config(study: optuna.Study) -> StudyConfig:
    raw = study.user_attrs.get(CONFIG_ATTR)
    if raw is None:
        raise BadInput(
            f"study {study.study_name!r} has no focaltune config; "
            "create it with `focaltune study create CONFIG.yaml`"
        )
    return parse_study_config(raw, f"study {study.study_name!r}")


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def create_study(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage | str,
    warm_start: list[dict[str, Any]] | None = None,
) -> optuna.Study:
    """Create the study with its config, or return it when it exists with the same config.

    ``storage`` may be a URL: it is then opened only after the config and data are checked,
    so bad input leaves no database file behind. ``warm_start``: trial params of another
    study, enqueued after ``study.enqueue`` (mapped onto this space: ``search.warm``).
    """
    resolved = resolve_config(cfg)
    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat_interval=None)
    wanted = resolved.model_dump(mode="json")
    name = cfg.study.name
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        diffs = _differences(study.user_attrs.get(CONFIG_ATTR) or {}, wanted)
        if diffs:
            raise BadInput(
                f"study {name!r} already exists with a different config ({'; '.join(diffs[:3])}); "
                "use a new study.name or the same config"
            )
        log.info("study %s exists with the same config; nothing to do", name)
        return study
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    try:
        study.set_user_attr(CONFIG_ATTR, wanted)
        study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION)
        for entry in resolved.study.enqueue:
            study.enqueue_trial(hyperparams_to_params(entry), skip_if_exists=True)
        for i, params in enumerate(warm_start or []):
            mapped = map_params(params, resolved, f"trial {i + 1} of {len(warm_start)}")
            study.enqueue_trial(mapped, skip_if_exists=True)
    except BaseException:
        optuna.delete_study(study_name=name, storage=storage)  # no half-made study
        raise
    enqueued = len(resolved.study.enqueue) + len(warm_start or [])
    log.info("created study %s (%d trials enqueued)", name, enqueued)
    return study


def make_sampler(cfg: StudyConfig, worker_index: int) -> optuna.samplers.BaseSampler:
    seed = cfg.study.sampler.seed + 7919 * worker_index
    if cfg.study.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Multivariate TPE with constant liar suits parallel workers; the same seed in every
    # worker is the main cause of duplicate trials (optuna#3790), so each gets its own.
    return optuna.samplers.TPESampler(
        multivariate=True,
        constant_liar=True,
        n_startup_trials=cfg.study.sampler.n_startup_trials,
        seed=seed,
    )


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.study.pruner
    if p.type == "hyperband":
        # Steps are evaluation indices: one per data stage, then evals_per_epoch per epoch.
        stages = len(cfg.train.data_stages)
        max_resource = stages + cfg.space.epochs.high * cfg.train.evals_per_epoch
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=max(max_resource, p.min_resource),
            reduction_factor=p.reduction_factor,
        )
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    return optuna.pruners.NopPruner()


def load_existing(url: str, name: str, storage: Any = None) -> optuna.Study:
    """Load a study for reading; a missing one is bad input (lists the ones that exist).

    A SQLite file that does not exist is reported, not created empty. ``storage``: one the
    caller opened for ``url`` (to close its connections later), else a new one.
    """
    storage = storage or open_storage(url, heartbeat_interval=None, existing=True)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        known = ", ".join(names[:5]) or "none"
        raise BadInput(
            f"study {name!r} not found in {describe(url)} (studies there: {known}); "
            "check --study or create it with `focaltune study create`"
        )
    return optuna.load_study(study_name=name, storage=storage)
