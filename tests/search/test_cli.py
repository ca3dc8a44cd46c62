"""The command line's own parsing: global flags survive the subcommands."""

from __future__ import annotations

from search.cli import build_parser


def parse(*argv: str):
    return build_parser(argv).parse_args(argv)


def test_global_verbose_survives_a_subcommand_with_its_own_verbose_flag() -> None:
    # argparse copies a subcommand's defaults over the namespace: `launch --verbose` once
    # shared the global flag's dest, so `focaltune -v launch ...` lost INFO logging.
    args = parse("-v", "launch", "study.yaml")
    assert args.verbose is True and args.relay_all is False
    args = parse("launch", "study.yaml", "--verbose")
    assert args.verbose is False and args.relay_all is True
