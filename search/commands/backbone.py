"""`focaltune backbone build --train FILE --out DIR`: an offline tokenizer + small BERT."""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

from search.files import check_output
from trainer.backbone import build_backbone

# (flag, type, help); defaults come from build_backbone's signature, so they live in one place.
OPTIONS = (
    ("--text-column", str, "column holding the texts"),
    ("--vocab-size", int, "WordPiece vocabulary size (>= 256)"),
    ("--layers", int, "transformer layers"),
    ("--hidden", int, "hidden size; a multiple of --heads"),
    ("--heads", int, "attention heads"),
    ("--intermediate", int, "feed-forward size (default: 4 x hidden)"),
    ("--max-length", int, "tokenizer model_max_length and MLM truncation, in tokens"),
    ("--max-samples", int, "use a seeded random sample of this many texts (default: all)"),
    ("--mlm-epochs", float, "masked-LM pretraining epochs on the texts (0 = none)"),
    ("--mlm-batch-size", int, "masked-LM batch size"),
    ("--mlm-learning-rate", float, "masked-LM peak learning rate"),
    ("--seed", int, "seed of sampling, initialisation and masking"),
)
METAVARS = {int: "N", float: "X", str: "NAME"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backbone",
        help="offline backbones: tokenizer + small BERT built from your texts",
        description="Build backbones that need no Hugging Face Hub access.",
    )
    actions = parser.add_subparsers(dest="backbone_command", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="train a WordPiece tokenizer and a small BERT (optionally MLM-pretrained)",
        description="Train a WordPiece tokenizer on the training texts, build a small BERT and "
        "optionally pretrain it with masked-language modelling (task-adaptive pretraining). "
        "The folder works as model.name_or_path in a study config.",
    )
    build.add_argument(
        "--train", required=True, metavar="FILE", help="csv/tsv/jsonl/parquet file (.gz ok)"
    )
    build.add_argument("--out", required=True, metavar="DIR", help="output folder, must not exist")
    defaults = inspect.signature(build_backbone).parameters
    for flag, kind, text in OPTIONS:
        default = defaults[_name(flag)].default
        text += "" if default is None else f" (default: {default})"
        build.add_argument(flag, type=kind, default=default, metavar=METAVARS[kind], help=text)
    build.set_defaults(func=run)


def _name(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def run(args: argparse.Namespace) -> int:
    settings = {_name(flag): getattr(args, _name(flag)) for flag, _, _ in OPTIONS}
    check_output(args.out, "--out", [("the --train file", args.train)], folder=True)
    out = build_backbone(args.train, args.out, **settings)
    report = json.loads((Path(out) / "backbone.json").read_text())
    print(f"backbone: {out}")
    print(f"parameters: {report['parameters']:,} (encoder), vocab {report['vocab_size']:,}")
    if report["mlm_loss"]:
        print("MLM loss (held-out): {before:.3f} -> {after:.3f}".format(**report["mlm_loss"]))
    return 0
