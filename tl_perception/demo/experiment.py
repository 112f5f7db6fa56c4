"""`experiment`: fine-tune and evaluate every (backbone, strategy) pair on one dataset.

This reproduces the seed's comparison (VGG / GoogLeNet / ResNet with feature extraction) on the
user's own data, for all four strategies. Pairs share one feature cache, so the frozen backbone
runs over each image once per backbone. Each finished pair is recorded in `experiment.json`
right away, so an interrupted run resumes where it stopped and a re-run skips what is done (as
long as the options that shape a result are unchanged).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.dataset import read_dataset
from tl_perception.errors import DatasetError, TrainingError
from tl_perception.fsutil import atomic_save_figure, atomic_write_json, atomic_write_text
from tl_perception.train.config import STRATEGY_CHOICES, FinetuneConfig

STATE_FILE = "experiment.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
BUNDLES_DIR = "bundles"
CACHE_DIR = "feature_cache"

Log = Callable[[str], None]


@dataclass(frozen=True)
class BackboneSpec:
    """`mobilenet_v2` or `mobilenet_v2:0.35` (name and optional width multiplier)."""

    name: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        name, _, alpha = text.strip().partition(":")
        if not name:
            raise TrainingError(f"empty backbone name in {text!r}")
        try:
            return cls(name, float(alpha) if alpha else None)
        except ValueError:
            raise TrainingError(f"backbone {text!r}: alpha after ':' must be a number") from None

    @property
    def label(self) -> str:
        return self.name if self.alpha is None else f"{self.name}:{self.alpha:g}"


@dataclass(frozen=True)
class ExperimentOptions:
    dataset: Path
    out: Path
    backbones: tuple[BackboneSpec, ...]
    strategies: tuple[str, ...]
    epochs: int | None = None
    input_size: int | None = None
    weights: str = "imagenet"
    seed: int = 0
    test_split: str = "test"
    test_dataset: Path | None = None
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more FinetuneConfig fields

    def settings(self, backbone: BackboneSpec, strategy: str) -> dict[str, Any]:
        """Everything that shapes one pair's result: a change means the pair is re-run."""
        return {
            "dataset": str(self.dataset.resolve()),
            "test": str((self.test_dataset or self.dataset).resolve()),
            "test_split": self.test_split,
            "backbone": backbone.name,
            "alpha": backbone.alpha,
            "strategy": strategy,
            "epochs": self.epochs,
            "input_size": self.input_size,
            "weights": self.weights,
            "seed": self.seed,
            "extra": dict(sorted(self.extra.items())),
        }


def run_experiment(options: ExperimentOptions, log: Log = print) -> dict[str, Any]:
    """Run every missing pair, then write results.md and results.png; returns the state."""
    for strategy in options.strategies:
        if strategy not in STRATEGY_CHOICES:
            raise TrainingError(
                f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGY_CHOICES)}"
            )
    _check_test_data(options)
    options.out.mkdir(parents=True, exist_ok=True)
    state_path = options.out / STATE_FILE
    state = _load_state(state_path)
    pairs = [(b, s) for b in options.backbones for s in options.strategies]
    for number, (backbone, strategy) in enumerate(pairs, start=1):
        key = f"{backbone.label}/{strategy}"
        settings = options.settings(backbone, strategy)
        done = state["pairs"].get(key)
        bundle = options.out / BUNDLES_DIR / f"{backbone.label.replace(':', '_')}__{strategy}"
        if done and done.get("settings") == settings and bundle.is_dir():
            log(f"[{number}/{len(pairs)}] {key}: done before, skipped")
            continue
        log(f"[{number}/{len(pairs)}] {key}: training")
        state["pairs"][key] = _run_pair(options, backbone, strategy, bundle, log) | {
            "settings": settings
        }
        atomic_write_json(state_path, state)
        row = state["pairs"][key]
        log(
            f"[{number}/{len(pairs)}] {key}: test accuracy {row['test_accuracy']:.3f}, "
            f"train {row['train_seconds']:.1f} s"
        )
    if "auto" not in options.strategies:
        for backbone in options.backbones:
            _record_auto_choice(options, backbone, state, log)
        atomic_write_json(state_path, state)
    rows = [state["pairs"][f"{b.label}/{s}"] for b, s in pairs]
    for row in rows:
        known = state.get("auto", {}).get(row["backbone"], {})
        if not row.get("auto_choice") and known.get("strategy"):
            row["auto_choice"], row["auto_reason"] = known["strategy"], known.get("reason")
    atomic_write_text(options.out / RESULTS_MD, results_markdown(options, rows))
    plot_results(rows, options.out / RESULTS_PNG)
    log(f"wrote {options.out / RESULTS_MD} and {options.out / RESULTS_PNG}")
    return state


def _check_test_data(options: ExperimentOptions) -> None:
    if options.test_dataset is not None:
        read_dataset(options.test_dataset)
        return
    splits = read_dataset(options.dataset).splits()
    if options.test_split not in splits:
        raise DatasetError(
            f"dataset {str(options.dataset)!r} has no {options.test_split!r} split "
            f"({', '.join(splits) or 'it is a plain class-per-folder tree'}); pass --test "
            "DATASET2 with held-out images, or extract with --split"
        )


def _load_state(path: Path) -> dict[str, Any]:
    import json

    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(state, dict) and isinstance(state.get("pairs"), dict):
                return state
        except (OSError, json.JSONDecodeError):
            pass
    return {"format": "tl_perception.experiment", "version": 1, "pairs": {}}


