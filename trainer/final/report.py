"""What `final` writes besides the weights: ``report.json``, ``report.md``, the two PNGs, and
the body of ``ensemble.json``. It renders what was measured; it decides nothing.

Tuned weights and the prior bias are fitted on the same validation set that picks the
served variant, so its validation figures are optimistic; every candidate is reported
beside it, and the test set (when configured) is the honest comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.config import FinalConfig
from trainer.data import Splits
from trainer.devices import training_precision
from trainer.final.bundle import MEMBERS
from trainer.final.ensemble import Ensemble
from trainer.metrics import probs_metrics
from trainer.plots import class_distribution_png, confusion_matrix_png

if TYPE_CHECKING:
    from trainer.final.members import LabelledSet, MemberRun

FULL_DATA_NOTE = (
    "The bundle's members were retrained on train + validation. Validation figures (and the "
    "ensemble weights, bias and served variant) come from the train-only pass; test figures "
    "are of the retrained members."
)


def _floats(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _member_facts(final: FinalConfig, run: MemberRun) -> dict[str, Any]:
    member = final.members[run.index]
    facts = {"name": run.name, "model": member.model, "seed": member.seed}
    return facts | {"source_trial": member.source_trial}


def manifest_body(
    final: FinalConfig, runs: list[MemberRun], ensemble: Ensemble, label_names: list[str]
) -> dict[str, Any]:
    """What ``predict`` needs (plus provenance); the bundle adds the file hashes."""
    combo = ensemble.variants[ensemble.chosen]
    fitted = ensemble.variants.get(f"{ensemble.chosen.removesuffix('+prior')}+prior")
    members = [
        _member_facts(final, run)
        | {"path": f"{MEMBERS}/{run.name}", "weights": run.chosen}
        | {"params": final.members[run.index].params.model_dump(mode="json")}
        for run in runs
    ]
    columns = {"text_column", "label_column", "id_column", "max_length"}
    return {
        "label_names": label_names,
        "data": final.data.model_dump(mode="json", include=columns),
        "members": members,
        "weights": _floats(combo.weights),
        "weights_source": ensemble.weights_source,
        "bias": None if fitted is None else _floats(fitted.bias),
        "bias_applied": combo.bias is not None,
        "full_data": final.full_data,
        "precision": training_precision(final.train.precision),
        "provenance": final.provenance,
    }


def _member_entry(final: FinalConfig, run: MemberRun, test: LabelledSet | None) -> dict[str, Any]:
    return _member_facts(final, run) | {
        "best": {"eval_index": run.best.index, "epoch": run.best.epoch},
        "swa": {"epochs": run.swa_epochs},
        "validation": run.validation,  # "best" and "swa", both measured, whichever was kept
        "kept": run.chosen,
        "test": None if test is None else probs_metrics(run.test_probs, test.labels),
        "seconds": run.seconds,
    }


def build_report(
    final: FinalConfig,
    splits: Splits,
    runs: list[MemberRun],
    ensemble: Ensemble,
    test: LabelledSet | None,
) -> dict[str, Any]:
    """Everything measured: per member (best epoch vs SWA), every ensemble variant, test."""
    variants = {
        name: {"weights": _floats(combo.weights), "bias": _floats(combo.bias)}
        | {"validation": ensemble.validation[name], "test": ensemble.test.get(name)}
        for name, combo in ensemble.variants.items()
    }
    rows = {"train": len(splits.train_texts), "validation": len(splits.eval_texts)}
    return {
        "label_names": splits.label_names,
        "rows": rows | {"test": None if test is None else len(test.texts)},
        "full_data": final.full_data,
        "provenance": final.provenance,
        "members": [_member_entry(final, run, test) for run in runs],
        "ensemble": {
            "variant": ensemble.chosen,
            "weights_source": ensemble.weights_source,
            "bias_applied": ensemble.variants[ensemble.chosen].bias is not None,
            "variants": variants,
        },
        "test": ensemble.test.get(ensemble.chosen),
        "timings": {
            "members": {run.name: run.seconds for run in runs},
            "ensemble_fit": ensemble.seconds,
        },
    }


def write_report(root: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and the two PNGs of the served ensemble (test, else validation)."""
    ensemble = report["ensemble"]
    split = "test" if report["test"] else "validation"
    metrics = report["test"] or ensemble["variants"][ensemble["variant"]]["validation"]
    names = report["label_names"]
    title = f"ensemble ({ensemble['variant']}) on {split}"
    confusion_matrix_png(metrics["confusion"], names, root / "confusion_matrix.png", title)
    class_distribution_png(
        metrics["pred_distribution"],
        metrics["label_distribution"],
        names,
        root / "class_distribution.png",
        title,
    )
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    (root / "report.json").write_text(text, encoding="utf-8")
    (root / "report.md").write_text(render_markdown(report, split, metrics), encoding="utf-8")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _get(block: dict[str, Any] | None, key: str = "accuracy") -> float | None:
    return None if block is None else block[key]


