"""The tokenisation cache, with real WordPiece tokenizers trained on nsmc4 reviews."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset, load_from_disk
from tokenizers import BertWordPieceTokenizer
from tokenizers.processors import BertProcessing
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trainer.tokens import _publish, cache_key, cache_root, encode_cached, tokenizer_fingerprint

ROOT = Path(__file__).resolve().parents[2]

# Run by a second Python process, as another worker would: the tokenizer is made
# unusable, so the only way to get the dataset is the cache.
SECOND_WORKER = """
import json, logging, sys
import numpy as np
from transformers import AutoTokenizer
from trainer.tokens import encode_cached

logging.basicConfig(level=logging.INFO)
folder, data, cache, out, mode = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(folder)

def refuse(*args, **kwargs):
    raise RuntimeError("the tokenizer was called")

if mode == "refuse":
    type(tokenizer).__call__ = refuse
    type(tokenizer)._encode_plus = refuse
texts, labels = json.load(open(data))
dataset = encode_cached(texts, np.array(labels), tokenizer, 24, cache)
json.dump(dataset.to_dict(), open(out, "w"))
"""


@pytest.fixture(scope="module")
def reviews(nsmc_csv) -> tuple[list[str], np.ndarray]:
    frame = pd.read_csv(nsmc_csv(500))
    return frame["review"].tolist(), frame["label"].to_numpy()


@pytest.fixture(scope="module")
def make_tokenizer(tmp_path_factory, reviews):
    """Factory: train a WordPiece tokenizer on the reviews, save it, return its folder."""

    def make(vocab_size: int, type_ids: bool = True) -> Path:
        wordpiece = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
        wordpiece.train_from_iterator(reviews[0], vocab_size=vocab_size)
        backend = wordpiece._tokenizer
        cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        backend.post_processor = BertProcessing(("[SEP]", sep), ("[CLS]", cls))
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            **{f"{t}_token": f"[{t.upper()}]" for t in ("unk", "pad", "cls", "sep", "mask")},
            model_input_names=inputs if type_ids else [inputs[0], inputs[2]],
        )
        folder = tmp_path_factory.mktemp(f"wordpiece-{vocab_size}-{type_ids}")
        tokenizer.save_pretrained(folder)
        return folder

    return make


def test_encodings_are_truncated_unpadded_and_labelled(make_tokenizer, reviews, tmp_path):
    texts, labels = reviews
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(1200))
    dataset = encode_cached(texts, labels, tokenizer, 16, tmp_path)
    assert set(dataset.column_names) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
        "length",
    }
    lengths = np.array([len(ids) for ids in dataset["input_ids"]])
    assert lengths.max() == 16 and lengths.min() < 16  # truncated, and not padded
    np.testing.assert_array_equal(dataset["length"], lengths)
    np.testing.assert_array_equal(dataset["labels"], labels)
    for row in (0, 123, 499):
        direct = tokenizer(texts[row], truncation=True, max_length=16)
        assert dataset[row]["input_ids"] == direct["input_ids"]
        assert dataset[row]["input_ids"][0] == tokenizer.cls_token_id
        assert dataset[row]["attention_mask"] == [1] * lengths[row]


def test_columns_follow_the_tokenizer(make_tokenizer, reviews, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer(1200, type_ids=False))
    dataset = encode_cached(reviews[0][:50], None, tokenizer, 32, tmp_path)
    assert dataset.column_names == ["input_ids", "attention_mask", "length"]


def start_worker(folder: Path, data: Path, cache: Path, out: Path, mode: str) -> subprocess.Popen:
    args = [str(folder), str(data), str(cache), str(out), mode]
    return subprocess.Popen(
        [sys.executable, "-c", SECOND_WORKER, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def finish(worker: subprocess.Popen) -> str:
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 0, stderr[-2000:]
    return stderr


def run_second_worker(folder: Path, data: Path, cache: Path, out: Path) -> str:
    return finish(start_worker(folder, data, cache, out, "refuse"))


def write_data(path: Path, texts: list[str], labels: np.ndarray) -> Path:
    path.write_text(json.dumps([texts, labels.tolist()], ensure_ascii=False))
    return path


@pytest.mark.process
def test_second_process_reads_the_cache_without_tokenising(make_tokenizer, reviews, tmp_path):
    texts, labels = reviews
    folder = make_tokenizer(1200)
    data = write_data(tmp_path / "data.json", texts, labels)
    with pytest.raises(AssertionError, match="the tokenizer was called"):
        # Control: with an empty cache the second worker must tokenise, and cannot.
        run_second_worker(folder, data, tmp_path / "empty", tmp_path / "none.json")
    first = encode_cached(texts, labels, AutoTokenizer.from_pretrained(folder), 24, tmp_path)
    log = run_second_worker(folder, data, tmp_path, tmp_path / "second.json")
    assert "tokenisation cache hit" in log
    assert json.loads((tmp_path / "second.json").read_text()) == first.to_dict()


@pytest.mark.process
def test_racing_workers_publish_one_complete_entry(make_tokenizer, reviews, tmp_path):
    texts, labels = reviews
    folder, data = make_tokenizer(1200), write_data(tmp_path / "data.json", texts, labels)
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    workers = [start_worker(folder, data, tmp_path / "race", out, "allow") for out in outs]
    for worker in workers:
        finish(worker)
    assert json.loads(outs[0].read_text()) == json.loads(outs[1].read_text())
    assert len(list((tmp_path / "race" / "tokens").iterdir())) == 1  # no temp folders left


def test_losing_a_publish_race_keeps_the_winner(tmp_path):
    path = tmp_path / "entry"
    _publish(Dataset.from_dict({"x": [1, 2]}), path)
    _publish(Dataset.from_dict({"x": [3]}), path)  # a later writer of the same key
    assert load_from_disk(str(path))["x"] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_cache_entry_depends_on_every_input(make_tokenizer, reviews, tmp_path):
    texts, labels = reviews
    small = AutoTokenizer.from_pretrained(make_tokenizer(1200))
    large = AutoTokenizer.from_pretrained(make_tokenizer(1600))
    base = cache_key(texts, labels, small, 32)
    assert base == cache_key(list(texts), labels.copy(), small, 32)
    variants = {
        cache_key(texts, labels, small, 64),
        cache_key(texts, labels, large, 32),
        cache_key(texts, None, small, 32),
        cache_key(texts, np.roll(labels, 1), small, 32),
        cache_key(texts[:-1], labels[:-1], small, 32),
    }
    assert len(variants) == 5 and base not in variants
    for tokenizer, length in ((small, 32), (small, 64), (large, 32)):
        encode_cached(texts[:100], labels[:100], tokenizer, length, tmp_path)
    entries = [p.name for p in (tmp_path / "tokens").iterdir()]
    assert len(entries) == 3 and not [name for name in entries if name.startswith(".")]


def test_fingerprint_ignores_state_left_by_earlier_calls(make_tokenizer):
    folder = make_tokenizer(1200)
    used, fresh = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    used(["짧은 리뷰", "두 번째"], truncation=True, max_length=8, padding=True)
    assert tokenizer_fingerprint(used) == tokenizer_fingerprint(fresh)
    fresh.truncation_side = "left"  # this one does change what comes out
    assert tokenizer_fingerprint(used) != tokenizer_fingerprint(fresh)


def test_cache_root_defaults(tmp_path, monkeypatch):
    assert cache_root(tmp_path) == tmp_path / "tokens"
    monkeypatch.setenv("FOCALTUNE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "tokens"
    monkeypatch.delenv("FOCALTUNE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "focaltune" / "tokens"