def _run_pair(
    options: ExperimentOptions,
    backbone: BackboneSpec,
    strategy: str,
    bundle: Path,
    log: Log,
) -> dict[str, Any]:
    from tl_perception.train.evaluate import evaluate
    from tl_perception.train.finetune import finetune

    config = _config(options, backbone, strategy)
    started = time.perf_counter()
    result = finetune(options.dataset, bundle, config, log=lambda line: log(f"    {line}"))
    wall = time.perf_counter() - started
    test = options.test_dataset or options.dataset
    metrics = evaluate(result.bundle_path, test, split=options.test_split)
    decision = result.decision
    return {
        "backbone": backbone.label,
        "strategy": strategy,
        "trained_strategy": result.strategy,
        "test_accuracy": float(metrics["accuracy"]),
        "test_images": int(metrics["num_images"]),
        "val_accuracy": _maybe_float(result.val_accuracy),
        "train_seconds": float(result.train_seconds),
        "wall_seconds": round(wall, 2),
        "trainable_params": int(result.trainable_params),
        # Only an `auto` run's decision says what auto picks; fixed strategies say "set by user".
        "auto_choice": decision["strategy"] if strategy == "auto" else None,
        "auto_reason": decision["reason"] if strategy == "auto" else None,
        "bundle": str(bundle),
    }


def _record_auto_choice(
    options: ExperimentOptions, backbone: BackboneSpec, state: dict[str, Any], log: Log
) -> None:
    """What `--strategy auto` would pick for `backbone`, from its probes alone (no training)."""
    settings = options.settings(backbone, "auto")
    known = state.setdefault("auto", {}).get(backbone.label)
    if known and known.get("settings") == settings:
        return
    log(f"{backbone.label}: probing what auto would choose")
    decision = probe_auto_decision(options.dataset, _config(options, backbone, "auto"), log)
    state["auto"][backbone.label] = {
        "strategy": decision["strategy"],
        "reason": decision["reason"],
        "settings": settings,
    }


def probe_auto_decision(dataset: Path, config: FinetuneConfig, log: Log) -> dict[str, Any]:
    """auto's decision (strategy, reason, probe numbers) for `config`, without training.

    The trainer's own `decide_strategy`, so the answer is the one `finetune --strategy auto`
    reaches; the probe features land in the shared cache.
    """
    from tl_perception.train.finetune import decide_strategy

    return decide_strategy(dataset, config, log)


def _config(options: ExperimentOptions, backbone: BackboneSpec, strategy: str) -> FinetuneConfig:
    return FinetuneConfig(
        backbone=backbone.name,
        alpha=backbone.alpha,
        input_size=options.input_size,
        weights=options.weights,
        strategy=strategy,
        epochs=options.epochs,
        seed=options.seed,
        cache_dir=str(options.cache_dir or options.out / CACHE_DIR),
        **options.extra,
    ).validate()


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)


def auto_choices(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """backbone -> (strategy auto picks, why), from any pair that recorded the decision."""
    out: dict[str, tuple[str, str]] = {}
    for row in rows:
        if row.get("auto_choice") and row["backbone"] not in out:
            out[row["backbone"]] = (row["auto_choice"], row.get("auto_reason") or "")
    return out


def results_markdown(options: ExperimentOptions, rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table (one row per pair) and auto's choice per backbone."""
    choices = auto_choices(rows)
    test = options.test_dataset or options.dataset
    extra = "".join(f"; {name}: `{value}`" for name, value in sorted(options.extra.items()))
    lines = [
        f"# Experiment on `{options.dataset}`",
        "",
        f"Test images: `{test}` (split `{options.test_split}`). Epochs: "
        f"{options.epochs or 'trainer default'}; input size: "
        f"{options.input_size or 'backbone default'}; weights: {options.weights}; "
        f"seed: {options.seed}{extra}.",
        "",
        "| backbone | strategy | test accuracy | val accuracy | train time (s) | "
        "trainable params | auto would choose |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        strategy = row["strategy"]
        if strategy == "auto":
            strategy = f"auto → {row['trained_strategy']}"
        choice = choices.get(row["backbone"], ("n/a", ""))[0]
        mark = " ✓" if choice in (row["strategy"], row["trained_strategy"]) else ""
        val = "n/a" if row["val_accuracy"] is None else f"{row['val_accuracy']:.3f}"
        lines.append(
            f"| {row['backbone']} | {strategy} | {row['test_accuracy']:.3f} | {val} | "
            f"{row['train_seconds']:.1f} | {row['trainable_params']:,} | {choice}{mark} |"
        )
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


def plot_results(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: test accuracy and train time per strategy, one colour per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    by_pair = {(r["backbone"], r["strategy"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(backbones), 1)
    x = np.arange(len(strategies))
    for i, backbone in enumerate(backbones):
        acc = [by_pair[(backbone, s)]["test_accuracy"] for s in strategies]
        secs = [by_pair[(backbone, s)]["train_seconds"] for s in strategies]
        axes[0].bar(x + i * width, acc, width, label=backbone)
        axes[1].bar(x + i * width, secs, width, label=backbone)
    for ax, title in zip(axes, ("test accuracy", "train time (s)"), strict=True):
        ax.set_xticks(x + width * (len(backbones) - 1) / 2, strategies, rotation=15)
        ax.set_title(title)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=100)
