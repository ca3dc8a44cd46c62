"""Bad input through the real CLI: exit 2, one line naming what, where and the fix, no
traceback, and nothing created or changed on disk or in the database.

Each case builds its input in a scratch workspace, runs one `focaltune` command in a
subprocess and compares every file of the workspace before and after.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from search.config import load_study_config
from search.study import create_study
from storage import open_storage
from tests.reliability.conftest import (
    Workspace,
    assert_refused,
    bundle,
    edit_manifest,
    flip_weight_byte,
    free_port,
    remount_read_only,
    run_measured,
)

SECRET = "Hunter2-never-shown"  # the password of every URL these cases write
Setup = Callable[[Workspace], list[str]]
Edit = Callable[[pd.DataFrame], pd.DataFrame]


def create(overrides: dict | None = None) -> Setup:
    return lambda ws: ["study", "create", str(ws.config(overrides)), "--storage", ws.url]


def raw_config(text: str) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        (ws.root / "study.yaml").write_text(text, encoding="utf-8")
        return ["study", "create", str(ws.root / "study.yaml"), "--storage", ws.url]

    return setup


def bad_data(edit: Edit, **data: object) -> Setup:
    """Train on an edited copy of the valid slice (``data`` overrides the data section)."""

    def setup(ws: Workspace) -> list[str]:
        path = ws.csv("train.csv", edit(ws.frame()))
        return create({"data": {"train": str(path), **data}})(ws)

    return setup


def bad_file(name: str, content: Callable[[pd.DataFrame], bytes]) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        (ws.root / name).write_bytes(content(ws.frame()))
        return create({"data": {"train": str(ws.root / name)}})(ws)

    return setup


def cell(row: int, column: str, value: str) -> Edit:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row - 1, column] = value  # 1-based data rows, as the messages count them
        return frame

    return edit


def class_3_only_in_validation(ws: Workspace) -> list[str]:
    frame = ws.frame()
    train, valid = ws.csv("train.csv", frame[frame.label != "3"]), ws.csv("v.csv", frame[:200])
    return create({"data": {"train": str(train), "validation": str(valid)}})(ws)


def storage(url: str) -> Setup:
    return lambda ws: ["status", "--storage", url.format(port=free_port(), ws=ws), "--study", "s"]


def not_sqlite(ws: Workspace) -> list[str]:
    shutil.copy(ws.train, ws.root / "data.csv")  # a CSV where the database should be
    return storage(f"sqlite:///{ws.root / 'data.csv'}")(ws)


def read_only_sqlite(ws: Workspace) -> list[str]:
    """A study on a real read-only file system (a tmpfs remounted ro), then another create."""
    folder = ws.fixture("tmpfs")("ws/ro", "4m")  # inside the workspace: fingerprinted too
    url = f"sqlite:///{folder / 'study.db'}"
    rdb = open_storage(url, heartbeat_interval=None)
    create_study(load_study_config(ws.config()), rdb)
    rdb.engine.dispose()
    remount_read_only(folder)
    other = ws.config({"study": {"name": "t"}}, name="t.yaml")
    return ["study", "create", str(other), "--storage", url]


def wrong_password(ws: Workspace) -> list[str]:
    server = ws.fixture("postgres")
    url = server.create_database("bad_input_password").replace(server.password, SECRET)
    return ["status", "--storage", url, "--study", "s"]


def unknown_database(ws: Workspace) -> list[str]:
    return ["status", "--storage", ws.fixture("postgres").url("no_such_db"), "--study", "s"]


def with_study(*args: str, trials: tuple[TrialState, ...] = ()) -> Setup:
    """A real study 's' (made by the real create_study) in the workspace DB, then ``args``."""

    def setup(ws: Workspace) -> list[str]:
        rdb = open_storage(ws.url, heartbeat_interval=None)
        study = create_study(load_study_config(ws.config()), rdb)
        for state in trials:
            value = 0.5 if state == TrialState.COMPLETE else None
            study.add_trial(optuna.trial.create_trial(state=state, value=value))
        rdb.engine.dispose()  # checkpoint the WAL now, not during the command under test
        return [a.format(url=ws.url, out=ws.root / "final.yaml") for a in args]

    return setup


def on_study(command: str, name: str, *extra: str, trials: tuple = ()) -> Setup:
    out = ("--out", "{out}") if command == "export" else ()
    return with_study(command, "--storage", "{url}", "--study", name, *out, *extra, trials=trials)


def empty_database(ws: Workspace) -> list[str]:
    open_storage(ws.url, heartbeat_interval=None).engine.dispose()
    return ["status", "--storage", ws.url, "--study", "s"]


def train_with(params: str) -> Setup:
    return lambda ws: ["train", str(ws.config()), "--params", params, "--out", str(ws.root / "o")]


def cp949(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode("cp949", "replace")  # Korean, saved the old way


DONE, FAILED = (TrialState.COMPLETE,), (TrialState.FAIL,)
CASES: dict[str, tuple[Setup, str]] = {  # id -> (setup, words the error line holds, "|"-joined)
    "unknown-key": (create({"study": {"n_trails": 5}}), "study.n_trails|unknown key|spelling"),
    "wrong-type": (create({"train": {"batch_size": "big"}}), "train.batch_size|'big'|integer"),
    "low-above-high": (create({"space": {"focal_gamma": [5, 0]}}), "space.focal_gamma|swap"),
    "negative-epochs": (create({"space": {"epochs": [-1, 3]}}), "space.epochs|-1|greater than 0"),
    "empty-range": (create({"space": {"epochs": []}}), "space.epochs|[low, high]"),
    "empty-backbones": (create({"space": {"backbones": []}}), "space.backbones|at least 1"),
    "log-range-from-0": (create({"space": {"learning_rate": [0, 1e-3]}}), "learning_rate|> 0"),
    "smoothing-1": (create({"space": {"label_smoothing": [0, 1.0]}}), "label_smoothing|< 1"),
    "bad-pruner": (
        create({"study": {"pruner": {"type": "sha"}}}),
        "study.pruner.type|'sha'|median",
    ),
    "bad-study-name": (create({"study": {"name": "my study!"}}), "study.name|pattern"),
    "no-model": (create({"model": {"name_or_path": None}}), "model.name_or_path|missing|add it"),
    "bad-wandb-mode": (
        create({"tracking": {"wandb": {"mode": "x"}}}),
        "tracking.wandb.mode|offline",
    ),
    "fraction-1.5": (create({"data": {"validation_fraction": 1.5}}), "validation_fraction|1.5"),
    "config-is-a-list": (raw_config("- study\n- data\n"), "study.yaml|expected a mapping"),
    "config-not-yaml": (raw_config("study: [unclosed\n"), "study.yaml|not valid YAML"),
    "config-missing": (lambda ws: ["study", "create", f"{ws.root}/no.yaml"], "no.yaml|not found"),
    "alpha-length": (
        create({"study": {"enqueue": [{"focal_alpha": [1.0, 1.0]}]}}),
        "study.enqueue|focal_alpha|4",
    ),
    "heartbeat-not-below-grace": (
        create({"study": {"heartbeat_interval": 60, "grace_period": 10}}),
        "heartbeat_interval|grace_period",
    ),
    "model-folder-missing": (create({"model": {"name_or_path": "/no/bb"}}), "name_or_path|/no/bb"),
    "data-missing-file": (
        create({"data": {"train": "/no/t.csv"}}),
        "/no/t.csv|not found|data.train",
    ),
    "data-missing-column": (create({"data": {"text_column": "body"}}), "'body'|data.text_column"),
    "data-empty-file": (bad_file("e.csv", lambda f: b""), "e.csv|empty|data.train"),
    "data-header-only": (bad_file("h.csv", lambda f: b"id,label,review\n"), "h.csv|no data rows"),
    "data-empty-text": (bad_data(cell(42, "review", "  ")), "row 42|'review'|fill in or remove"),
    "data-nan-label": (bad_data(cell(18, "label", "")), "row 18|'label'|NaN|fill in or remove"),
    "data-label-out-of-range": (
        bad_data(cell(6, "label", "7"), labels=["a", "b", "c", "d"]),
        "'7'|row 6|train.csv|data.labels",
    ),
    "data-negative-label": (bad_data(cell(6, "label", "-1")), "-1|row 6|'label'|0..K-1"),
    "data-label-only-in-validation": (class_3_only_in_validation, "'3'|v.csv|training data"),
    "data-not-utf8": (bad_file("k.csv", cp949), "k.csv|not UTF-8|line 2|re-save"),
    "data-single-class": (bad_data(lambda f: f.assign(label="1")), "single class|at least 2"),
    "data-rows-below-classes": (
        create({"data": {"max_train_samples": 3}}),
        "max_train_samples|raise",
    ),
    "data-xlsx": (bad_file("t.xlsx", lambda f: b"PK\x03\x04"), "t.xlsx|unsupported|.csv"),
    "data-corrupt-gzip": (
        bad_file("t.csv.gz", lambda f: gzip.compress(b"x")[:9]),
        "t.csv.gz|format",
    ),
    "data-valid-missing": (
        create({"data": {"validation": "/no/v.csv"}}),
        "data.validation|not found",
    ),
    "storage-unreachable": (
        storage(f"postgresql+psycopg://u:{SECRET}@127.0.0.1:{{port}}/db"),
        "127.0.0.1|refused|server running",
    ),
    "storage-malformed": (storage(f"postgresql://u:{SECRET}@h:no/db"), "malformed|--storage|e.g."),
    "storage-unsupported": (storage(f"mongodb://u:{SECRET}@h/db"), "'mongodb'|sqlite, postgresql"),
    "storage-not-sqlite": (not_sqlite, "data.csv|file is not a database"),
    "storage-read-only-sqlite": (read_only_sqlite, "ro/study.db|make the file and its folder"),
    "storage-wrong-password": (wrong_password, "password authentication failed|the user name"),
    "storage-unknown-database": (unknown_database, "no_such_db|does not exist|createdb"),
    "study-missing": (empty_database, "'s' not found|studies there: none|study create"),
    "study-wrong-name": (on_study("status", "S"), "'S' not found|there: s"),
    "export-wrong-name": (on_study("export", "t"), "'t' not found|there: s"),
    "worker-wrong-name": (on_study("worker", "t"), "'t' not found|there: s"),
    "export-nothing-finished": (on_study("export", "s", trials=FAILED), "no COMPLETE|run workers"),
    "export-top-k-0": (on_study("export", "s", "--top-k", "0", trials=DONE), "--top-k"),
    "train-params-not-json": (train_with("{gamma: 2"), "--params|not valid JSON"),
    "train-params-negative": (train_with('{"focal_gamma": -1}'), "--params|focal_gamma|-1"),
    "bundle-folder-missing": (
        bundle(lambda r: shutil.rmtree(r)),
        "bundle|not found|focaltune final",
    ),
    "bundle-manifest-missing": (bundle(lambda r: (r / "ensemble.json").unlink()), "is missing"),
    "bundle-file-missing": (
        bundle(lambda r: (r / "members/member-2/tokenizer.json").unlink()),
        "members/member-2/tokenizer.json|missing",
    ),
    "bundle-manifest-tampered": (bundle(edit_manifest), "ensemble.json|modified|focaltune final"),
    "bundle-weights-tampered": (bundle(flip_weight_byte), "member-2/model.safetensors|sha256"),
    "bundle-pickle-added": (
        bundle(lambda r: (r / "members/member-1/pytorch_model.bin").write_bytes(b"x")),
        "unexpected file|pytorch_model.bin",
    ),
    "predict-input-missing": (bundle(lambda r: (r.parent / "new.csv").unlink()), "new.csv|--input"),
    "predict-no-text-column": (
        bundle(lambda r: (r.parent / "new.csv").write_text("id,text\n1,좋다\n")),
        "'review'|new.csv|rename",
    ),
    "predict-output-suffix": (bundle(output="out.xlsx"), "out.xlsx|unsupported suffix"),
}
NEEDS_POSTGRES = ("storage-wrong-password", "storage-unknown-database")


def marks(case: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.postgres] if case in NEEDS_POSTGRES else []


@pytest.mark.parametrize(
    ("setup", "words"),
    [pytest.param(s, w.split("|"), id=case, marks=marks(case)) for case, (s, w) in CASES.items()],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    ws: Workspace, setup: Setup, words: list[str]
) -> None:
    result = ws.run(*setup(ws))
    assert_refused(result, *words)
    assert SECRET not in result.stderr + result.stdout
    ws.assert_untouched()


def test_the_suite_tries_at_least_30_bad_inputs() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(bad_data(cell(18, "label", "")), id="create-with-bad-data"),
        pytest.param(storage("sqlite:///{ws.root}/study.db"), id="status"),
        pytest.param(lambda ws: ["worker", "--storage", ws.url, "--study", "s"], id="worker"),
    ],
)
def test_a_refused_command_creates_no_database_file(ws: Workspace, setup: Setup) -> None:
    result = ws.run(*setup(ws))
    assert_refused(result)
    ws.assert_untouched()


def test_debug_shows_the_traceback(ws: Workspace) -> None:
    config = ws.config({"space": {"focal_gamma": [5.0, 0.0]}})
    result = ws.run("--debug", "study", "create", str(config), "--storage", ws.url)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "BadInput" in result.stderr
    ws.assert_untouched()


@pytest.mark.slow
def test_a_10_mb_review_is_refused_or_cut_cheaply(ws: Workspace, tmp_path: Path) -> None:
    frame = ws.frame().head(300)
    frame.loc[7, "review"] = "정말 재미있는 영화였다 " * (10 * 2**20 // 33)  # 33 bytes each: 10 MB
    train = ws.csv("huge.csv", frame)
    data = {"train": str(train), "max_train_samples": None, "max_eval_samples": None}
    args = ["train", str(ws.config({"data": data})), "--params", '{"epochs": 1}']
    result, peak_mb = run_measured([*args, "--out", str(tmp_path / "run")], tmp_path)
    if result.returncode == 2:  # refusing it is fine, when the line names the row and file
        assert_refused(result, "row 8", "huge.csv")
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert peak_mb < 1024, f"peak memory {peak_mb:.0f} MB: the text was tokenised whole"
