"""GPU choice and precision. No GPU here: the device count is injected (NVML's answer), the
environment is a plain dict, and the precision rules are checked on the values CUDA gives."""

from __future__ import annotations

import pytest
import torch

from search.launch import worker_env
from trainer.devices import inference_precision, pin_one_gpu, training_precision, visible_gpus


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend NVML reports ``n`` GPUs (this machine has none)."""

    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_count


@pytest.mark.parametrize(
    ("listed", "count", "expected"),
    [
        (None, 2, ["0", "1"]),
        ("2,3", 2, ["2", "3"]),
        ("GPU-aaaa,GPU-bbbb", 2, ["GPU-aaaa", "GPU-bbbb"]),
        ("MIG-1111, MIG-2222", 2, ["MIG-1111", "MIG-2222"]),
        ("3,7,x", 2, ["3", "7"]),  # CUDA stops at the first entry it cannot use
        (None, 0, []),
    ],
)
def test_visible_gpus_are_the_parents_own_entries(gpus, listed, count, expected) -> None:
    gpus(count)
    env = {} if listed is None else {"CUDA_VISIBLE_DEVICES": listed}
    assert visible_gpus(env) == expected


def test_a_process_seeing_two_gpus_pins_itself_to_the_first(gpus, caplog) -> None:
    gpus(2)
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert pin_one_gpu(env) == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert "2 GPUs visible to one process" in caplog.text


def test_one_gpu_or_none_leaves_the_environment_alone(gpus) -> None:
    gpus(1)
    env = {"CUDA_VISIBLE_DEVICES": "5"}
    assert pin_one_gpu(env) == "5" and env == {"CUDA_VISIBLE_DEVICES": "5"}
    gpus(0)
    env = {}
    assert pin_one_gpu(env) is None and env == {}


def test_launch_hands_out_the_parents_gpus_round_robin() -> None:
    gpus = ["2", "3"]
    handed = [worker_env(i, 3, "sqlite:///x.db", gpus)["CUDA_VISIBLE_DEVICES"] for i in range(3)]
    assert handed == ["2", "3", "2"]


def test_launch_warns_when_workers_outnumber_gpus(gpus, monkeypatch, caplog) -> None:
    from search.launch import share_gpus

    gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a,GPU-b")
    assert share_gpus(3) == ["GPU-a", "GPU-b"]
    assert "3 workers on 2 GPU(s)" in caplog.text
    caplog.clear()
    assert share_gpus(2) == ["GPU-a", "GPU-b"] and not caplog.text


def test_without_gpus_workers_split_the_cpu_threads(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    env = worker_env(0, 4, "sqlite:///x.db", [])
    assert env["OMP_NUM_THREADS"] == "2" and "CUDA_VISIBLE_DEVICES" not in env


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_precision_uses_fp16_where_bf16_is_only_emulated(
    monkeypatch, native_bf16, expected
) -> None:
    # A V100/T4 answers True to is_bf16_supported() (emulated) and False without emulation.
    asked = {}

    def supported(including_emulation: bool = True) -> bool:
        asked["including_emulation"] = including_emulation
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert training_precision("auto") == expected
    assert asked == {"including_emulation": False}


def test_precision_on_cpu_and_explicit_settings(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine
    assert training_precision("auto") == "fp32"
    assert training_precision("fp16") == "fp16"


def test_inference_precision_is_exactly_the_one_asked_for(tiny_bert) -> None:
    model = tiny_bert(num_labels=3, layers=1).eval()
    ids = torch.randint(5, 50, (4, 10))
    cpu = torch.device("cpu")
    matmul = torch.backends.cuda.matmul
    before = torch.backends.fp32_precision
    # As the Trainer's tf32=True leaves it on Ampere+ (torch >= 2.9: the new API, after which
    # reading the legacy allow_tf32 raises).
    torch.backends.fp32_precision = "tf32"
    try:
        with torch.inference_mode():
            plain = model(input_ids=ids).logits
            with inference_precision("fp32", cpu):
                assert matmul.fp32_precision == "ieee"  # strict fp32
                strict = model(input_ids=ids).logits
            with inference_precision("bf16", cpu):
                low = model(input_ids=ids).logits
        assert matmul.fp32_precision == "tf32"  # restored afterwards
    finally:
        torch.backends.fp32_precision = before
    assert strict.dtype == torch.float32
    torch.testing.assert_close(strict, plain)  # fp32 both: no autocast slipped in
    assert low.dtype == torch.bfloat16
