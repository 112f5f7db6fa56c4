"""Report plots: training curves, confusion matrix and a grid of the worst mistakes (PNG).

matplotlib is imported lazily with the Agg backend (no display needed, `--help` stays instant).
Each plot renders to memory and lands atomically, so an interrupted run never leaves half a PNG.
Layouts stay readable from 2 to ~50 classes: counts are printed in cells only up to
`MAX_ANNOTATED_CLASSES` classes, and tick labels shrink with the class count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.errors import ImageDecodeError
from tl_perception.fsutil import atomic_save_figure
from tl_perception.images import read_image_file, resize_rgb

MAX_ANNOTATED_CLASSES = 15
MAX_MISTAKE_TILES = 25
CURVE_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    return atomic_save_figure(fig, path, dpi=100, bbox_inches="tight")


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    path: str | Path,
    phase_starts: Sequence[int] = (),
    title: str = "Training",
) -> Path:
    """Loss and accuracy per epoch (train and validation) side by side.

    Args:
        history: Keras `History.history`-style lists, e.g. `loss`, `accuracy`, `val_loss`,
            `val_accuracy`; or per-phase keys with a prefix (`head_loss`, ..., `all_loss`, ...,
            in phase order), which are joined end to end with a line between phases.
        phase_starts: 0-based epoch indices where a new phase begins (drawn as dotted lines),
            e.g. where fine-tuning unfreezes the base.
    """
    plt = _pyplot()
    history, starts = join_phases(history)
    phase_starts = sorted({*phase_starts, *starts})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = list(history.get(key, ()))
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, marker="o", markersize=3, label=key)
        for start in phase_starts:
            if start > 0:
                ax.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def join_phases(
    history: Mapping[str, Sequence[float]],
) -> tuple[dict[str, list[float]], list[int]]:
    """Per-phase `<phase>_loss`-style keys joined into one curve each, plus phase start epochs.

    A history that already has `loss` or `accuracy` is returned as is.
    """
    if "loss" in history or "accuracy" in history:
        return {k: list(v) for k, v in history.items()}, []
    prefixes = [k[: -len("loss")] for k in history if k.endswith("_loss") and "val_" not in k]
    joined: dict[str, list[float]] = {m: [] for m in CURVE_KEYS}
    starts = []
    for prefix in prefixes:
        length = len(history[prefix + "loss"])
        starts.append(len(joined["loss"]))
        for metric in CURVE_KEYS:
            values = list(history.get(prefix + metric, ()))
            joined[metric] += values + [math.nan] * (length - len(values))
    return {k: v for k, v in joined.items() if any(not math.isnan(x) for x in v)}, starts


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix (rows: true class)",
) -> Path:
    """Row-normalised colours (recall per class), raw counts in cells for few classes."""
    plt = _pyplot()
    counts = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(16.0, max(4.0, 0.3 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    font = 10 if n <= MAX_ANNOTATED_CLASSES else max(5, int(11 - n / 8))
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=90, fontsize=font)
    ax.set_yticklabels(class_names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color)
    ax.set_title(title)
    return _save(fig, path)


def plot_worst_mistakes(
    mistakes: Sequence[Mapping[str, Any]],
    path: str | Path,
    max_images: int = MAX_MISTAKE_TILES,
    tile: int = 96,
) -> Path:
    """A grid of the most confident mistakes: the image, its true and predicted class and score.

    `mistakes` are `evaluate`'s `worst_mistakes` (keys path, true, predicted, score), best
    first; unreadable files are left out. With no mistakes the PNG says so.
    """
    plt = _pyplot()
    tiles: list[tuple[np.ndarray, Mapping[str, Any]]] = []
    for mistake in mistakes:
        if len(tiles) >= max_images:
            break
        if not mistake.get("path"):
            continue
        try:
            rgb = read_image_file(mistake["path"])
        except ImageDecodeError:
            continue
        tiles.append((resize_rgb(rgb, (tile, tile)), mistake))
    if not tiles:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
        return _save(fig, path)
    cols = min(5, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (rgb, mistake) in zip(axes.flat, tiles, strict=False):
        ax.imshow(rgb)
        ax.set_title(
            f"true: {_short(mistake['true'])}\npred: {_short(mistake['predicted'])} "
            f"({mistake['score']:.2f})",
            fontsize=7,
        )
    fig.suptitle("Most confident mistakes")
    return _save(fig, path)


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def plot_reliability_diagram(
    calibration: Mapping[str, Any], path: str | Path, title: str = "Reliability diagram"
) -> Path:
    """Accuracy against mean confidence per bin (bars), the diagonal, and images per bin.

    `calibration` is `evaluate`'s `calibration` record (`reliability` bins and `ece`). Bars
    below the diagonal are over-confident bins, above it under-confident ones.
    """
    plt = _pyplot()
    bins = list(calibration.get("reliability") or ())
    fig, (ax, counts_ax) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = (bins[0]["upper"] - bins[0]["lower"]) if bins else 1.0
    filled = [b for b in bins if b["count"]]
    lefts = [b["lower"] for b in filled]
    ax.bar(
        lefts,
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    ax.bar(
        lefts,
        [b["confidence"] - b["accuracy"] for b in filled],
        width=width,
        align="edge",
        bottom=[b["accuracy"] for b in filled],
        facecolor="none",
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ece = calibration.get("ece")
    ax.set_title(title if ece is None else f"{title} (ECE {ece:.4f})")
    counts_ax.bar(
        [b["lower"] for b in bins],
        [b["count"] for b in bins],
        width=width,
        align="edge",
        edgecolor="black",
        color="grey",
    )
    counts_ax.set_xlabel("confidence (best score)")
    counts_ax.set_ylabel("images")
    return _save(fig, path)


def plot_accuracy_coverage(
    calibration: Mapping[str, Any],
    path: str | Path,
    title: str = "Accuracy of the answered fraction",
) -> Path:
    """Answer only the most confident images: accuracy of those against the share answered.

    Marks the bundle's unknown threshold (when `calibration` has one) and the 95 % line.
    """
    plt = _pyplot()
    curve = np.asarray(calibration.get("curve") or [[1.0, 0.0]], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(curve[:, 0], curve[:, 1], "-", color="tab:blue", label="answered images")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=1, label="95 % precision")
    point = calibration.get("unknown_threshold")
    if point is not None:
        ax.plot(
            [point["coverage"]],
            [point["accuracy"]],
            "o",
            color="tab:red",
            label=f"unknown_threshold {point['threshold']:.3f}",
        )
    ax.set_xlim(0, 1.02)
    ax.set_ylim(max(0.0, float(curve[:, 1].min()) - 0.05), 1.01)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title)
    return _save(fig, path)
