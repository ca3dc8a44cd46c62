"""Prediction: one inference path, the bundle's ensemble, the predictions file, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from search.cli import main
from trainer.errors import BadInput
from trainer.final.bundle import load_bundle, load_member, save_member, write_manifest
from trainer.final.predict import bundle_probs, predict_file, predict_probs

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["0", "1", "2", "3"]
PROBS = [f"prob_{name}" for name in LABELS]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: tests/trainer/conftest.py


@pytest.fixture(scope="module")
def member(tiny_backbone: Path) -> tuple[torch.nn.Module, object]:
    """A tiny classifier with a trained-looking (random but non-uniform) head."""
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=len(LABELS), dtype=torch.float32
    )
    with torch.no_grad():
        # A head that spreads the probabilities (whatever the backbone's own init): equalities
        # between batchings must be earned, not given by a saturated or uniform softmax.
        model.classifier.weight.normal_(0.0, 0.5)
    return model, AutoTokenizer.from_pretrained(tiny_backbone)


def write_bundle(root: Path, member, names: list[str], weights: list[float], **extra) -> Path:
    """Copies of ``member`` as ``names`` and their manifest (``extra`` goes into it)."""
    for name in names:
        save_member(*member, root / "members" / name, LABELS)
    return write_body(root, names, weights, **extra)


def write_body(root: Path, names: list[str], weights: list[float], **extra) -> Path:
    """The manifest over the member folders already in ``root``, id column configured."""
    data = {"text_column": "review", "label_column": "label", "id_column": "id", "max_length": 32}
    body = {"label_names": LABELS, "data": data, "weights": weights}
    body |= {"members": [{"name": n, "path": f"members/{n}"} for n in names]}
    write_manifest(root, body | {"bias": None, "bias_applied": False} | extra)
    return root


@pytest.fixture(scope="module")
def bundle_dir(member, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three identical members, uniform weights."""
    root = tmp_path_factory.mktemp("predict") / "bundle"
    return write_bundle(root, member, ["member-1", "member-2", "member-3"], [1 / 3] * 3)


@pytest.fixture
def reviews(nsmc_csv) -> Path:
    return nsmc_csv(100, split="test")


def read_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)  # pandas reads floats back exactly (round trip)


