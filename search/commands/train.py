"""`focaltune train CONFIG.yaml --params JSON --out DIR`: one run, fixed hyperparameters."""

from __future__ import annotations

import argparse
import json

from pydantic import ValidationError

from search.config import describe_error, load_study_config
from search.files import check_output, write_json_atomic
from search.study import check_alphas, data_inputs, preflight
from trainer.config import Hyperparams, TrainConfig
from trainer.data import load_splits
from trainer.errors import BadInput
from trainer.train import summarise, train_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="one training run with fixed hyperparameters",
        description="Train once with the study config's data/model/train sections and fixed "
        "hyperparameters; metrics of every evaluation go to DIR/metrics.json.",
    )
    parser.add_argument("config", help="study config YAML")
    parser.add_argument(
        "--params",
        default="{}",
        help='hyperparameters as JSON, e.g. \'{"focal_gamma": 2, "learning_rate": 3e-5}\'',
    )
    parser.add_argument("--out", required=True, help="output folder for metrics.json")
    parser.set_defaults(func=run)


def parse_params(text: str) -> Hyperparams:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"--params: not valid JSON ({err.msg} at char {err.pos})") from None
    try:
        return Hyperparams.model_validate(raw)
    except ValidationError as err:
        raise BadInput(describe_error(err, "--params")) from None


def run(args: argparse.Namespace) -> int:
    study_cfg = load_study_config(args.config)
    cfg = TrainConfig(
        data=study_cfg.data,
        model=study_cfg.model,
        train=study_cfg.train,
        params=parse_params(args.params),
    )
    out = check_output(args.out, "--out", [], folder=True)
    inputs = [("the config", args.config), *data_inputs(cfg.data)]
    inputs.append(("model.name_or_path", cfg.model.name_or_path))
    check_output(out / "metrics.json", "--out", inputs)
    splits = load_splits(cfg.data)  # the data's own checks, then what the run needs besides
    check_alphas(cfg.params.focal_alpha, splits.num_labels, "--params")
    preflight(cfg.data, {"model.name_or_path": cfg.model.name_or_path}, None)
    result = train_model(cfg, splits=splits)
    payload = {"params": cfg.params.model_dump(), **result.to_json()}
    write_json_atomic(out / "metrics.json", payload)
    print(summarise(result))
    print(f"metrics: {out / 'metrics.json'}")
    return 0
