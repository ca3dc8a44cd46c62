"""`focaltune backbone build --train FILE --out DIR`: an offline tokenizer + small encoder
(BERT, or RoBERTa with ``--arch roberta``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing
from pathlib import Path

from search.files import check_output
from trainer.backbone import PRESETS, BackboneSettings, build_backbone, cached_backbone
from trainer.backbone.checkpoint import CHECKPOINT_MINUTES
from trainer.backbone.progress import PROGRESS_ENV, PROGRESS_SECONDS

METAVARS = {int: "N", float: "X", str: "NAME"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backbone",
        help="offline backbones: tokenizer + small BERT/RoBERTa built from your texts",
        description="Build backbones that need no Hugging Face Hub access.",
    )
    actions = parser.add_subparsers(dest="backbone_command", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="train a WordPiece tokenizer and a small encoder (optionally MLM-pretrained)",
        description="Train a WordPiece tokenizer on the training texts, build a small BERT "
        "(or RoBERTa: --arch) and optionally pretrain it with masked-language modelling "
        "(task-adaptive pretraining). The folder works as model.name_or_path in a study "
        "config. Progress shows as bars with ETAs on a terminal, else as a log line at least "
        f"every {PROGRESS_SECONDS:g} s (${PROGRESS_ENV} to change).",
    )
    build.add_argument(
        "--train", required=True, metavar="FILE", help="csv/tsv/jsonl/parquet file (.gz ok)"
    )
    build.add_argument("--out", required=True, metavar="DIR", help="output folder, must not exist")
    build.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named recipe; the flags below override it. standard: the measured "
        "recipe that learns (README, Backbone recipe); tiny: small and random, for smoke runs",
    )
    build.add_argument(
        "--cache",
        metavar="DIR",
        help="build once into DIR/<hash of settings and data> and make --out a link to it; a "
        "later build with the same settings and data reuses it",
    )
    build.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted build of the same --out (and --cache) from its checkpoint "
        "(.<out name>.checkpoint beside it), with the settings and data it was started with",
    )
    build.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=CHECKPOINT_MINUTES,
        metavar="X",
        help="minutes between checkpoints of MLM pretraining, the most work a kill can lose "
        f"(default: {CHECKPOINT_MINUTES:g})",
    )
    _add_settings(build)
    build.set_defaults(func=run)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per ``BackboneSettings`` field: its name, type, default and help live there."""
    hints = typing.get_type_hints(BackboneSettings)
    for setting in dataclasses.fields(BackboneSettings):
        # `int | None` (unset allowed) is read as an int flag whose default is None.
        hint = hints[setting.name]
        kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
        default = setting.default
        text = setting.metadata["help"] + ("" if default is None else f" (default: {default})")
        flag = "--" + setting.name.replace("_", "-")
        choices = setting.metadata.get("choices")
        # No argparse default: unset flags are left out, so a --preset's value stands.
        # An unknown choice (--arch gpt2) is a one-line error naming the choices, exit 2.
        parser.add_argument(
            flag,
            type=kind,
            default=argparse.SUPPRESS,
            choices=choices,
            metavar=None if choices else METAVARS[kind],  # argparse shows {bert,roberta}
            help=text,
        )


def run(args: argparse.Namespace) -> int:
    names = [setting.name for setting in dataclasses.fields(BackboneSettings)]
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    settings = dataclasses.replace(PRESETS.get(args.preset, BackboneSettings()), **given)
    check_output(args.out, "--out", [("the --train file", args.train)], folder=True)
    # A build can take hours: its progress lines (INFO) show without --verbose.
    logging.getLogger("trainer.backbone").setLevel(logging.INFO)
    run_options = {"resume": args.resume, "checkpoint_minutes": args.checkpoint_minutes}
    if args.cache:
        folder, built = cached_backbone(args.train, args.cache, settings, **run_options)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).symlink_to(folder.resolve(), target_is_directory=True)
        print(f"backbone: {args.out} -> {folder} ({'built now' if built else 'from the cache'})")
    else:
        folder = build_backbone(args.train, args.out, settings, **run_options)
        print(f"backbone: {folder}")
    report = json.loads((folder / "backbone.json").read_text())
    arch = report["settings"].get("arch", "bert")  # a cached build from before --arch: BERT
    print(f"parameters: {report['parameters']:,} ({arch} encoder), vocab {report['vocab_size']:,}")
    if report["mlm_loss"]:
        print("MLM loss (held-out): {before:.3f} -> {after:.3f}".format(**report["mlm_loss"]))
        mlm = report["mlm"]
        stop = " (stopped by the time budget)" if mlm["stopped_by"] == "time budget" else ""
        print(f"MLM steps: {mlm['steps_done']:,} of {mlm['steps_planned']:,} planned{stop}")
    return 0
