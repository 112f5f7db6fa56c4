"""The experiment's table and chart: a pure function of the options and the rows in grid order.

Whatever ran the cells (this process, a pool, Ray) and in whatever order they finished, the
driver hands these functions the same rows in the same order, so results.md and results.png
differ only where a row's timing fields do.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.demo.grid import ExperimentOptions
from tl_perception.fsutil import atomic_save_figure

RESULTS_PNG = "results.png"


@dataclass(frozen=True)
class PairSummary:
    """One (backbone, strategy) over its seeds: test accuracy of the cells that finished."""

    backbone: str
    strategy: str
    accuracies: tuple[float, ...]
    failed: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else float("nan")

    @property
    def sd(self) -> float:
        """Sample standard deviation over seeds (0 with fewer than two)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def summarise(rows: Sequence[dict[str, Any]]) -> list[PairSummary]:
    """One summary per (backbone, strategy), in the order the rows first name them."""
    pairs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        pairs.setdefault((row["backbone"], row["strategy"]), []).append(row)
    return [
        PairSummary(
            backbone,
            strategy,
            tuple(r["test_accuracy"] for r in cells if not r.get("failed")),
            sum(1 for r in cells if r.get("failed")),
        )
        for (backbone, strategy), cells in pairs.items()
    ]


def auto_choices(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """backbone -> (strategy auto picks, why), from the first row that recorded the decision."""
    out: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.get("auto_choice") and row["backbone"] not in out:
            out[row["backbone"]] = (row["auto_choice"], row.get("auto_reason") or "")
    return out


def results_markdown(options: ExperimentOptions, rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table (one row per cell), mean ± sd over seeds when there are several,
    failed cells with their reason, and auto's choice per backbone."""
    choices = auto_choices(rows)
    many = len(options.seeds) > 1
    lines = [*_heading(options), *_cell_table(rows, choices, many)]
    if many:
        lines += _seed_summary(rows)
    failed = [r for r in rows if r.get("failed")]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [
            f"- {r['backbone']} / {r['strategy']} / seed {r['seed']}: {r['failed']}" for r in failed
        ]
    if choices:
        lines += ["", "## Why auto chose", ""]
        lines += [f"- **{b}**: `{c}`. {why}" for b, (c, why) in choices.items()]
    else:
        lines += [
            "",
            "Add `auto` to `--strategies` to record which strategy auto picks and why.",
        ]
    lines += ["", f"![test accuracy per backbone and strategy]({RESULTS_PNG})", ""]
    return "\n".join(lines)


def _heading(options: ExperimentOptions) -> list[str]:
    test = options.test_dataset or options.dataset
    extra = "".join(f"; {name}: `{value}`" for name, value in sorted(options.extra.items()))
    seeds = ", ".join(str(s) for s in options.seeds)
    return [
        f"# Experiment on `{options.dataset}`",
        "",
        f"Test images: `{test}` (split `{options.test_split}`). Epochs: "
        f"{options.epochs or 'trainer default'}; input size: "
        f"{options.input_size or 'backbone default'}; weights: {options.weights}; "
        f"seed{'s' if len(options.seeds) > 1 else ''}: {seeds}{extra}.",
        "",
    ]


def _cell_table(
    rows: Sequence[dict[str, Any]], choices: dict[str, tuple[str, str]], many: bool
) -> list[str]:
    seed_head, seed_rule = ("seed | ", "---:|") if many else ("", "")
    lines = [
        f"| backbone | strategy | {seed_head}test accuracy | val accuracy | train time (s) | "
        "trainable params | auto would choose |",
        f"|---|---|{seed_rule}---:|---:|---:|---:|---|",
    ]
    for row in rows:
        seed = f"{row['seed']} | " if many else ""
        choice = choices.get(row["backbone"], ("n/a", ""))[0]
        if row.get("failed"):
            lines.append(
                f"| {row['backbone']} | {row['strategy']} | {seed}failed | n/a | n/a | n/a | "
                f"{choice} |"
            )
            continue
        strategy = row["strategy"]
        if strategy == "auto":
            strategy = f"auto → {row['trained_strategy']}"
        mark = " ✓" if choice in (row["strategy"], row["trained_strategy"]) else ""
        val = "n/a" if row["val_accuracy"] is None else f"{row['val_accuracy']:.3f}"
        lines.append(
            f"| {row['backbone']} | {strategy} | {seed}{row['test_accuracy']:.3f} | {val} | "
            f"{row['train_seconds']:.1f} | {row['trainable_params']:,} | {choice}{mark} |"
        )
    return lines


def _seed_summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## Over seeds",
        "",
        "Test accuracy: mean ± sample standard deviation over the seeds that finished.",
        "",
        "| backbone | strategy | seeds | test accuracy | min – max |",
        "|---|---|---:|---:|---:|",
    ]
    for pair in summarise(rows):
        done = len(pair.accuracies)
        seeds = f"{done}" + (f" ({pair.failed} failed)" if pair.failed else "")
        if not done:
            lines.append(f"| {pair.backbone} | {pair.strategy} | {seeds} | n/a | n/a |")
            continue
        lines.append(
            f"| {pair.backbone} | {pair.strategy} | {seeds} | {pair.mean:.3f} ± {pair.sd:.3f} | "
            f"{min(pair.accuracies):.3f} – {max(pair.accuracies):.3f} |"
        )
    return lines


def plot_results(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars per strategy, one colour per backbone: mean test accuracy over seeds (with
    the sd as an error bar) and mean train time; a pair with no finished cell has no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    pairs = {(p.backbone, p.strategy): p for p in summarise(rows)}
    seconds: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        if not row.get("failed"):
            seconds.setdefault((row["backbone"], row["strategy"]), []).append(row["train_seconds"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(backbones), 1)
    x = np.arange(len(strategies))
    for i, backbone in enumerate(backbones):
        acc = [pairs[(backbone, s)].mean for s in strategies]
        sd = [pairs[(backbone, s)].sd for s in strategies]
        secs = [statistics.fmean(seconds.get((backbone, s)) or [0.0]) for s in strategies]
        axes[0].bar(x + i * width, acc, width, yerr=sd, label=backbone)
        axes[1].bar(x + i * width, secs, width, label=backbone)
    for ax, title in zip(axes, ("test accuracy", "train time (s)"), strict=True):
        ax.set_xticks(x + width * (len(backbones) - 1) / 2, strategies, rotation=15)
        ax.set_title(title)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=100)
