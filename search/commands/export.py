"""`focaltune export --storage URL --study NAME --out FINAL.yaml`, members chosen by one of
`--seeds N` (the best trial N times; 3 by default), `--top-k K` or `--per-backbone`."""

from __future__ import annotations

import argparse

from search.commands.common import add_storage_args, int_in, storage_url
from search.export import export_final, to_yaml
from search.files import check_output, database_inputs, write_text_atomic
from search.study import data_inputs, load_existing, stored_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the final-training config from the best trials",
        description="Turn the best COMPLETE trials into a final config (members, seeds, "
        "data, SWA and ensemble settings) for `focaltune final`.",
    )
    add_storage_args(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--seeds",
        type=int_in(1, 1000),
        help="members = the best trial N times, each with its own seed (default: 3)",
    )
    group.add_argument("--top-k", type=int_in(1, 1000), help="members = the K best trials")
    group.add_argument("--per-backbone", action="store_true", help="the best trial per backbone")
    parser.add_argument("--out", required=True, help="YAML file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    url = storage_url(args)
    check_output(args.out, "--out", database_inputs(url))  # before the study is even opened
    study = load_existing(url, args.study)
    cfg = stored_config(study)
    check_output(args.out, "--out", data_inputs(cfg.data))
    final = export_final(
        study, cfg, top_k=args.top_k, per_backbone=args.per_backbone, seeds=args.seeds
    )
    path = write_text_atomic(args.out, to_yaml(final))
    trials = ", ".join(str(m.source_trial) for m in final.members)
    print(f"exported {len(final.members)} members (trials {trials}) to {path}")
    return 0
