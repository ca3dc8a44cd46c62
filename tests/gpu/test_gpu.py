"""The GPU path, on a real GPU (``make gpu-check``): auto precision trains in bf16 with TF32
matmuls, inference afterwards runs in exactly the precision asked for, the standard recipe
still learns in bf16, and a real CUDA out-of-memory error fails only its trial.

Every test is marked ``gpu`` (``make test`` deselects them) and skipped where no CUDA
device is visible (tests/gpu/conftest.py). Figures go to ``figures`` before the asserts,
so a failing run still brings back what it measured.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState
from transformers import AutoTokenizer, TrainerCallback

from search.config import load_study_config
from search.study import create_study
from storage import open_storage
from tests.conftest import read_nsmc
from tests.gpu.conftest import tf32_matmul, tf32_state
from trainer.config import DataConfig, Hyperparams, ModelConfig, TrainConfig, TrainSettings
from trainer.devices import training_precision
from trainer.final.predict import predict_probs
from trainer.train import TrainResult, train_model

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def ampere_or_later() -> bool:
    return torch.cuda.get_device_capability(0)[0] >= 8


class Probe(TrainerCallback):
    """What a run looks like from inside: its arguments, the TF32 setting while it trains
    and the dtype the classifier's matmul produces (bf16 under bf16 autocast)."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
        self.seen |= {"bf16": args.bf16, "fp16": args.fp16, "tf32": args.tf32}
        head = getattr(model, "classifier", None)  # BERT's classification layer
        if head is not None:
            self.hook = head.register_forward_hook(self._dtype)

    def _dtype(self, module, inputs, output) -> None:
        self.seen.setdefault("classifier_output_dtype", str(output.dtype))

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if "tf32_while_training" not in self.seen:
            self.seen["tf32_while_training"] = tf32_matmul()
            self.seen["tf32_state_while_training"] = tf32_state()

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.hook is not None:
            self.hook.remove()


@pytest.fixture(scope="module")
def trained(tiny_backbone: Path, nsmc_csv, tmp_path_factory) -> tuple[TrainResult, Probe]:
    """One short run of the tiny backbone on the GPU, precision auto (the default)."""
    cfg = TrainConfig(
        data=DataConfig(
            train=str(nsmc_csv(600)),
            validation=str(nsmc_csv(200, offset=6000)),
            max_length=64,
            cache_dir=str(tmp_path_factory.mktemp("cache")),  # set up before _isolated_cache
        ),
        model=ModelConfig(name_or_path=str(tiny_backbone)),
        train=TrainSettings(batch_size=32, evals_per_epoch=1, precision="auto"),
        params=Hyperparams(learning_rate=2e-3, epochs=1),
    )
    probe = Probe()
    return train_model(cfg, callbacks=[probe]), probe


def test_auto_precision_trains_in_bf16_with_tf32_matmuls(trained, figures) -> None:
    result, probe = trained
    # bf16 where the GPU has it in hardware (Ampere and later), else fp16 with loss scaling.
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    figures["bf16_tf32"] = probe.seen | {
        "precision": result.precision,
        "expected_precision": expected,
        "device": result.device,
        "train_samples_per_second": round(result.train_samples_per_second, 1),
        "best_accuracy": result.best.accuracy,
    }
    assert training_precision("auto") == expected
    assert result.precision == expected
    assert probe.seen["bf16"] is (expected == "bf16")
    assert probe.seen["fp16"] is (expected == "fp16")
    dtype = torch.bfloat16 if expected == "bf16" else torch.float16
    assert probe.seen["classifier_output_dtype"] == str(dtype), "the forward pass did not autocast"
    assert result.device.startswith("cuda:0 (CUDA_VISIBLE_DEVICES="), result.device
    assert torch.cuda.get_device_name(0) in result.device
    assert next(result.model.parameters()).device.type == "cuda"
    if ampere_or_later():
        assert probe.seen["tf32"] is True
        assert probe.seen["tf32_while_training"] is True, probe.seen["tf32_state_while_training"]
    else:
        assert probe.seen["tf32"] is None  # no TF32 before Ampere; the Trainer is not asked
    assert math.isfinite(result.best.accuracy) and result.history


