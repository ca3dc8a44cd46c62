"""Final training end to end: real tiny members on nsmc4 slices, SWA, ensemble, bundle, predict."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from search.cli import main
from search.export import to_yaml
from trainer.config import (
    DataConfig,
    EnsembleConfig,
    FinalConfig,
    Hyperparams,
    MemberConfig,
    SwaConfig,
    TrainSettings,
)
from trainer.data import load_splits
from trainer.errors import BadInput
from trainer.final import run_final
from trainer.final.bundle import MANIFEST, load_bundle
from trainer.final.ensemble import apply_bias, combine, fit_ensemble, fit_prior_bias
from trainer.final.predict import bundle_probs, predict_probs
from trainer.metrics import probs_metrics

ROOT = Path(__file__).resolve().parents[2]
PROBS = [f"prob_{k}" for k in range(4)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: tests/trainer/conftest.py


def final_config(backbone: Path, nsmc_csv, cache: Path, n_train: int, **extra) -> FinalConfig:
    data = DataConfig(
        train=str(nsmc_csv(n_train)),
        validation=str(nsmc_csv(200, offset=5000)),
        test=str(nsmc_csv(100, split="test")),
        max_length=32,
        cache_dir=str(cache),  # module fixtures run before the per-test cache isolation
    )
    members = [
        MemberConfig(
            model=str(backbone),
            params=Hyperparams(focal_gamma=gamma, learning_rate=2e-3, epochs=2),
            seed=seed,
            source_trial=trial,
        )
        for trial, (gamma, seed) in enumerate([(1.0, 1042), (2.0, 2043), (0.5, 3044)])
    ]
    provenance = {"study": "nsmc4-test", "trials": [0, 1, 2], "config_hash": "0123abcd"}
    fields = dict(members=members, swa=SwaConfig(last_k=2), provenance=provenance) | extra
    return FinalConfig(data=data, train=TrainSettings(batch_size=32), **fields)


@pytest.fixture(scope="module")
def bundle(tiny_backbone, nsmc_csv, tmp_path_factory) -> tuple[Path, FinalConfig, dict]:
    """`focaltune final` on an exported YAML: 3 members, 600 train / 200 validation rows."""
    folder = tmp_path_factory.mktemp("final")
    cfg = final_config(tiny_backbone, nsmc_csv, folder / "cache", 600)
    (folder / "final.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    out = folder / "runs" / "final"
    assert main(["final", str(folder / "final.yaml"), "--out", str(out), "--no-progress"]) == 0
    return out, cfg, json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_ensemble_of_identical_members_equals_one_member(tiny_backbone, nsmc_csv, tmp_path):
    cfg = final_config(tiny_backbone, nsmc_csv, tmp_path, 300)
    splits = load_splits(cfg.data)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=4)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    probs = predict_probs(model, tokenizer, splits.eval_texts, max_length=32)
    prior = splits.label_distribution("train")
    ensemble = fit_ensemble(
        cfg.ensemble, [probs.copy() for _ in range(3)], splits.eval_labels, prior
    )
    one = probs_metrics(probs, splits.eval_labels)
    for name in ("uniform", "tuned"):
        np.testing.assert_allclose(ensemble.variants[name].weights, 1 / 3)
        assert ensemble.validation[name]["confusion"] == one["confusion"]
        # Two float64 paths (a weighted mean of three copies, then the NLL; the NLL alone):
        # they agree to a few ulps (~1e-15) on any CPU or thread count. 1e-7 leaves room for
        # that and still sees any real difference (a wrong weight moves the NLL by >1e-3).
        assert ensemble.validation[name]["nll"] == pytest.approx(one["nll"], rel=1e-7)
    # The prior bias is fitted by an iterative solver, which can turn an ulp of difference in
    # its input into more than an ulp in its output: give it the very input fit_ensemble does.
    mixed = combine([probs] * 3, ensemble.variants["uniform"].weights, None)
    expected = probs_metrics(apply_bias(mixed, fit_prior_bias(mixed, prior)), splits.eval_labels)
    # Same input, same solver (stopping at steps < 1e-10): equal far within 1e-7.
    assert ensemble.validation["uniform+prior"]["nll"] == pytest.approx(expected["nll"], rel=1e-7)


def test_a_non_empty_destination_is_refused_before_any_training(tiny_backbone, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = FinalConfig(
        data=DataConfig(train=str(tmp_path / "missing.csv")),  # would fail if it were read
        members=[MemberConfig(model=str(tiny_backbone), params=Hyperparams(), seed=1)],
    )
    with pytest.raises(BadInput, match="already exists and is not empty"):
        run_final(cfg, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_a_bad_final_config_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "final.yaml"
    path.write_text("data: {train: x.csv}\nmembers: []\n", encoding="utf-8")
    assert main(["final", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "members" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bundle_holds_every_member_and_the_sha256_of_every_file(bundle):
    out, cfg, _ = bundle
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for name in ("report.json", "report.md", "confusion_matrix.png", "class_distribution.png"):
        assert (out / name).is_file()
    for i in (1, 2, 3):
        for name in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (out / "members" / f"member-{i}" / name).is_file()
    on_disk = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file()}
    del on_disk[MANIFEST]
    assert manifest["files"] == {
        name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in on_disk.items()
    }
    assert [m["seed"] for m in manifest["members"]] == [m.seed for m in cfg.members]
    assert manifest["provenance"] == cfg.provenance
    assert manifest["label_names"] == ["0", "1", "2", "3"]
    assert manifest["precision"] == "fp32"  # what final measured with, predict serves with
    assert [p.name for p in out.parent.iterdir()] == ["final"]  # no staging folder left


@pytest.mark.slow
def test_report_has_best_epoch_and_swa_per_member_and_every_ensemble_variant(bundle):
    out, _, report = bundle
    for member in report["members"]:
        best, swa = (
            member["validation"]["best"]["accuracy"],
            member["validation"]["swa"]["accuracy"],
        )
        assert member["swa"]["epochs"] == [1.0, 2.0]  # K=2 of 2 epochs
        assert (swa >= best) if member["kept"] == "swa" else (best >= swa)
        assert member["test"]["accuracy"] > 0
    variants = report["ensemble"]["variants"]
    assert set(variants) == {
        f"{k}{p}" for k in ("best", "uniform", "tuned") for p in ("", "+prior")
    }
    for variant in variants.values():
        assert len(variant["test"]["recall"]) == 4 and 0 <= variant["test"]["macro_f1"] <= 1
    served = report["ensemble"]["variant"]
    # EnsembleConfig's default, auto: the most accurate candidate on validation.
    top = max(v["validation"]["accuracy"] for v in variants.values())
    assert variants[served]["validation"]["accuracy"] == top
    assert "auto: highest validation accuracy among 6" in report["ensemble"]["weights_source"]
    md = (out / "report.md").read_text(encoding="utf-8")
    assert f"| **{served}** (served) |" in md and "| val NLL |" in md and "| test NLL |" in md
    assert report["test"] == variants[served]["test"] and report["rows"]["test"] == 100
    assert sum(report["test"]["pred_distribution"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_predict_and_a_reloaded_bundle_give_the_same_probabilities(
    bundle, nsmc_csv, tmp_path, capfd
):
    out, cfg, report = bundle
    rows = nsmc_csv(100, split="test")
    predictions = tmp_path / "pred.csv"
    args = ["predict", str(out), "--input", str(rows), "--output", str(predictions)]
    capfd.readouterr()
    assert main([*args, "--batch-size", "16", "--no-progress"]) == 0
    # transformers' per-member "Loading weights" bars and load reports stay quiet.
    assert "Loading weights" not in capfd.readouterr().err
    written = pd.read_csv(predictions)
    source = pd.read_csv(rows)
    assert written["id"].tolist() == source["id"].tolist()
    again = bundle_probs(load_bundle(out), source["review"].tolist(), batch_size=16)
    # Same weights, batches and code path; still not asserted bit-equal, since a BLAS may
    # pick another kernel for a buffer at another alignment (MKL documents this). float32
    # logits then move by ~1e-7 relative, the probabilities by far less than 1e-6.
    np.testing.assert_allclose(written[PROBS].to_numpy(), again, rtol=0, atol=1e-6)
    # The bundle on disk reproduces what `final` measured in memory on the test set, given
    # the same batches (final's eval_batch_size); the same float32 reasoning bounds the NLL.
    same_batches = bundle_probs(
        load_bundle(out), source["review"].tolist(), batch_size=cfg.train.eval_batch_size
    )
    measured = probs_metrics(same_batches, source["label"].to_numpy())
    assert measured["nll"] == pytest.approx(report["test"]["nll"], rel=1e-5)
    assert measured["confusion"] == report["test"]["confusion"]


@pytest.mark.slow
@pytest.mark.process
def test_tampered_weights_exit_2_in_a_real_process(bundle, nsmc_csv, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle[0], copy)
    weights = copy / "members" / "member-3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x04
    weights.write_bytes(bytes(data))
    output = tmp_path / "pred.csv"
    command = [sys.executable, "-m", "search.cli", "predict", str(copy)]
    command += ["--input", str(nsmc_csv(100, split="test")), "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("focaltune: error:") and "member-3/model.safetensors" in last
    assert not output.exists()


@pytest.mark.slow
def test_tampered_manifest_exits_2(bundle, nsmc_csv, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle[0], copy)
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    manifest["weights"] = [1.0, 0.0, 0.0]
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    output = tmp_path / "pred.csv"
    args = ["predict", str(copy), "--input", str(nsmc_csv(100, split="test"))]
    assert main([*args, "--output", str(output)]) == 2
    assert "ensemble.json was modified" in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.slow
def test_full_data_retrains_members_and_says_where_weights_came_from(
    tiny_backbone, nsmc_csv, tmp_path, capfd
):
    cfg = final_config(
        tiny_backbone,
        nsmc_csv,
        tmp_path / "cache",
        300,
        full_data=True,
        ensemble=EnsembleConfig(weights="tuned", prior_correction=False),
    )
    cfg.members = cfg.members[:2]
    capfd.readouterr()
    report = run_final(cfg, tmp_path / "out", progress=False)
    err = capfd.readouterr().err  # without progress, transformers' bars stay quiet too
    assert "Loading weights" not in err and "Writing model shards" not in err
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["full_data"] is True and manifest["bias_applied"] is False
    assert manifest["weights_source"].endswith("in the train-only pass")
    assert all("full_data_train" in m["seconds"] for m in report["members"])
    assert "retrained on train + validation" in (tmp_path / "out" / "report.md").read_text()
    test = pd.read_csv(cfg.data.test)
    texts = test["review"].tolist()
    probs = bundle_probs(load_bundle(tmp_path / "out"), texts, batch_size=cfg.train.eval_batch_size)
    # Test figures are those of the retrained members the bundle holds. Same batches as
    # `final`, but float32 forward passes in two processes' worth of buffers: equal to ~1e-7
    # relative, not bit for bit (a fresh clone failed at a relative tolerance of one in a
    # billion: 1.17613740 vs ...8027).
    assert probs_metrics(probs, test["label"].to_numpy())["nll"] == pytest.approx(
        report["test"]["nll"], rel=1e-5
    )


@pytest.mark.slow
def test_a_failing_member_leaves_no_half_made_bundle(tiny_backbone, nsmc_csv, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trainer.final")
    cfg = final_config(tiny_backbone, nsmc_csv, tmp_path / "cache", 300)
    not_a_model = tmp_path / "not-a-model"  # a local folder: no Hub look-up, fails fast
    not_a_model.mkdir()
    cfg.members = [cfg.members[0], cfg.members[1].model_copy(update={"model": str(not_a_model)})]
    with pytest.raises(BadInput, match="not-a-model"):
        run_final(cfg, tmp_path / "runs" / "out", progress=False)
    assert any(r.message.startswith("member-1: validation") for r in caplog.records)
    assert list((tmp_path / "runs").iterdir()) == []  # member 1 was written, then removed


def test_swa_over_a_flat_tail_averages_snapshots_spread_over_it(tiny_backbone, nsmc_csv, tmp_path):
    swa = SwaConfig(flat_tail=0.5, snapshots=4)
    cfg = final_config(tiny_backbone, nsmc_csv, tmp_path / "cache", 320, swa=swa)
    cfg.members = cfg.members[:1]  # 2 epochs of 10 steps: the tail is the second epoch
    report = run_final(cfg, tmp_path / "out", progress=False)
    epochs = report["members"][0]["swa"]["epochs"]
    assert epochs == pytest.approx([1.3, 1.5, 1.8, 2.0])  # steps 13, 15, 18 and 20 of 20
