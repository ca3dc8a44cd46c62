"""`make quality`: does the product learn, and does each stage of it pay? One run, one table.

On one machine, against the baselines a user would try first, scored on ``test.csv.gz``:
- the majority class and TF-IDF (character 1-3-grams) + logistic regression trained on
  exactly the labelled rows the product used (the search slice and the final rows);
- one ``focaltune train`` run with the seed experiment's best settings on the search slice;
- the product path as a user runs it: ``launch`` a search on the slice -> ``export`` the top 3
  -> ``final`` with ``full_data`` on the final rows -> ``predict`` the test file. Each member
  (the weights it kept, best epoch or SWA), every ensemble variant and the served bundle.
Accuracy, macro-F1, per-class recall, predicted vs true class shares, seconds per stage;
``quality.json`` and ``quality.md`` in ``--out``. Not a test: it trains for a long time.

    python benchmarks/quality.py --out runs/quality              # the full run
    python benchmarks/quality.py --out /tmp/q --smoke            # minutes, checks the plumbing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.backbone import PRESETS, cached_backbone  # noqa: E402
from trainer.metrics import probs_metrics  # noqa: E402

BIN = Path(sys.executable).parent
# The seed experiment's best single model (configs/demo.yaml enqueues it too); its learning
# rate is the one measured for the standard backbone (README, Backbone recipe).
SEED_BEST = {"focal_gamma": 2.965, "label_smoothing": 0.185, "learning_rate": 5e-4, "epochs": 2}
# How `export` picks the 3 members: the 3 best trials, or the best trial with 3 seeds.
MEMBERS = {"top3": ("--top-k", "3"), "seeds": ("--seeds", "3")}
SIZES = {  # search rows, trials, final rows, test rows (None: all)
    "full": (4000, 8, 200_000, None),
    "smoke": (300, 2, 600, 500),
}


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    search_rows, trials, final_rows, test_rows = SIZES["smoke" if args.smoke else "full"]
    search_rows, final_rows = args.search_rows or search_rows, args.final_rows or final_rows
    times: dict[str, float] = {}
    backbone = stage(times, "backbone", lambda: get_backbone(args, out))
    slices = stage(times, "slices", lambda: write_slices(args, out, search_rows, final_rows))
    test = read_test(Path(args.nsmc4) / "test.csv.gz", test_rows)
    test.to_csv(out / "test.csv", index=False)
    rows = baselines(slices, test, times)
    rows.append(stage(times, "train", lambda: train_run(out, backbone, slices, args.smoke)))
    stage(times, "search", lambda: search(out, backbone, slices["search"], trials, args.smoke))
    stage(
        times,
        "export",
        lambda: cli(
            "export",
            "--storage",
            storage(out),
            "--study",
            "quality",
            *MEMBERS[args.members],
            "--out",
            str(out / "final.yaml"),
        ),
    )
    set_final_data(out, slices["final"])
    stage(
        times,
        "final",
        lambda: cli(
            "final",
            str(out / "final.yaml"),
            "--out",
            str(out / "bundle"),
            "--overwrite",
            "--no-progress",
        ),
    )
    stage(
        times,
        "predict",
        lambda: cli(
            "predict",
            str(out / "bundle"),
            "--input",
            str(out / "test.csv"),
            "--output",
            str(out / "pred.csv"),
        ),
    )
    rows += product_rows(out, test, final_rows, times)
    backbone_info = json.loads((backbone / "backbone.json").read_text())
    result = {
        "rows": rows,
        "seconds": times,
        "backbone": backbone_info,
        "sizes": {"search": search_rows, "final": final_rows, "test": len(test), "trials": trials},
        "members": args.members,
        "true_distribution": shares(test.label.to_numpy(), 4),
    }
    (out / "quality.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "quality.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quality", help="work folder (default runs/quality)")
    parser.add_argument("--nsmc4", default=str(ROOT.parent / "shared/data/nsmc4"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, random backbone")
    parser.add_argument("--search-rows", type=int, help="labelled rows of the search slice")
    parser.add_argument("--final-rows", type=int, help="labelled rows the final members use")
    parser.add_argument(
        "--members", choices=MEMBERS, default="seeds", help="export's choice (default seeds)"
    )
    parser.add_argument("--backbone", help="a backbone folder (default: the standard, cached)")
    parser.add_argument(
        "--cache",
        default=str(Path.home() / ".cache/focaltune/backbones"),
        help="backbone cache folder (make backbone's)",
    )
    return parser.parse_args()


def stage(times: dict[str, float], name: str, run: Any) -> Any:
    started = time.perf_counter()
    value = run()
    times[name] = round(time.perf_counter() - started, 1)
    print(f"[quality] {name}: {times[name]:.0f} s", flush=True)
    return value


def cli(*args: str) -> None:
    subprocess.run([str(BIN / "focaltune"), *args], check=True, cwd=ROOT)


def get_backbone(args: argparse.Namespace, out: Path) -> Path:
    """The standard backbone from the cache (its one-time build time is in its backbone.json);
    the smoke run builds a tiny random one from the first 2,000 reviews."""
    if args.backbone:
        return Path(args.backbone)
    train = Path(args.nsmc4) / "train.csv.gz"
    if args.smoke:
        small = pd.read_csv(train, nrows=2000)
        small.to_csv(out / "backbone-texts.csv", index=False)
        train = out / "backbone-texts.csv"
    preset = PRESETS["tiny" if args.smoke else "standard"]
    return cached_backbone(train, args.cache, preset)[0]


def write_slices(args: argparse.Namespace, out: Path, search_rows: int, final_rows: int):
    """Stratified samples of train.csv.gz: the final rows, and the search slice inside them."""
    train = pd.read_csv(Path(args.nsmc4) / "train.csv.gz", usecols=["id", "label", "review"])
    final, _ = train_test_split(train, train_size=final_rows, stratify=train.label, random_state=0)
    search, _ = train_test_split(
        final, train_size=search_rows, stratify=final.label, random_state=0
    )
    paths = {"final": out / "final-rows.csv", "search": out / "search-rows.csv"}
    final.to_csv(paths["final"], index=False)
    search.to_csv(paths["search"], index=False)
    return paths


def read_test(path: Path, rows: int | None) -> pd.DataFrame:
    return pd.read_csv(path, usecols=["id", "label", "review"], nrows=rows)


def shares(labels: np.ndarray, n: int) -> list[float]:
    return (np.bincount(labels, minlength=n) / max(len(labels), 1)).round(4).tolist()


METRICS = ("accuracy", "macro_f1", "recall", "pred_distribution")  # a table row's figures


def row(system: str, rows: int, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row: what was trained on how many labelled rows, and its test figures."""
    return {"system": system, "labelled_rows": rows} | {k: metrics[k] for k in METRICS} | extra


