"""Study config validation: one line naming the key, exit 2 from the CLI."""

from __future__ import annotations

import pytest
import yaml

from search.config import load_study_config, parse_study_config
from tests.reliability.conftest import LAUGHS
from trainer.errors import BadInput

BASE = {"study": {"name": "x"}, "data": {"train": "t.csv"}, "model": {"name_or_path": "m"}}


def with_(section: str, **values) -> dict:
    raw = {k: dict(v) for k, v in BASE.items()}
    raw.setdefault(section, {}).update(values)
    return raw


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (with_("study", bogus=1), ["study.bogus", "unknown key"]),
        (with_("space", epochs=[8, 2]), ["space.epochs", "low 8 > high 2"]),
        (
            with_("space", learning_rate=[0, 1e-3]),
            ["space.learning_rate", "low 0", "greater than 0"],
        ),
        (with_("space", learning_rate=[1e-5, 2]), ["space.learning_rate", "high 2", "less than 1"]),
        (with_("space", focal_gamma=[0, float("inf")]), ["space.focal_gamma", "finite"]),
        (with_("space", focal_alpha=[0, 4]), ["space.focal_alpha", "low 0", "greater than 0"]),
        (with_("space", epochs=[1, 10**6]), ["space.epochs", "1000"]),
        (with_("train", max_grad_norm=float("nan")), ["train.max_grad_norm", "finite"]),
        (with_("space", focal_gamma=[-1, 2]), ["space.focal_gamma.low", "greater than or equal"]),
        (with_("space", epochs=[0, 3]), ["space.epochs.low", "greater than 0"]),
        (with_("data", max_length="big"), ["data.max_length", "'big'"]),
        (with_("study", pruner={"type": "sometimes"}), ["study.pruner.type", "hyperband"]),
        (with_("study", n_trials=-3), ["study.n_trials", "greater than 0"]),
        (with_("space", label_smoothing=[0.1, 0.2, 0.3]), ["space.label_smoothing", "[low, high]"]),
        ({"study": {"name": "x"}, "model": {"name_or_path": "m"}}, ["data", "missing"]),
    ],
)
def test_bad_config_names_the_key(raw: dict, names: list[str]) -> None:
    with pytest.raises(BadInput) as err:
        parse_study_config(raw, "c.yaml")
    message = str(err.value)
    assert message.startswith("c.yaml: ") and "\n" not in message
    for name in names:
        assert name in message


def test_defaults_follow_the_contract() -> None:
    cfg = parse_study_config(BASE, "c.yaml")
    assert (cfg.space.focal_gamma.low, cfg.space.focal_gamma.high) == (0.0, 5.0)
    assert (cfg.space.label_smoothing.low, cfg.space.label_smoothing.high) == (0.0, 0.3)
    assert cfg.study.pruner.type == "hyperband" and cfg.data.text_column == "review"


def test_single_number_pins_a_range() -> None:
    raw = with_("space", focal_gamma=2.0)
    assert parse_study_config(raw, "c.yaml").space.focal_gamma.high == 2.0


def test_demo_config_is_valid() -> None:
    cfg = load_study_config("configs/demo.yaml")
    assert cfg.study.name == "nsmc4-demo" and cfg.study.enqueue[0].focal_gamma == 2.965


def test_unreadable_yaml(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study: [unclosed")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_study_config(path)
    path.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(BadInput, match="expected a mapping"):
        load_study_config(path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            LAUGHS,
            ["not valid YAML", "100,000"],
        ),
        ("a: &a [*a]\n", ["not valid YAML"]),
        ("[" * 5000 + "]" * 5000, ["nested too deeply"]),
    ],
    ids=["billion-laughs", "recursive-alias", "deep-nesting"],
)
def test_yaml_input_is_bounded(tmp_path, text: str, words: list[str]) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as err:
        load_study_config(path)
    for word in words:
        assert word in str(err.value)
    assert len(str(err.value)) < 400


def test_an_oversized_config_is_refused_before_parsing(tmp_path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("study: {name: x}\n" + "# padding\n" * 200_000)
    with pytest.raises(BadInput, match="over the 1,048,576"):
        load_study_config(path)


def test_a_huge_value_is_quoted_short() -> None:
    raw = with_("train", batch_size=[list(range(1000))] * 1000)
    with pytest.raises(BadInput) as err:
        parse_study_config(raw, "c.yaml")
    assert "train.batch_size" in str(err.value) and len(str(err.value)) < 400
