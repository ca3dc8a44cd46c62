"""`focaltune predict DIR --input FILE --output FILE`: the bundle's predictions for every row."""

from __future__ import annotations

import argparse

from search.commands.common import int_in
from search.files import check_output
from trainer.final.predict import predict_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict labels and class probabilities with a final bundle",
        description="Load a bundle written by `focaltune final` (verifying every file's "
        "sha256) and write one row per input row: the id column if any, label, label_name "
        "and prob_<name> per class. The output file appears only when complete.",
    )
    parser.add_argument("bundle", metavar="DIR", help="bundle folder (focaltune final --out)")
    parser.add_argument("--input", required=True, metavar="FILE", help="csv/tsv/json/jsonl/parquet")
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="csv/tsv/jsonl (.gz ok) or parquet"
    )
    parser.add_argument(
        "--batch-size",
        type=int_in(1, 65536),
        default=None,
        metavar="N",
        help="default: 64 on a CPU, 256 on a GPU",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    inputs = [("the --input file", args.input), ("the bundle", args.bundle)]
    check_output(args.output, "--output", inputs)  # before the bundle is even loaded
    out = predict_file(
        args.bundle,
        args.input,
        args.output,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    counts = out["label_name"].value_counts().to_dict()
    print(f"{len(out)} predictions -> {args.output}; predicted classes {counts}")
    return 0