def _members_md(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Members (accuracy %, validation unless marked)",
        "",
        "| member | backbone | seed | trial | best epoch | best-epoch | SWA | kept | test |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report["members"]:
        best, swa = m["validation"]["best"]["accuracy"], m["validation"]["swa"]["accuracy"]
        lines.append(
            f"| {m['name']} | {m['model']} | {m['seed']} | {m['source_trial']} | "
            f"{m['best']['epoch']:.2f} | {_pct(best)} | {_pct(swa)} | {m['kept']} | "
            f"{_pct(_get(m['test']))} |"
        )
    return lines


def _variant_row(name: str, variant: dict[str, Any], served: str, splits: list[str]) -> str:
    cells = [f"**{name}** (served)" if name == served else name]
    cells.append(", ".join(f"{w:.3f}" for w in variant["weights"]))
    for split in splits:
        block = variant[split]
        cells += [_pct(_get(block)), _pct(_get(block, "macro_f1"))]
        cells.append("-" if block is None else f"{block['nll']:.4f}")
    return "| " + " | ".join(cells) + " |"


def _ensemble_md(ensemble: dict[str, Any]) -> list[str]:
    """Every candidate with its validation (and test) accuracy, macro-F1 and NLL."""
    variants, served = ensemble["variants"], ensemble["variant"]
    has_test = any(v["test"] is not None for v in variants.values())
    splits = ["validation", "test"] if has_test else ["validation"]
    short = {"validation": "val", "test": "test"}
    header = [f"{short[s]} {m}" for s in splits for m in ("acc", "macro-F1", "NLL")]
    lines = [
        f"## Ensemble (served: `{served}`)",
        "",
        f"Served: {ensemble['weights_source']}.",
        "",
        "Tuned weights, the prior bias and the choice of the served variant were all made on "
        "validation: its validation figures are optimistic. Accuracy and macro-F1 in %.",
        "",
        "| variant | weights | " + " | ".join(header) + " |",
        "|" + "---|" * (2 + len(header)),
    ]
    return lines + [_variant_row(n, v, served, splits) for n, v in variants.items()]


def _classes_md(names: list[str], split: str, metrics: dict[str, Any]) -> list[str]:
    lines = [f"## Served ensemble per class ({split})", ""]
    lines += ["| class | recall | predicted share | true share |", "|---|---|---|---|"]
    for k, name in enumerate(names):
        lines.append(
            f"| {name} | {_pct(metrics['recall'][k])} | {_pct(metrics['pred_distribution'][k])} "
            f"| {_pct(metrics['label_distribution'][k])} |"
        )
    return lines


def render_markdown(report: dict[str, Any], split: str, metrics: dict[str, Any]) -> str:
    rows, timings = report["rows"], report["timings"]
    lines = [
        "# Final ensemble report",
        "",
        f"Rows: {rows['train']} train, {rows['validation']} validation, "
        f"{rows['test'] or 'no'} test. Full-data retrain: {report['full_data']}. "
        f"Provenance: {report['provenance'] or 'none recorded'}.",
        "",
        FULL_DATA_NOTE if report["full_data"] else "",
        "",
    ]
    lines += _members_md(report) + [""] + _ensemble_md(report["ensemble"]) + [""]
    lines += _classes_md(report["label_names"], split, metrics)
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    lines += ["![class distribution](class_distribution.png)", "", "## Wall time (s)", ""]
    for name, seconds in timings["members"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    lines.append(f"- ensemble fit: {timings['ensemble_fit']:.1f}; total: {timings['total']:.1f}")
    return "\n".join(lines) + "\n"