def scored(name: str, rows: int, probs: np.ndarray, test: pd.DataFrame, **extra) -> dict:
    return row(name, rows, probs_metrics(probs, test.label.to_numpy()), **extra)


def baselines(slices: dict[str, Path], test: pd.DataFrame, times: dict) -> list[dict]:
    rows = []
    for name, path in (("search", slices["search"]), ("final", slices["final"])):
        train = pd.read_csv(path)
        counts = np.bincount(train.label, minlength=4)
        majority = np.tile(counts == counts.max(), (len(test), 1)).astype(float)
        rows.append(
            scored("majority class", len(train), majority / majority.sum(1, keepdims=True), test)
        )
        started = time.perf_counter()
        rows.append(scored("TF-IDF char 1-3 + LR", len(train), tfidf_lr(train, test), test))
        times[f"tfidf_{name}"] = round(time.perf_counter() - started, 1)
    return rows


def tfidf_lr(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The usual first try: character n-grams within words, sublinear tf, L2 logistic
    regression (scikit-learn defaults otherwise)."""
    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True, min_df=2
    )
    model = LogisticRegression(max_iter=2000)
    model.fit(vectorizer.fit_transform(train.review.astype(str)), train.label)
    return model.predict_proba(vectorizer.transform(test.review.astype(str)))


def study_config(out: Path, backbone: Path, train: Path, trials: int, smoke: bool) -> dict:
    config = yaml.safe_load((ROOT / "configs/demo.yaml").read_text(encoding="utf-8"))
    config["study"].update(name="quality", storage=storage(out), n_trials=trials)
    config["data"] = {"train": str(train), "max_length": 64 if smoke else 128}
    config["model"]["name_or_path"] = str(backbone)
    config["train"].update(eval_batch_size=256)
    config["space"].update(learning_rate=[1e-4, 2e-3], epochs=[1, 1 if smoke else 3])
    config["study"]["enqueue"] = [SEED_BEST | {"focal_alpha": [1, 1, 1, 1]}]
    return config


def storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def train_run(out: Path, backbone: Path, slices: dict[str, Path], smoke: bool) -> dict:
    """One `focaltune train` on the search slice, scored on the test file after its last
    epoch (the test file is its validation set: it reports every evaluation; we take the
    last, so nothing is chosen on test)."""
    config = study_config(out, backbone, slices["search"], 1, smoke)
    config["data"]["validation"] = str(out / "test.csv")
    config["train"]["evals_per_epoch"] = 1
    (out / "train.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    params = SEED_BEST | ({"epochs": 1} if smoke else {})
    cli(
        "train",
        str(out / "train.yaml"),
        "--params",
        json.dumps(params),
        "--out",
        str(out / "train"),
    )
    last = json.loads((out / "train" / "metrics.json").read_text())["evaluations"][-1]
    rows = len(pd.read_csv(slices["search"]))
    return row("focaltune train, seed's best settings", rows, last)


def search(out: Path, backbone: Path, train: Path, trials: int, smoke: bool) -> None:
    config = study_config(out, backbone, train, trials, smoke)
    (out / "study.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    cli("launch", str(out / "study.yaml"), "--workers", "2")


def set_final_data(out: Path, final_rows: Path) -> None:
    """The exported config, pointed at the final rows (train + validation in full-data
    mode) and the test file."""
    path = out / "final.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["data"].update(
        train=str(final_rows),
        test=str(out / "test.csv"),
        max_train_samples=None,
        max_eval_samples=None,
    )
    config["full_data"] = True
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


def product_rows(out: Path, test: pd.DataFrame, rows: int, times: dict) -> list[dict]:
    report = json.loads((out / "bundle" / "report.json").read_text())
    result = []
    for member in report["members"]:
        kept = member["kept"]
        name = f"member {member['name']} ({kept})"
        result.append(row(name, rows, member["test"], **validated(member["validation"][kept])))
    ensemble = report["ensemble"]
    for name, variant in ensemble["variants"].items():
        result.append(
            row(f"ensemble {name}", rows, variant["test"], **validated(variant["validation"]))
        )
    served = pd.read_csv(out / "pred.csv")
    probs = served[[c for c in served.columns if c.startswith("prob_")]].to_numpy()
    result.append(
        scored(
            f"served bundle ({ensemble['variant']})",
            rows,
            probs,
            test,
            seconds_predict=times["predict"],
        )
    )
    return result


def validated(metrics: dict[str, Any]) -> dict[str, float]:
    return {"validation_accuracy": metrics["accuracy"], "validation_macro_f1": metrics["macro_f1"]}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Test rows: {result['sizes']['test']:,}; true class shares "
        f"{' / '.join(_pct(s) for s in result['true_distribution'])} %.",
        "",
        "| system | labelled rows | val acc | val macro-F1 | test acc | macro-F1 | "
        "recall per class | predicted shares |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        val = [row.get(f"validation_{k}") for k in ("accuracy", "macro_f1")]
        val_cells = " | ".join("" if v is None else _pct(v) for v in val)
        lines.append(
            f"| {row['system']} | {row['labelled_rows']:,} | {val_cells} "
            f"| {_pct(row['accuracy'])} | {_pct(row['macro_f1'])} | "
            f"{' / '.join(_pct(r) for r in row['recall'])} | "
            f"{' / '.join(_pct(s) for s in row['pred_distribution'])} |"
        )
    lines += [
        "",
        f"Members: {result['members']} (export {' '.join(MEMBERS[result['members']])}).",
        "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()),
    ]
    built = result["backbone"].get("seconds_total")
    lines.append(f"Backbone (one-time, cached): built in {built:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
