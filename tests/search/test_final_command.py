"""`focaltune final` with W&B on: one offline run per member and one for the ensemble."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.export import to_yaml
from tests.search.conftest import focaltune
from trainer.config import DataConfig, FinalConfig, Hyperparams, MemberConfig, WandbConfig


@pytest.mark.slow
@pytest.mark.process
def test_final_logs_members_and_ensemble_to_wandb_offline(tiny_backbone, nsmc_csv, tmp_path):
    members = [
        MemberConfig(model=str(tiny_backbone), params=Hyperparams(epochs=1), seed=seed)
        for seed in (11, 22)
    ]
    final = FinalConfig(
        data=DataConfig(
            train=str(nsmc_csv(300)), validation=str(nsmc_csv(100, offset=5000)), max_length=32
        ),
        members=members,
        provenance={"study": "wandb-final"},
        wandb=WandbConfig(enabled=True, mode="offline", dir=str(tmp_path / "wb")),
    )
    path = tmp_path / "final.yaml"
    path.write_text(to_yaml(final))
    result = focaltune(
        "final",
        str(path),
        "--out",
        str(tmp_path / "bundle"),
        "--no-progress",
        env={"WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(Path(tmp_path / "wb").glob("wandb/offline-run-*"))
    assert len(runs) == 3, runs  # two members + the ensemble
    assert all(any(r.glob("run-*.wandb")) for r in runs)
