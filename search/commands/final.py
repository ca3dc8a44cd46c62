"""`focaltune final FINAL.yaml --out DIR`: train the members, SWA, ensemble; write the bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.config import load_config
from search.files import check_output
from search.study import data_inputs
from trainer.config import FinalConfig
from trainer.final import run_final


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "final",
        help="train the final ensemble (members, SWA, weights) and write the bundle",
        description="Train every member of a final config (from `focaltune export`) with its "
        "own seed, keep the better of its best-epoch and SWA weights, fit the ensemble on "
        "validation and write DIR/: member folders (safetensors), ensemble.json, report.json, "
        "report.md and PNG plots. The bundle appears only when complete.",
    )
    parser.add_argument("config", help="final config YAML (focaltune export --out ...)")
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def load_final_config(path: str | Path) -> FinalConfig:
    """Read and validate a final config YAML; BadInput names the first bad key."""
    missing = "final config not found; write one with `focaltune export`"
    sections = "with data, train and members sections"
    return load_config(path, FinalConfig, missing=missing, sections=sections)


def run(args: argparse.Namespace) -> int:
    final = load_final_config(args.config)
    inputs = [("the final config", args.config), *data_inputs(final.data)]
    inputs += [(f"members[{i}].model", m.model) for i, m in enumerate(final.members)]
    check_output(args.out, "--out", inputs, folder=True)
    report = run_final(final, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    for member in report["members"]:
        val = member["validation"]
        print(
            f"{member['name']}: validation accuracy best-epoch {val['best']['accuracy']:.4f}, "
            f"SWA {val['swa']['accuracy']:.4f}; kept {member['kept']}"
        )
    ensemble = report["ensemble"]
    served = ensemble["variants"][ensemble["variant"]]
    line = f"ensemble ({ensemble['variant']}): validation {served['validation']['accuracy']:.4f}"
    if served["test"]:
        line += f", test {served['test']['accuracy']:.4f}"
    print(line)
    print(f"bundle: {args.out} (report: {Path(args.out) / 'report.md'})")
    if final.wandb.enabled:
        log_final(final, report, Path(args.out))
    return 0


def _scalars(prefix: str, values: dict) -> dict[str, float]:
    """Flatten the report's nested metrics to W&B summary keys (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_scalars(f"{prefix}{key}/", value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def log_final(final: FinalConfig, report: dict, bundle: Path) -> None:
    """One W&B run per member and one for the ensemble, grouped by the source study."""
    from search.tracking import log_run

    group = str(final.provenance.get("study", "final"))
    folder = Path(final.wandb.dir) if final.wandb.dir else bundle.parent / "wandb"
    for member, entry in zip(final.members, report["members"], strict=True):
        log_run(
            final.wandb,
            folder,
            group=group,
            name=f"final-{entry['name']}",
            config={**member.params.model_dump(), "seed": member.seed, "model": member.model},
            rows=[],
            summary=_scalars("", entry),
            job_type="final-member",
        )
    log_run(
        final.wandb,
        folder,
        group=group,
        name="final-ensemble",
        config=final.provenance,
        rows=[],
        summary=_scalars("", report["ensemble"]),
        job_type="final-ensemble",
    )
