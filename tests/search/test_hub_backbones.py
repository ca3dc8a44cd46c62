"""A study over a real pretrained checkpoint named by its Hub name and a built backbone, with
no Hub (a temporary Hugging Face cache, tests/hub.py), through every command as a user runs
them: `study create` -> two workers -> `export --per-backbone` -> `final` -> `predict`; and
`study create` refusing a Hub name its cache cannot serve, saying what is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from storage import open_storage
from tests.hub import (
    HUB_NAME,
    ROOT,
    TOKENIZER,
    hub_env,
    lay_hub_cache,
    offline_cli,
    refused,
)
from trainer.config import FinalConfig

pytestmark = pytest.mark.process
FOLDER = "models--sentence-transformers--all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lay_hub_cache(tmp_path_factory.mktemp("hf-full"))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub-study")


def env(work: Path) -> dict[str, str]:
    # Module fixtures run before the per-test cache isolation: name the caches here.
    return {"FOCALTUNE_CACHE": str(work / "cache"), "WANDB_MODE": "offline"}


def write_config(folder: Path, nsmc_csv, model: str, backbones: list[str] | None) -> Path:
    """A two-trial study, one epoch, 256 train / 100 validation / 100 test rows, 32 tokens."""
    raw = {
        "study": {"name": "hub", "storage": f"sqlite:///{folder / 'hub.db'}", "n_trials": 2},
        "data": {
            "train": str(nsmc_csv(1200)),
            "test": str(nsmc_csv(100, split="test")),
            "max_train_samples": 256,
            "max_eval_samples": 100,
            "max_length": 32,
        },
        "model": {"name_or_path": model},
        "train": {"batch_size": 32},
        "space": {"learning_rate": [1e-4, 1e-3], "epochs": 1, "backbones": backbones},
        "tracking": {"artifacts": str(folder / "artifacts")},
    }
    raw["study"]["pruner"] = {"type": "none"}  # two trials: both must finish to be exported
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_worker(home: Path, work: Path, url: str, index: int) -> subprocess.Popen:
    args = ["worker", "--storage", url, "--study", "hub", "--worker-index", str(index)]
    return subprocess.Popen(
        [sys.executable, "-m", "search.cli", *args],
        cwd=ROOT,
        env=hub_env(home, **env(work)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def study(hub_home, work, nsmc_csv, tiny_backbone) -> optuna.Study:
    """Created by `study create`, one trial per backbone enqueued, run by two workers."""
    backbones = [HUB_NAME, str(tiny_backbone)]
    config = write_config(work, nsmc_csv, str(tiny_backbone), backbones)
    created = offline_cli(hub_home, "study", "create", str(config), **env(work))
    assert created.returncode == 0, created.stderr[-3000:]
    url = f"sqlite:///{work / 'hub.db'}"
    loaded = optuna.load_study(study_name="hub", storage=open_storage(url, heartbeat_interval=None))
    for name in backbones:  # the sampler might draw one backbone twice in two trials
        loaded.enqueue_trial({"backbone": name})
    workers = [start_worker(hub_home, work, url, index) for index in (0, 1)]
    outputs = [proc.communicate(timeout=600)[0] for proc in workers]
    assert [proc.returncode for proc in workers] == [0, 0], "\n".join(outputs)[-4000:]
    return loaded


@pytest.fixture(scope="module")
def exported(study, hub_home, work) -> FinalConfig:
    out = work / "final.yaml"
    result = offline_cli(
        hub_home, "export", "--storage", f"sqlite:///{work / 'hub.db'}", "--study", "hub",
        "--per-backbone", "--out", str(out), **env(work),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return FinalConfig.model_validate(yaml.safe_load(out.read_text()))


@pytest.fixture(scope="module")
def bundle(exported, hub_home, work) -> Path:
    out = work / "bundle"
    args = ["final", str(work / "final.yaml"), "--out", str(out), "--no-progress"]
    result = offline_cli(hub_home, *args, **env(work))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_workers_train_a_trial_on_each_backbone(study, tiny_backbone):
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["backbone"] for t in trials) == sorted([HUB_NAME, str(tiny_backbone)])
    assert all(0.0 <= t.value <= 1.0 for t in trials)


@pytest.mark.slow
def test_export_per_backbone_makes_one_member_per_backbone(exported, tiny_backbone):
    assert sorted(m.model for m in exported.members) == sorted([HUB_NAME, str(tiny_backbone)])
    assert len({m.seed for m in exported.members}) == 2


@pytest.mark.slow
def test_final_bundles_the_pretrained_and_the_built_member(bundle, exported):
    manifest = json.loads((bundle / "ensemble.json").read_text())
    widths = {}
    for member in manifest["members"]:
        config = json.loads((bundle / member["path"] / "config.json").read_text())
        widths[config["hidden_size"]] = config["num_hidden_layers"]
    assert widths == {384: 6, 64: 2}  # MiniLM-L6 beside the tiny built BERT
    report = json.loads((bundle / "report.json").read_text())
    assert 0.0 <= report["test"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_predict_on_the_bundle_needs_no_hub_cache(bundle, work, nsmc_csv, tmp_path):
    rows = nsmc_csv(100, split="test")
    out = tmp_path / "predictions.csv"
    empty = tmp_path / "no-hf-home"  # the bundle carries every member's files itself
    args = ["predict", str(bundle), "--input", str(rows), "--output", str(out), "--no-progress"]
    result = offline_cli(empty, *args, **env(work))
    assert result.returncode == 0, result.stderr[-3000:]
    written = pd.read_csv(out)
    assert written["id"].tolist() == pd.read_csv(rows)["id"].tolist()
    probs = written.filter(like="prob_").to_numpy()
    assert probs.shape == (100, 4) and abs(probs.sum(axis=1) - 1).max() < 1e-5


@pytest.mark.parametrize("cached", [[], ["config.json", *TOKENIZER]], ids=["absent", "no-weights"])
def test_study_create_says_what_the_cache_lacks(cached, tiny_backbone, nsmc_csv, tmp_path):
    home = lay_hub_cache(tmp_path / "hf", cached) if cached else tmp_path / "empty-hf"
    # The Hub name as the model, or as the first of the backbones: the key says which.
    model, backbones = (str(tiny_backbone), [HUB_NAME]) if cached else (HUB_NAME, None)
    config = write_config(tmp_path, nsmc_csv, model, backbones)
    line = refused(offline_cli(home, "study", "create", str(config)))
    key = "space.backbones[0]" if cached else "model.name_or_path"
    for words in (
        f"{key} '{HUB_NAME}' cannot be loaded: HF_HUB_OFFLINE=1",
        f"cache {home / 'hub'} (HF_HOME/hub)",
        f"hf download {HUB_NAME}",
        f"copy its {FOLDER} into {home / 'hub'}",
    ):
        assert words in line, line
    if cached:
        assert f"has {FOLDER} without the weights (model.safetensors or" in line, line
        assert "tokenizer" not in line.split("without", 1)[1].split(";")[0], line
    else:
        assert f"has no {FOLDER}" in line, line
    db = tmp_path / "hub.db"
    assert not db.exists() or "hub" not in optuna.get_all_study_names(f"sqlite:///{db}")
