"""Reading (trainer.tables), validating, splitting and subsampling real nsmc4 slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.config import DataConfig
from trainer.data import load_labelled, load_splits
from trainer.errors import BadInput
from trainer.final.predict import input_texts
from trainer.tables import read_table

NAMES = ["strong negative", "weak negative", "weak positive", "strong positive"]


@pytest.fixture
def frame(nsmc_csv) -> pd.DataFrame:
    return pd.read_csv(nsmc_csv(600), dtype={"review": str})


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` in the format its suffix names (the way a user would)."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".tsv"):
        frame.to_csv(path, sep="\t", index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif name.endswith(".json"):
        frame.to_json(path, orient="records", force_ascii=False)
    else:
        frame.to_csv(path, index=False)
    return path


def shares(labels: np.ndarray, k: int = 4) -> np.ndarray:
    return np.bincount(labels, minlength=k) / len(labels)


@pytest.mark.parametrize(
    "suffix",
    [".tsv", ".json", ".jsonl", ".parquet", ".csv.gz", ".tsv.gz", ".jsonl.gz", ".json.gz"],
)
def test_every_format_loads_like_csv(frame, tmp_path, suffix):
    cfg = DataConfig(train=str(write(frame, tmp_path / "a.csv")), validation_fraction=0.2)
    other = cfg.model_copy(update={"train": str(write(frame, tmp_path / f"a{suffix}"))})
    expected, got = load_splits(cfg), load_splits(other)
    assert got.label_names == expected.label_names == ["0", "1", "2", "3"]
    assert got.train_texts == expected.train_texts
    assert got.eval_texts == expected.eval_texts
    np.testing.assert_array_equal(got.train_labels, expected.train_labels)
    np.testing.assert_array_equal(got.eval_labels, expected.eval_labels)


def test_csv_keeps_texts_as_written(frame, tmp_path):
    # pandas would read "NA" as missing and "1.50" as the float 1.5 by default.
    frame.loc[3, "review"], frame.loc[4, "review"] = "NA", "1.50"
    path = write(frame, tmp_path / "a.csv")
    texts = input_texts(read_table(path, what="x"), "review", str(path))
    assert texts[3:5] == ["NA", "1.50"]


def test_numeric_texts_become_strings(frame, tmp_path):
    frame["review"] = np.arange(len(frame)) * 7
    texts, labels = load_labelled(
        str(write(frame, tmp_path / "n.jsonl")),
        DataConfig(train="t"),
        ["0", "1", "2", "3"],
        what="x",
    )
    assert texts[:3] == ["0", "7", "14"]
    np.testing.assert_array_equal(labels, frame["label"])


def test_string_labels_are_sorted_and_mapped(frame, tmp_path):
    frame["label"] = [NAMES[i] for i in frame["label"]]
    splits = load_splits(DataConfig(train=str(write(frame, tmp_path / "s.csv"))))
    assert splits.label_names == sorted(NAMES)
    everything = dict(zip(frame["review"], frame["label"], strict=True))
    for text, label in zip(splits.train_texts, splits.train_labels, strict=True):
        assert splits.label_names[label] == everything[text]


def test_configured_labels_keep_their_order(frame, tmp_path):
    ints = frame["label"].to_numpy()
    named = frame.assign(label=[NAMES[i] for i in ints])
    cfg = DataConfig(train=str(write(named, tmp_path / "s.csv")), labels=NAMES)
    texts, labels = load_labelled(cfg.train, cfg, NAMES, what="data.test")
    np.testing.assert_array_equal(labels, ints)
    # Integer labels with named classes are read as ids into data.labels.
    cfg = cfg.model_copy(update={"train": str(write(frame, tmp_path / "i.csv"))})
    assert load_splits(cfg).label_names == NAMES
    np.testing.assert_array_equal(load_labelled(cfg.train, cfg, NAMES, what="x")[1], ints)


def test_validation_split_is_stratified_and_disjoint(nsmc_csv):
    cfg = DataConfig(train=str(nsmc_csv(2000)), validation_fraction=0.2)
    splits = load_splits(cfg)
    full = pd.read_csv(cfg.train)
    assert len(splits.eval_texts) == 400 and len(splits.train_texts) == 1600
    assert sorted(splits.train_texts + splits.eval_texts) == sorted(full["review"])
    expected = shares(full["label"].to_numpy())
    assert np.abs(splits.label_distribution("eval") - expected).max() < 2 / 400
    assert np.abs(splits.label_distribution() - expected).max() < 2 / 1600


def test_split_is_seeded(nsmc_csv):
    cfg = DataConfig(train=str(nsmc_csv(1000)), split_seed=3)
    first, again = load_splits(cfg), load_splits(cfg)
    other = load_splits(cfg.model_copy(update={"split_seed": 4}))
    assert first.eval_texts == again.eval_texts
    assert first.eval_texts != other.eval_texts
    np.testing.assert_array_equal(first.train_labels, again.train_labels)


def test_subsampling_is_stratified_and_seeded(nsmc_csv):
    cfg = DataConfig(train=str(nsmc_csv(3000)), max_train_samples=500, max_eval_samples=120)
    splits = load_splits(cfg)
    whole = load_splits(cfg.model_copy(update={"max_train_samples": None}))
    assert (len(splits.train_texts), len(splits.eval_texts)) == (500, 120)
    assert set(splits.train_texts) < set(whole.train_texts)
    assert np.abs(splits.label_distribution() - whole.label_distribution()).max() < 2 / 500
    assert np.abs(splits.label_distribution("eval") - whole.label_distribution("eval")).max() < (
        2 / 120
    )
    reseeded = load_splits(cfg.model_copy(update={"split_seed": 1}))
    assert load_splits(cfg).train_texts == splits.train_texts != reseeded.train_texts
    # A limit below the number of classes is still a limit.
    assert len(load_splits(cfg.model_copy(update={"max_eval_samples": 2})).eval_texts) == 2


def test_validation_file_replaces_the_split(nsmc_csv):
    cfg = DataConfig(train=str(nsmc_csv(500)), validation=str(nsmc_csv(200, offset=5000)))
    splits = load_splits(cfg)
    assert len(splits.train_texts) == 500
    assert splits.eval_texts == pd.read_csv(cfg.validation)["review"].tolist()


def test_single_row_class_stays_in_train(frame, tmp_path):
    frame = frame[frame["label"] != 1]
    frame.loc[frame.index[7], "label"] = 1  # the only row of class 1
    splits = load_splits(DataConfig(train=str(write(frame, tmp_path / "r.csv"))))
    assert 1 in splits.train_labels and 1 not in splits.eval_labels


def bad(cfg: DataConfig, *needles: str) -> str:
    with pytest.raises(BadInput) as caught:
        load_splits(cfg)
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def test_missing_unsupported_empty_and_unparsable_files(tmp_path):
    missing = tmp_path / "nope.csv"
    bad(DataConfig(train=str(missing)), str(missing), "not found", "data.train")
    (tmp_path / "a.xlsx").write_bytes(b"PK")
    bad(DataConfig(train=str(tmp_path / "a.xlsx")), "a.xlsx", "unsupported")
    (tmp_path / "e.csv").write_bytes(b"")
    bad(DataConfig(train=str(tmp_path / "e.csv")), "e.csv", "empty")
    (tmp_path / "h.csv").write_text("review,label\n")
    bad(DataConfig(train=str(tmp_path / "h.csv")), "h.csv", "no data rows")
    (tmp_path / "j.json").write_text('{"review": ["a", "b"], "label": [0')
    bad(DataConfig(train=str(tmp_path / "j.json")), "j.json", "cannot read", "JSON")
    bad(DataConfig(train="nobody/nothing:train"), "nobody/nothing", "Hub dataset")


def test_non_utf8_file_names_the_offset(tmp_path):
    path = tmp_path / "k.csv"
    head = "review,label\n좋아요,1\n".encode()
    path.write_bytes(head + "별로".encode("cp949") + b",0\n")
    bad(DataConfig(train=str(path)), str(path), "not UTF-8", f"byte offset {len(head)} ", "line 3")


def test_missing_column_lists_the_columns(nsmc_csv):
    cfg = DataConfig(train=str(nsmc_csv(50)), text_column="text")
    bad(cfg, str(cfg.train), "column 'text'", "'review'", "data.text_column")
    cfg = DataConfig(train=str(nsmc_csv(50)), label_column="stars")
    bad(cfg, "column 'stars'", "'rating'", "data.label_column")


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("review", "", "empty text"),
        ("review", "   ", "empty text"),
        ("label", None, "missing (NaN) label"),
        ("label", -1, "negative label -1"),
    ],
)
def test_bad_cell_names_file_row_and_column(frame, tmp_path, column, value, needle):
    frame[column] = frame[column].astype(object)
    frame.loc[16, column] = value  # the 17th data row
    path = write(frame, tmp_path / "cells.csv")
    bad(DataConfig(train=str(path)), needle, "row 17 ", str(path), f"column {column!r}")


def test_label_outside_configured_labels(frame, tmp_path):
    named = frame.assign(label=[NAMES[i] for i in frame["label"]])
    named.loc[4, "label"] = "meh"
    path = write(named, tmp_path / "l.tsv")
    bad(DataConfig(train=str(path), labels=NAMES), "label 'meh' at row 5 ", "not in data.labels")
    frame.loc[9, "label"] = 7
    path = write(frame, tmp_path / "ids.csv")
    bad(DataConfig(train=str(path), labels=NAMES), "label '7' at row 10 ", str(path))


def test_class_missing_from_train(frame, tmp_path):
    train = write(frame[frame["label"] != 1], tmp_path / "train.csv")
    val = write(frame[frame["label"] == 1].head(5), tmp_path / "val.csv")
    needle = f"class '1' appears in {val}"
    bad(DataConfig(train=str(train), validation=str(val)), needle, "not in the training data")
    cfg = DataConfig(train=str(train), validation=str(val), labels=["0", "1", "2", "3"])
    bad(cfg, needle, "rows 1, 2, 3 (and 2 more)", "not in the training data")


def test_too_few_classes_or_samples(frame, tmp_path):
    one = write(frame[frame["label"] == 3], tmp_path / "one.csv")
    bad(DataConfig(train=str(one)), str(one), "at least 2 classes")
    cfg = DataConfig(train=str(write(frame, tmp_path / "f.csv")), max_train_samples=3)
    bad(cfg, "data.max_train_samples=3", "classes (4)")
    bad(cfg.model_copy(update={"labels": ["a", "a"]}), "duplicate")


def test_test_file_with_unknown_class(frame, tmp_path):
    path = write(frame, tmp_path / "test.csv")
    with pytest.raises(BadInput, match=r"class '3' appears in .*test\.csv"):
        load_labelled(str(path), DataConfig(train="t"), ["0", "1", "2"], what="data.test")


def test_unlabelled_texts_keep_the_frame(nsmc_csv):
    frame = read_table(nsmc_csv(30), what="--input")
    texts = input_texts(frame, "review", "--input")
    assert texts == frame["review"].tolist() and "id" in frame.columns
    assert frame.shape == (30, 5)
