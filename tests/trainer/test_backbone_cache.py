"""Backbones built once per settings and data (``--cache``), and named recipes (``--preset``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from tests.trainer.test_backbone import focaltune
from trainer.backbone import PRESETS, BackboneSettings, cached_backbone

SMALL = BackboneSettings(vocab_size=400, layers=1, hidden=16, heads=2, max_length=32)


def test_a_second_build_reuses_the_first_and_a_change_builds_anew(nsmc_csv, tmp_path) -> None:
    train = nsmc_csv(300)
    first, built = cached_backbone(train, tmp_path, SMALL)
    assert built and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again, built_again = cached_backbone(train, tmp_path, SMALL)
    assert (again, built_again) == (first, False)
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other_seed, _ = cached_backbone(train, tmp_path, replace(SMALL, seed=1))
    other_data = tmp_path / "other.csv"
    shutil.copy(train, other_data)
    with other_data.open("a", encoding="utf-8") as extra:
        extra.write("1,1,10,3,another review\n")
    other_file, _ = cached_backbone(other_data, tmp_path, SMALL)
    assert len({first, other_seed, other_file}) == 3


def test_the_standard_preset_is_the_measured_recipe() -> None:
    standard = PRESETS["standard"]
    assert standard.embedding_init == "corpus" and standard.max_samples is None
    assert standard.vocab_size >= 24_000  # below that, fewer whole words (README table)
    standard.resolved().check()
    PRESETS["tiny"].resolved().check()


@pytest.mark.process
def test_cli_preset_with_an_override_links_out_to_the_cache(nsmc_csv, tmp_path: Path) -> None:
    cache, train = tmp_path / "cache", str(nsmc_csv(300))
    flags = ["--preset", "tiny", "--cache", str(cache), "--train", train]
    small = ["--vocab-size", "400", "--hidden", "16", "--layers", "1"]
    done = focaltune("backbone", "build", *flags, "--out", str(tmp_path / "a"), *small)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a").is_symlink() and "built now" in done.stdout
    settings = json.loads((tmp_path / "a" / "backbone.json").read_text())["settings"]
    assert settings["vocab_size"] == 400  # the flag
    assert settings["max_length"] == PRESETS["tiny"].max_length  # the preset
    done = focaltune("backbone", "build", *flags, "--out", str(tmp_path / "b"), *small)
    assert done.returncode == 0 and "from the cache" in done.stdout
    assert (tmp_path / "a").resolve() == (tmp_path / "b").resolve()
    assert len(list(cache.iterdir())) == 1