def test_ensemble_of_identical_members_equals_one_member(
    bundle_dir: Path, member, reviews: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.csv"
    predict_file(bundle_dir, reviews, out, batch_size=16, progress=False)
    texts = pd.read_csv(reviews)["review"].tolist()
    single = predict_probs(*member, texts, max_length=32, batch_size=16)
    assert single.max(axis=1).mean() > 0.4, "probabilities must not be uniform for this test"
    written = read_output(out)
    # The bundle's members are reloaded from disk: the same float32 computation, but a BLAS
    # may choose another kernel for another buffer alignment, so ~1e-7, not bit-equal.
    np.testing.assert_allclose(written[PROBS].to_numpy(), single, rtol=0, atol=1e-6)
    assert written["label"].tolist() == single.argmax(axis=1).tolist()


def test_output_keeps_the_id_column_and_adds_label_and_probabilities(
    bundle_dir: Path, reviews: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sub" / "pred.tsv"
    predict_file(bundle_dir, reviews, out, progress=False)
    written = pd.read_csv(out, sep="\t")
    source = pd.read_csv(reviews)
    assert list(written.columns) == ["id", "label", "label_name", *PROBS]
    assert written["id"].tolist() == source["id"].tolist()
    assert written["label_name"].astype(str).tolist() == [LABELS[i] for i in written["label"]]
    # float64 softmax, written with 17 significant digits: rows sum to 1 within ~1e-15.
    np.testing.assert_allclose(written[PROBS].sum(axis=1), 1.0, atol=1e-12)
    assert [p.name for p in out.parent.iterdir()] == ["pred.tsv"]  # no temp file left


def test_probabilities_do_not_depend_on_batching(member, reviews: Path) -> None:
    texts = pd.read_csv(reviews)["review"].tolist()[:40]
    alone = predict_probs(*member, texts, max_length=32, batch_size=1)
    batched = predict_probs(*member, texts, max_length=32, batch_size=64)
    # Rows come back in input order, and padding inside a batch changes nothing real: other
    # matrix shapes round float32 differently (~1e-7), far inside 1e-5.
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.ptp(alone, axis=0).max() > 1e-3, (
        "rows must differ for the order check to mean anything"
    )


def _cli(bundle: Path, source: Path, out: Path, capsys) -> tuple[int, str]:
    code = main(["predict", str(bundle), "--input", str(source), "--output", str(out)])
    return code, capsys.readouterr().err


def test_missing_text_column_exits_2_and_writes_nothing(
    bundle_dir: Path, reviews: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "no_text.csv"
    pd.read_csv(reviews).rename(columns={"review": "document"}).to_csv(source, index=False)
    out = tmp_path / "pred.csv"
    code, err = _cli(bundle_dir, source, out, capsys)
    assert code == 2 and not out.exists()
    assert "text column 'review'" in err and "document" in err and len(err.splitlines()) == 1


def test_empty_input_file_exits_2(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("")
    code, err = _cli(bundle_dir, source, tmp_path / "pred.csv", capsys)
    assert code == 2 and "empty" in err and not (tmp_path / "pred.csv").exists()


def test_labels_from_another_label_set_exit_2(
    bundle_dir: Path, reviews: Path, tmp_path: Path, capsys
) -> None:
    frame = pd.read_csv(reviews, dtype={"label": str})
    frame.loc[7, "label"] = "very good"
    source = tmp_path / "other_labels.csv"
    frame.to_csv(source, index=False)
    code, err = _cli(bundle_dir, source, tmp_path / "pred.csv", capsys)
    assert code == 2 and "'very good' at row 8" in err and "different label set" in err


def test_unsupported_output_suffix_is_refused(bundle_dir: Path, reviews: Path, tmp_path) -> None:
    with pytest.raises(BadInput, match="unsupported suffix"):
        predict_file(bundle_dir, reviews, tmp_path / "pred.xlsx", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_bundles_inference_precision_is_the_one_predict_uses(member, reviews, tmp_path):
    model, tokenizer = member
    root = write_bundle(tmp_path / "bf16-bundle", member, ["m"], [1.0], precision="bf16")
    texts = pd.read_csv(reviews)["review"].tolist()[:40]
    served = bundle_probs(load_bundle(root), texts)
    kwargs = {"max_length": 32, "batch_size": 64}
    bf16 = predict_probs(model, tokenizer, texts, precision="bf16", **kwargs)
    fp32 = predict_probs(model, tokenizer, texts, precision="fp32", **kwargs)
    np.testing.assert_allclose(served, bf16, atol=1e-6)  # served in the recorded precision
    assert np.abs(bf16 - fp32).max() > 1e-4  # ...which is observably not fp32


def test_a_one_hot_bundle_serves_its_member_alone_and_never_loads_the_others(
    member, reviews: Path, tmp_path: Path
) -> None:
    # What a bundle serving the "best" variant holds: weight 1 on one member, 0 elsewhere.
    root = tmp_path / "one-hot"
    model, tokenizer = member
    for name in ("broken", "member-2"):
        save_member(model, tokenizer, root / "members" / name, LABELS)
    (root / "members" / "broken" / "model.safetensors").unlink()  # loading it would fail
    bundle = load_bundle(write_body(root, ["broken", "member-2"], [0.0, 1.0]))
    with pytest.raises(BadInput, match="broken cannot be loaded"):
        load_member(bundle, bundle.members[0], torch.device("cpu"))
    texts = pd.read_csv(reviews)["review"].tolist()[:40]
    served = bundle_probs(bundle, texts, batch_size=16)
    alone = predict_probs(model, tokenizer, texts, max_length=32, batch_size=16)
    # Reloaded from disk: the same float32 computation, equal to ~1e-7, not bit for bit.
    np.testing.assert_allclose(served, alone, rtol=0, atol=1e-6)


# The CLI run in a fresh process, as a user runs it (transformers' bar and logging settings
# are per process, so in-process an earlier test could have silenced them for us); ``loud``
# first puts back transformers' own behaviour by making the bundle's quiet_loading a no-op.
LOUD = "import contextlib, trainer.final.bundle as b; b.quiet_loading = contextlib.nullcontext; "
CLI = "import sys; from search.cli import main; sys.exit(main(sys.argv[1:]))"


def _predict_output(bundle: Path, source: Path, out: Path, loud: bool = False) -> str:
    # Without the settings that would hide the bars whatever the code does.
    hiding = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    env = {k: v for k, v in os.environ.items() if k not in hiding} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", (LOUD if loud else "") + CLI, "predict", str(bundle)]
    result = subprocess.run(
        [*command, "--input", str(source), "--output", str(out), "--batch-size", "50"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    return result.stdout


@pytest.mark.process
def test_predict_prints_no_loading_bar_per_member(bundle_dir: Path, reviews: Path, tmp_path):
    output = _predict_output(bundle_dir, reviews, tmp_path / "pred.csv")
    assert "Loading weights" not in output, output
    assert "100 predictions ->" in output  # the product's own lines are still there
    # The control: without quiet_loading transformers does print one bar per member, so the
    # check above would see one if a load escaped it (and notices a renamed bar).
    loud = _predict_output(bundle_dir, reviews, tmp_path / "loud.csv", loud=True)
    assert loud.count("Loading weights") >= 3, loud
