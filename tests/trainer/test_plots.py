"""Plots: real PNG files written atomically, Korean label names, bad input."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import trainer.plots as plots
from trainer.plots import class_distribution_png, confusion_matrix_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The nsmc4 classes by name, in Korean as users may label them.
KOREAN = ["매우 부정", "부정", "긍정", "매우 긍정"]
CONFUSION = [[50, 10, 3, 1], [12, 40, 9, 2], [2, 8, 45, 11], [0, 1, 14, 60]]


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    # Not a blank canvas: the plot drew something.
    assert image[..., :3].std() > 0.05
    return image


def test_confusion_matrix_png_is_a_valid_image_and_leaves_no_temp_files(
    tmp_path: Path,
) -> None:
    out = tmp_path / "plots" / "confusion.png"
    # Turn warnings into errors: a missing-glyph warning must not escape.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = confusion_matrix_png(CONFUSION, KOREAN, out, title="시험 trial 3")
    assert written == out
    read_png(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["confusion.png"]


def test_confusion_matrix_png_replaces_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "confusion.png"
    confusion_matrix_png(np.array(CONFUSION), ["a", "b", "c", "d"], out)
    first = read_png(out)
    diagonal = np.diag([100, 100, 100, 100])
    confusion_matrix_png(diagonal, ["a", "b", "c", "d"], out)
    second = read_png(out)
    assert first.shape != second.shape or not np.array_equal(first, second)
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


def test_confusion_matrix_png_handles_an_empty_row(tmp_path: Path) -> None:
    # A class absent from a small validation slice: its row is all zeros (no divide warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        confusion_matrix_png([[3, 1, 0], [0, 0, 0], [1, 0, 4]], ["x", "y", "z"], tmp_path / "c.png")
    read_png(tmp_path / "c.png")


def test_class_distribution_png_plots_the_given_shares(tmp_path: Path) -> None:
    true = [0.25, 0.25, 0.3, 0.2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_distribution_png([0.1, 0.2, 0.5, 0.2], true, KOREAN, tmp_path / "a.png", title="분포")
    # Counts are normalised to shares, so the same shares as counts draw the same picture.
    class_distribution_png([10, 20, 50, 20], true, KOREAN, tmp_path / "b.png", title="분포")
    class_distribution_png(true, true, KOREAN, tmp_path / "c.png", title="분포")
    a, b, c = (read_png(tmp_path / f"{name}.png") for name in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]


def test_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    blocked = tmp_path / "confusion.png"
    blocked.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        confusion_matrix_png(CONFUSION, KOREAN, blocked)
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]
    assert blocked.is_dir() and not any(blocked.iterdir())


# matplotlib's warning for a character no font in the list can draw (drawn as a box):
# "Glyph 48512 (\N{HANGUL SYLLABLE BU}) missing from font(s) DejaVu Sans." (3.11), or
# "... missing from current font." (older versions).
GLYPH_MISSING = re.compile(r"Glyph \d+ \(.*\) missing from")


def missing_glyphs(path: Path) -> list[str]:
    """The missing-glyph warnings drawing a Korean-labelled confusion matrix raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        confusion_matrix_png(CONFUSION, KOREAN, path, title="부정 중립 긍정")
    read_png(path)
    return [str(w.message) for w in caught if GLYPH_MISSING.search(str(w.message))]


@pytest.fixture
def fresh_font_lookup():
    # The Hangul font lookup runs once per process; tests that fake it start and end clean.
    plots.cjk_families.cache_clear()
    yield
    plots.cjk_families.cache_clear()


def test_korean_label_names_are_drawn_with_a_hangul_font(tmp_path: Path) -> None:
    assert plots.cjk_families(), (
        f"no Hangul font: run `make system-deps` (apt-get install {plots.CJK_PACKAGE})"
    )
    assert missing_glyphs(tmp_path / "korean.png") == []


def test_without_a_hangul_font_in_the_list_the_glyph_warnings_appear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the test above: the same drawing with DejaVu Sans alone does warn, so
    # an empty list there means the Hangul font drew the names, not that nothing warned.
    assert plots.cjk_families(), f"apt-get install {plots.CJK_PACKAGE}"
    monkeypatch.setattr(plots, "_font_families", lambda: ["DejaVu Sans"])
    missing = missing_glyphs(tmp_path / "boxes.png")
    assert missing and all("HANGUL" in message for message in missing), missing


def test_a_missing_hangul_font_is_one_logged_warning_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, fresh_font_lookup
) -> None:
    monkeypatch.setattr(plots, "CJK_FAMILIES", ("No Such Hangul Font",))
    with caplog.at_level(logging.WARNING, logger="trainer.plots"):
        for name in ("a.png", "b.png"):
            # Drawn with boxes, without a warning per glyph on top of the logged one.
            assert missing_glyphs(tmp_path / name) == []
        class_distribution_png([1, 2, 3, 4], [4, 3, 2, 1], KOREAN, tmp_path / "c.png")
    records = [r for r in caplog.records if r.name == "trainer.plots"]
    assert [r.levelname for r in records] == ["WARNING"]
    assert f"apt-get install {plots.CJK_PACKAGE}" in records[0].getMessage()


def test_bad_input_is_rejected_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 label names"):
        confusion_matrix_png(CONFUSION, ["a", "b", "c"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_png([[1, 2, 3], [4, 5, 6]], ["a", "b"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="same classes"):
        class_distribution_png([0.5, 0.5], [0.2, 0.3, 0.5], ["a", "b"], tmp_path / "d.png")
    with pytest.raises(ValueError, match="non-negative"):
        class_distribution_png([0.5, -0.5], [0.5, 0.5], ["a", "b"], tmp_path / "d.png")
    assert list(tmp_path.iterdir()) == []
