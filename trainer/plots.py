"""PNG plots for trial artifacts, the final report and backbones: confusion matrix, class
distribution, the masked-LM loss curve.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never
through pyplot: no display is needed, and no global pyplot state is shared between workers
or threads. Every file is written atomically (temp file in the same folder, then
``os.replace``), so a dashboard never serves a half-written image.
"""

from __future__ import annotations

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

# Fonts with Hangul glyphs, used as fallbacks after DejaVu Sans when installed; label names
# are often Korean. Without any of them the glyphs render as boxes (a warning we silence).
_CJK_FAMILIES = ("Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "Malgun Gothic", "AppleGothic")


def _font_families() -> list[str]:
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(name for name in _CJK_FAMILIES if name in installed)]


@contextmanager
def _plot_context() -> Iterator[None]:
    with warnings.catch_warnings(), matplotlib.rc_context({"font.family": _font_families()}):
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
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
