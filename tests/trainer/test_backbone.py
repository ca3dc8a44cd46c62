"""Offline backbones built from real nsmc4 reviews: loading, tokenising Korean, MLM, errors."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from trainer.backbone.build import build_backbone, mlm_loss, read_texts
from trainer.backbone.progress import PROGRESS_ENV, phase
from trainer.errors import BadInput

TINY = {"vocab_size": 1000, "layers": 1, "hidden": 32, "heads": 2, "max_length": 32}
HANGUL = re.compile("[가-힣]")


def reviews_of(path: Path) -> list[str]:
    return pd.read_csv(path)["review"].tolist()


def squash(text: str) -> str:
    return "".join(text.split())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def mlm_pair(tmp_path_factory: pytest.TempPathFactory, nsmc_csv) -> tuple[Path, Path]:
    """The same seed and texts, without and with one epoch of MLM pretraining."""
    root = tmp_path_factory.mktemp("mlm")
    train = nsmc_csv(1000)
    fresh = build_backbone(train, root / "fresh", **TINY, seed=3)
    tapted = build_backbone(train, root / "tapted", **TINY, seed=3, mlm_epochs=1)
    return fresh, tapted


def test_tiny_backbone_loads_offline_as_a_classifier(tiny_backbone: Path, nsmc_csv) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_backbone, num_labels=4, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    reviews = reviews_of(nsmc_csv(3, split="test"))
    batch = tokenizer(reviews, padding=True, truncation=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    assert tokenizer.model_max_length == 64 and model.dtype == torch.float32
    report = json.loads((tiny_backbone / "backbone.json").read_text())
    encoder = [p for name, p in model.bert.named_parameters() if not name.startswith("pooler")]
    assert report["parameters"] == sum(p.numel() for p in encoder)
    assert report["texts"] == 2000 and report["vocab_size"] == len(tokenizer) <= 2000
    assert report["mlm_loss"] is None and report["settings"]["intermediate"] == 4 * 64


def test_korean_reviews_tokenise_with_few_unknowns_and_decode_to_hangul(
    tiny_backbone: Path, nsmc_csv
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    reviews = reviews_of(nsmc_csv(300, split="test"))  # never seen by the tokenizer
    ids = tokenizer(reviews, add_special_tokens=False)["input_ids"]
    unknown_id = tokenizer.unk_token_id
    unknown = sum(row.count(unknown_id) for row in ids)
    assert unknown / sum(map(len, ids)) < 0.03
    known = [(text, row) for text, row in zip(reviews, ids, strict=True) if unknown_id not in row]
    decoded = tokenizer.batch_decode([row for _, row in known])
    round_trips = sum(squash(d) == squash(t) for d, (t, _) in zip(decoded, known, strict=True))
    assert len(known) > 0.7 * len(reviews) and round_trips > 0.95 * len(known)
    assert sum(bool(HANGUL.search(text)) for text in decoded) > 0.9 * len(decoded)


def test_saved_tokenizer_keeps_its_normaliser_for_jamo_and_decomposed_hangul(
    tiny_backbone: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    text = "연기 정말 최고ㅋㅋ 다시 보고 싶다ㅠㅠ"
    composed = tokenizer(text)["input_ids"]
    assert tokenizer(unicodedata.normalize("NFD", text))["input_ids"] == composed
    assert squash(tokenizer.decode(composed, skip_special_tokens=True)) == squash(text)
    # Compatibility jamo stay as typed (NFKC would map ㅋ U+314B to conjoining U+110F).
    assert "ㅋ" in "".join(tokenizer.convert_ids_to_tokens(composed))


def test_pairs_get_cls_two_seps_and_segment_ids(tiny_backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    enc = tokenizer("재밌다", "별로다")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 2
    second = tokens.index("[SEP]") + 1
    assert set(enc["token_type_ids"][:second]) == {0} and set(enc["token_type_ids"][second:]) == {1}


def test_mlm_pretraining_lowers_held_out_loss_and_changes_the_encoder(
    mlm_pair: tuple[Path, Path], nsmc_csv
) -> None:
    fresh, tapted = mlm_pair
    tokenizer = AutoTokenizer.from_pretrained(tapted)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(fresh).get_vocab()
    held_out = reviews_of(nsmc_csv(300, offset=300, split="test"))
    losses = [
        mlm_loss(AutoModelForMaskedLM.from_pretrained(f, dtype=torch.float32), tokenizer, held_out)
        for f in (fresh, tapted)
    ]
    assert losses[1] < losses[0] - 0.05
    recorded = json.loads((tapted / "backbone.json").read_text())["mlm_loss"]
    assert recorded["after"] < recorded["before"]
    before, after = weights(fresh), weights(tapted)
    assert before.keys() == after.keys()
    changed = [k for k in before if k.startswith("bert.") and not torch.equal(before[k], after[k])]
    assert "bert.embeddings.word_embeddings.weight" in changed and len(changed) > 10


def test_same_seed_builds_identical_weights_and_another_seed_differs(
    nsmc_csv, tmp_path: Path
) -> None:
    train = nsmc_csv(300, offset=5000)
    settings = {**TINY, "vocab_size": 500, "mlm_epochs": 1}
    first = weights(build_backbone(train, tmp_path / "a", **settings, seed=7))
    again = weights(build_backbone(train, tmp_path / "b", **settings, seed=7))
    other = weights(build_backbone(train, tmp_path / "c", **settings, seed=8))
    # Initialisation is exact (same RNG stream); MLM training is float32 arithmetic whose
    # kernels may round differently between runs on some CPUs, so allow float32 noise:
    # another seed differs by whole initialisation scales (~0.02).
    for k in first:
        torch.testing.assert_close(first[k], again[k], rtol=1e-4, atol=1e-5)
    assert not torch.equal(first["bert.encoder.layer.0.output.dense.weight"],
                           other["bert.encoder.layer.0.output.dense.weight"])  # fmt: skip


def test_text_files_of_every_format_give_the_same_texts(nsmc_csv, tmp_path: Path) -> None:
    frame = pd.read_csv(nsmc_csv(50))
    frame.to_csv(tmp_path / "t.tsv.gz", sep="\t", index=False)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True, force_ascii=False)
    frame.to_parquet(tmp_path / "t.parquet")
    expected = frame["review"].str.strip().tolist()
    for name in ("t.tsv.gz", "t.jsonl", "t.parquet"):
        assert read_texts(tmp_path / name, "review", None, 0) == expected
    sample = read_texts(tmp_path / "t.parquet", "review", 10, 0)
    assert len(sample) == 10 and sample == read_texts(tmp_path / "t.parquet", "review", 10, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": "missing.csv"}, r"missing\.csv not found"),
        ({"text_column": "comment"}, r"'comment' not found in .*columns: .*review"),
        ({"train": "empty.csv"}, r"'review' of .*empty\.csv has no non-empty texts"),
        ({"hidden": 30, "heads": 4}, r"hidden=30 must be a positive multiple of heads=4"),
        ({"vocab_size": 50}, r"vocab_size=50 is too small"),
        ({"out": "exists"}, r"exists already exists"),
    ],
)
def test_bad_input_names_what_and_where(
    change: dict, message: str, nsmc_csv, tmp_path: Path
) -> None:
    pd.DataFrame({"review": ["", "  ", None], "label": [0, 1, 2]}).to_csv(
        tmp_path / "empty.csv", index=False
    )
    (tmp_path / "exists").mkdir()
    args = {**TINY, "train": nsmc_csv(50), "out": "new", **change}
    train, out = args.pop("train"), tmp_path / args.pop("out")
    train = tmp_path / train if isinstance(train, str) else train
    with pytest.raises(BadInput, match=message) as err:
        build_backbone(train, out, **args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "new").exists()


def test_failure_midway_leaves_no_half_made_folder(
    nsmc_csv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a crash while writing weights (disk full, kill) cannot be caused
    # portably, so the model save raises after the tokenizer files are already written.
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr("transformers.BertForMaskedLM.save_pretrained", crash)
    with pytest.raises(OSError, match="no space left"):
        build_backbone(nsmc_csv(50), tmp_path / "out", **TINY)
    assert list(tmp_path.iterdir()) == []


def focaltune_command() -> list[str]:
    script = Path(sys.executable).parent / "focaltune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


def focaltune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*focaltune_command(), *args]
    environment = None if env is None else os.environ | env
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


@pytest.mark.process
def test_cli_builds_a_backbone(nsmc_csv, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    flags = ["--vocab-size", "500", "--layers", "1", "--hidden", "32", "--max-length", "32"]
    done = focaltune("backbone", "build", "--train", str(nsmc_csv(200)), "--out", str(out), *flags)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "backbone.json").read_text())
    assert str(out) in done.stdout and f"{report['parameters']:,}" in done.stdout
    assert report["settings"]["hidden"] == 32 and (out / "model.safetensors").is_file()


@pytest.mark.process
def test_cli_missing_train_file_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    done = focaltune("backbone", "build", "--train", str(missing), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(missing) in done.stderr
    assert not (tmp_path / "o").exists()


# Progress: the interval between plain lines is 30 s; these tests set it small through
# $FOCALTUNE_PROGRESS_SECONDS (PROGRESS_ENV) to see several lines in a few seconds.
INTERVAL = 0.2
PHASE_LINE = re.compile(r"^INFO trainer\.backbone\.progress: (.*)$", re.MULTILINE)


@pytest.mark.process
def test_a_build_logged_to_a_pipe_shows_each_phase_without_flooding(
    nsmc_csv, tmp_path: Path
) -> None:
    flags = ["--vocab-size", "1000", "--layers", "1", "--hidden", "32", "--max-length", "32"]
    flags += ["--embedding-init", "corpus", "--mlm-epochs", "2", "--mlm-batch-size", "16"]
    train, out = str(nsmc_csv(1000)), str(tmp_path / "bb")
    # capture_output: stderr is a pipe, not a terminal, so plain lines instead of bars.
    done = focaltune("backbone", "build", "--train", train, "--out", out, *flags,
                     env={PROGRESS_ENV: str(INTERVAL)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = PHASE_LINE.findall(done.stderr)
    for start in ("tokenizer: splitting words", "tokenizer: learning merges", "tokenizer: done",
                  "vectors: pair counts, PMI, SVD, 14 steps", "vectors: done",
                  "MLM: training", "MLM step 1/"):  # fmt: skip
        assert any(line.startswith(start) for line in lines), (start, done.stderr)
    # Paced: a periodic line comes at least INTERVAL after the phase's previous line, so a
    # phase of S seconds has at most S / INTERVAL of them, beyond its 12 fixed lines here:
    # starts of steps (tokenizer 2, vectors 1, MLM 3), MLM's steps 1, 10 and 100, 3 ends.
    report = json.loads((tmp_path / "bb" / "backbone.json").read_text())
    seconds = sum(report[f"seconds_{name}"] for name in ("tokenizer", "vectors", "mlm"))
    assert len(lines) <= seconds / INTERVAL + 12 + 3  # + 3: the three phases' rounding
    periodic = [x for x in lines if re.match(r"MLM step (?!1/|10/|100/|120/)", x)]
    assert periodic, done.stderr  # ~4 s of MLM steps: some lines between the fixed ones
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr  # no bars in a log
    assert done.stderr.count("\n") <= len(lines) + 10, done.stderr


def test_a_counted_step_logs_its_share_and_eta(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, str(INTERVAL))
    caplog.set_level(logging.INFO, logger="trainer.backbone")
    with phase("tokenizer", "splitting words", 100, "texts") as progress:
        for text in progress.count(range(100), every=10):
            if text % 10 == 0:
                time.sleep(INTERVAL / 4)  # 2.5 intervals in all
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "tokenizer: splitting words, 100 texts"
    counted = r"tokenizer: splitting words, \d+/100 texts \(\d+%\), elapsed \w+, ETA \w+$"
    assert 1 <= sum(bool(re.match(counted, x)) for x in lines) <= 2
    assert lines[-1].startswith("tokenizer: done in")


def test_a_phase_silent_in_native_code_still_logs_paced_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(PROGRESS_ENV, str(INTERVAL))
    caplog.set_level(logging.INFO, logger="trainer.backbone")
    with phase("merges", "learning"):
        time.sleep(6 * INTERVAL)  # like a native call that reports nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "merges: learning" and lines[-1].startswith("merges: done in")
    periodic = [x for x in lines if x.startswith("merges: learning, elapsed")]
    assert 3 <= len(periodic) <= 6


def test_a_bad_progress_interval_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROGRESS_ENV, "soon")
    message = r"FOCALTUNE_PROGRESS_SECONDS='soon' must be a positive number of seconds"
    with pytest.raises(BadInput, match=message), phase("tokenizer", "splitting words"):
        pass


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_an_eta_and_no_plain_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trainer.backbone")
    screen = Terminal()
    with phase("tokenizer", "splitting words", 100, "texts", stream=screen) as progress:
        for _ in progress.count(range(100), every=10):
            pass
        progress.restart("learning merges")
    shown = screen.getvalue()
    assert "tokenizer: splitting words" in shown and "100/100" in shown
    assert "tokenizer: learning merges" in shown
    assert "-:--:--" in shown or "0:00:00" in shown  # rich's ETA column
    assert not caplog.records  # the bar replaces the plain lines