def test_inference_after_gpu_training_runs_in_exactly_the_precision_asked_for(
    trained, tiny_backbone: Path, figures
) -> None:
    # What `final` does after training each member (the Trainer left TF32 on): score it
    # with predict_probs in strict fp32 (no TF32) and in the bundle's precision, then train
    # the next member with TF32 on again.
    result, _ = trained
    model = result.model
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    texts = read_nsmc("train", 300, offset=7000)["review"].astype(str).tolist()
    before = tf32_state()
    inside: list[bool] = []
    hook = model.register_forward_pre_hook(lambda *_: inside.append(tf32_matmul()))
    record = figures.setdefault("inference_after_training", {"tf32_before": before})
    try:
        strict = predict_probs(model, tokenizer, texts, max_length=64, precision="fp32")
        served = predict_probs(model, tokenizer, texts, max_length=64, precision=result.precision)
    finally:
        hook.remove()
        record |= {"tf32_inside": sorted(set(inside)), "tf32_after": tf32_state()}
    record["max_probability_gap"] = float(np.abs(served - strict).max())
    assert inside and not any(inside), "TF32 matmuls inside inference_precision"
    if ampere_or_later():
        assert tf32_matmul(), "TF32 was not restored after inference"
    np.testing.assert_allclose(strict.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(served, strict, atol=0.05)  # bf16 rounds; it does not diverge


def test_the_standard_recipe_still_learns_in_bf16(learning_backbone: Path, nsmc_csv, figures):
    # tests/trainer/test_train.py's acceptance run (same backbone recipe, rows, settings and
    # seed), now in the GPU's precision: on a CPU in fp32 it measured +9.1 points over the
    # majority class. A broken bf16 path (loss, autocast, scaler) would sit at the majority.
    cfg = TrainConfig(
        data=DataConfig(
            train=str(nsmc_csv(4000, offset=0)),
            validation=str(nsmc_csv(1000, offset=5000)),
            max_length=64,
        ),
        model=ModelConfig(name_or_path=str(learning_backbone)),
        train=TrainSettings(batch_size=32, evals_per_epoch=2, seed=42, precision="auto"),
        params=Hyperparams(focal_gamma=1.0, label_smoothing=0.05, learning_rate=5e-4, epochs=2),
    )
    result = train_model(cfg)
    majority = max(result.best.metrics["label_distribution"])
    figures["learning"] = {
        "precision": result.precision,
        "accuracy": result.best.accuracy,
        "majority": majority,
        "points_over_majority": round(100 * (result.best.accuracy - majority), 2),
        "curve": [round(r.accuracy, 4) for r in result.history],
        "train_seconds": round(result.train_seconds, 1),
        "train_samples_per_second": round(result.train_samples_per_second, 1),
    }
    assert result.precision == training_precision("auto")
    assert result.best.accuracy > majority + 0.03


# A real CUDA out-of-memory error. The large backbone is BERT-large-shaped (24 layers x
# 1024, 16 heads, 4096-wide feed-forward, ~300 M parameters: 1.2 GB of fp32 weights, which
# fit). What does not fit is one training batch: the activations a layer keeps for the
# backward pass are about batch x sequence x hidden x 2 bytes (bf16) x ~20 tensors (Q, K, V,
# attention output and projection, dropout masks, two LayerNorms and residuals, the 4x-wide
# feed-forward's input and GELU output counted as 8), i.e. 4096 x 512 x 1024 x 2 x 20 =
# 86 GB per layer and ~2.1 TB for 24 layers: 15 times an H200's 141 GB, so the first
# forward pass runs out within its first few layers on any GPU there is. The tiny backbone
# (2 x 64) takes the same batch in under ~50 GB even if attention falls back to the math
# kernel (4096 x 2 heads x 512^2 scores), so its trial completes on an 80 GB or larger card.
OOM_BATCH = 4096
OOM_LENGTH = 512
LARGE = {"layers": 24, "hidden": 1024, "heads": 16}
ACTIVATION_TENSORS = 20


def long_texts(n: int, offset: int, min_chars: int = 1000) -> pd.DataFrame:
    """``n`` texts of consecutive nsmc4 reviews joined until ``min_chars`` characters (well
    past 512 tokens), each labelled with its first review's label."""
    reviews = read_nsmc("train", 20_000, offset)
    text, labels = reviews["review"].astype(str).tolist(), reviews["label"].tolist()
    rows = []
    for i in range(n):
        start = (i * 37) % len(text)  # 37 is prime to 20,000: every start differs
        parts, size = [], 0
        while size < min_chars:
            parts.append(text[(start + len(parts)) % len(text)])
            size += len(parts[-1]) + 1
        rows.append({"review": " ".join(parts), "label": labels[start]})
    return pd.DataFrame(rows)


def test_a_real_cuda_oom_fails_only_its_trial_and_the_study_completes(
    tiny_backbone: Path, nsmc_csv, tmp_path: Path, figures
) -> None:
    from trainer.backbone import build_backbone

    if torch.cuda.get_device_properties(0).total_memory < 80 * 2**30:
        # The tiny backbone's trial at this batch needs ~50 GB: on a smaller card it would
        # run out too, and "only its trial" could not be shown.
        pytest.fail("the real-OOM test needs a GPU with >= 80 GiB (A100/H100 80 GB, H200)")
    large = build_backbone(
        nsmc_csv(2000), tmp_path / "large", vocab_size=2000, max_length=OOM_LENGTH, **LARGE
    )
    train_csv, eval_csv = tmp_path / "long-train.csv", tmp_path / "long-eval.csv"
    long_texts(OOM_BATCH, offset=0).to_csv(train_csv, index=False)
    long_texts(256, offset=30_000).to_csv(eval_csv, index=False)
    tokenizer = AutoTokenizer.from_pretrained(large)
    sample = pd.read_csv(train_csv, nrows=64)["review"].tolist()
    lengths = [len(ids) for ids in tokenizer(sample, truncation=False)["input_ids"]]
    sequence = min(statistics.median(lengths), OOM_LENGTH)
    activations = OOM_BATCH * sequence * LARGE["hidden"] * 2 * ACTIVATION_TENSORS
    record = figures.setdefault("real_oom", {})
    record |= {
        "batch_size": OOM_BATCH,
        "max_length": OOM_LENGTH,
        "sample_tokens_min_median": [min(lengths), statistics.median(lengths)],
        "estimated_activation_bytes": activations * LARGE["layers"],
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory,
    }
    assert activations * LARGE["layers"] > 1e12, "the batch would not be sure to run out"

    url = f"sqlite:///{tmp_path / 'oom.db'}"
    backbones = [str(large.resolve()), str(tiny_backbone.resolve())]
    raw = {
        "study": {"name": "gpu-oom", "n_trials": 1, "pruner": {"type": "none"}},
        "data": {"train": str(train_csv), "validation": str(eval_csv), "max_length": OOM_LENGTH},
        "model": {"name_or_path": backbones[1]},
        "train": {"batch_size": OOM_BATCH, "eval_batch_size": 128, "evals_per_epoch": 1},
        "space": {
            "backbones": backbones,
            "focal_gamma": 2.0,
            "focal_alpha": None,
            "label_smoothing": 0.0,
            "learning_rate": 1.0e-4,
            "epochs": 1,
        },
        "tracking": {"artifacts": str(tmp_path / "artifacts")},
    }
    config = tmp_path / "oom.yaml"
    config.write_text(yaml.safe_dump(raw))
    study = create_study(load_study_config(config), open_storage(url, heartbeat_interval=None))
    # Enqueued, so the order is fixed: the large backbone first (it runs out of memory),
    # then the tiny one, which must still run on the same worker and meet the budget of 1.
    study.enqueue_trial({"backbone": backbones[0]})
    study.enqueue_trial({"backbone": backbones[1]})
    torch.cuda.empty_cache()  # this process's cached blocks; the worker needs the card

    started = time.monotonic()
    worker = subprocess.run(
        [sys.executable, "-m", "search.cli", "worker", "--study", "gpu-oom"],
        cwd=ROOT,
        env=dict(os.environ, FOCALTUNE_STORAGE=url),
        capture_output=True,
        text=True,
        timeout=150,  # inside the step's 240 s and pytest's 200 s
    )
    out = worker.stdout + worker.stderr
    trials = optuna.load_study(study_name="gpu-oom", storage=url).get_trials(deepcopy=False)
    record |= {
        "worker_seconds": round(time.monotonic() - started, 1),
        "worker_exit_code": worker.returncode,
        "trials": [
            {
                "number": t.number,
                "backbone": "large" if t.params.get("backbone") == backbones[0] else "tiny",
                "state": t.state.name,
                "end_reason": t.user_attrs.get("end_reason"),
                "device": t.user_attrs.get("device"),
                "train_seconds": t.user_attrs.get("train_seconds"),
                "train_samples_per_second": t.user_attrs.get("train_samples_per_second"),
            }
            for t in trials
        ],
        "worker_output_tail": out[-3000:],
    }
    assert worker.returncode == 0, out[-5000:]
    assert [t.params["backbone"] for t in trials] == backbones, out[-3000:]
    oom, tiny = trials
    assert oom.state == TrialState.FAIL
    reason = oom.user_attrs["end_reason"]
    assert reason.startswith("failed: out of memory: CUDA out of memory"), reason
    assert tiny.state == TrialState.COMPLETE, tiny.user_attrs.get("end_reason")
    assert tiny.user_attrs["device"].startswith("cuda"), tiny.user_attrs["device"]
    assert " FAIL " in out and " COMPLETE " in out  # the worker's own line for each trial
