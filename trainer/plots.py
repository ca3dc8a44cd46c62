"""PNG plots for trial artifacts, the final report and backbones: confusion matrix, class
distribution, the masked-LM loss curve.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never
through pyplot: no display is needed, and no global pyplot state is shared between workers
or threads. Every file is written atomically (temp file in the same folder, then
``os.replace``), so a dashboard never serves a half-written image.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainer.files import atomic_file

log = logging.getLogger(__name__)

# Fonts with Hangul glyphs, tried after DejaVu Sans (which draws the Latin text and digits
# as before): label names are often Korean. NanumGothic comes from the Debian package
# below (tools/system-deps.sh installs it); the others are what other systems may have.
CJK_FAMILIES = (
    "NanumGothic",
    "NanumBarunGothic",
    "Noto Sans CJK KR",
    "Noto Sans KR",
    "Malgun Gothic",
    "AppleGothic",
)
CJK_PACKAGE = "fonts-nanum"
_GLYPH_MISSING = r"Glyph \d+ .* missing from"
_fonts_lock = threading.Lock()


def _known_families() -> set[str]:
    return {font.name for font in font_manager.fontManager.ttflist}


def _add_new_system_fonts() -> None:
    """Make matplotlib see fonts installed after its font list was cached.

    matplotlib scans the system fonts once and keeps the list in its cache folder
    (fontlist-v*.json) for every later process, so a font package installed afterwards stays
    invisible until that file is deleted."""
    known = {font.fname for font in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read
                continue


@functools.cache
def cjk_families() -> tuple[str, ...]:
    """The Hangul-capable families installed here (looked up once per process); none: one
    warning naming the package, and the plots draw Korean names as boxes."""
    with _fonts_lock:
        found = [name for name in CJK_FAMILIES if name in _known_families()]
        if not found:
            _add_new_system_fonts()
            found = [name for name in CJK_FAMILIES if name in _known_families()]
    if not found:
        log.warning(
            "no font with Hangul glyphs found (%s): Korean label names in plots are drawn as "
            "boxes; install one with: apt-get install %s",
            ", ".join(CJK_FAMILIES),
            CJK_PACKAGE,
        )
    return tuple(found)


def _font_families() -> list[str]:
    # Listed families, not font.sans-serif: matplotlib (>= 3.6) falls back glyph by glyph
    # through font.family, so one label can mix Latin (DejaVu) and Hangul (Nanum).
    return ["DejaVu Sans", *cjk_families()]


@contextmanager
def _plot_context() -> Iterator[None]:
    with warnings.catch_warnings(), matplotlib.rc_context({"font.family": _font_families()}):
        if not cjk_families():
            # Already said once, with the fix; a warning per missing glyph would only repeat it.
            warnings.filterwarnings("ignore", message=_GLYPH_MISSING)
        yield


def _save_atomic(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        FigureCanvasAgg(fig).print_png(handle)
    return Path(path)


def _check_names(label_names: Sequence[str], n_classes: int, what: str) -> None:
    if len(label_names) != n_classes:
        raise ValueError(
            f"{what}: {len(label_names)} label names {list(label_names)} for {n_classes} "
            f"classes; pass one name per class, in class-index order"
        )


def confusion_matrix_png(
    confusion: list[list[int]] | np.ndarray,
    label_names: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """Confusion matrix (rows true, columns predicted): counts, colour = row share."""
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(
            f"confusion_matrix_png: confusion of shape {counts.shape} must be square "
            f"(n_classes, n_classes), rows true, columns predicted"
        )
    _check_names(label_names, len(counts), "confusion_matrix_png")
    # Row-normalised so the colour shows per-class recall whatever the class sizes.
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    size = 2.5 + 0.9 * len(counts)
    with _plot_context():
        fig = Figure(figsize=(size + 1.0, size), layout="constrained")
        _draw_confusion(fig, counts, shares, label_names, title)
        return _save_atomic(fig, path)


def _draw_confusion(
    fig: Figure, counts: np.ndarray, shares: np.ndarray, label_names: list[str], title: str
) -> None:
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.5 else "black"
        text = f"{count}\n{shares[row, col]:.0%}"
        ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=9)
    ticks = np.arange(len(counts))
    ax.set_xticks(ticks, label_names, rotation=30, ha="right")
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)


def _as_distribution(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or np.any(array < 0) or not np.isfinite(array).all():
        raise ValueError(
            f"class_distribution_png: {what} {array.tolist()} must be a list of "
            f"non-negative numbers, one per class (counts or fractions)"
        )
    total = array.sum()
    return array / total if total > 0 else array


def class_distribution_png(
    pred_distribution: Sequence[float] | np.ndarray,
    label_distribution: Sequence[float] | np.ndarray,
    label_names: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """Grouped bars of the predicted vs true class shares (counts are normalised first)."""
    pred = _as_distribution(pred_distribution, "pred_distribution")
    true = _as_distribution(label_distribution, "label_distribution")
    if pred.shape != true.shape:
        raise ValueError(
            f"class_distribution_png: {len(pred)} predicted vs {len(true)} true class "
            f"shares; pass both over the same classes"
        )
    _check_names(label_names, len(pred), "class_distribution_png")
    x = np.arange(len(pred))
    with _plot_context():
        fig = Figure(figsize=(3.0 + 0.9 * len(pred), 4.0), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(x - 0.2, true, width=0.4, label="true", color="tab:gray")
        ax.bar(x + 0.2, pred, width=0.4, label="predicted", color="tab:blue")
        ax.set_xticks(x, label_names, rotation=30, ha="right")
        ax.set_ylabel("share of examples")
        ax.set_ylim(0.0, max(1e-9, float(max(pred.max(), true.max()))) * 1.15)
        ax.legend()
        ax.set_title(title)
        return _save_atomic(fig, path)


def mlm_curve_png(curve: dict, path: Path, title: str = "") -> Path:
    """Masked-LM training loss per interval against the step, the learning rate on a second
    axis, the held-out loss before and after as dashed lines; ``curve`` as in mlm_curve.json."""
    steps, loss = curve["steps"], curve["loss"]
    if not steps or len(loss) != len(steps) or len(curve["learning_rate"]) != len(steps):
        raise ValueError(
            f"mlm_curve_png: {len(steps)} steps, {len(loss)} losses and "
            f"{len(curve['learning_rate'])} learning rates; pass one of each per point (>= 1)"
        )
    with _plot_context():
        fig = Figure(figsize=(7.0, 4.0), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(steps, loss, color="tab:blue", marker="." if len(steps) < 30 else "")
        held_out = curve.get("held_out_loss") or {}
        for when, colour in (("before", "tab:gray"), ("after", "tab:green")):
            if held_out.get(when) is not None:
                ax.axhline(held_out[when], ls="--", color=colour, label=f"held-out {when}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (masked tokens)")
        ax.legend(loc="upper right")
        rate = ax.twinx()
        rate.plot(steps, curve["learning_rate"], color="tab:orange", alpha=0.6)
        rate.set_ylabel("learning rate", color="tab:orange")
        ax.set_title(title or f"MLM pretraining: {steps[-1]} steps")
        return _save_atomic(fig, path)
