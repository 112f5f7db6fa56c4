"""What an experiment is: its options and its grid of cells (backbone x strategy x seed).

Plain, picklable data and nothing heavy: the options travel once to every worker as the job's
shared part, and a `Cell` is the item of one unit of work, so both must pickle by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.backbones import BackboneSpec
from tl_perception.engine.base import EngineSpec, Resources
from tl_perception.train.config import FinetuneConfig

CACHE_DIR = "feature_cache"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid: the unit an engine runs."""

    backbone: BackboneSpec
    strategy: str
    seed: int

    @property
    def key(self) -> str:
        """Its key in experiment.json (the seed included, whatever the grid)."""
        return f"{self.backbone.label}/{self.strategy}/seed{self.seed}"

    def label(self, one_seed: bool) -> str:
        """How logs name it: without the seed when the grid has only one."""
        pair = f"{self.backbone.label}/{self.strategy}"
        return pair if one_seed else f"{pair} seed {self.seed}"

    @property
    def bundle_name(self) -> str:
        return f"{self.backbone.label.replace(':', '_')}__{self.strategy}__seed{self.seed}"


@dataclass(frozen=True)
class ExperimentOptions:
    """The grid, the data, the training options shared by every cell, and where cells run.

    `engine` and `resources` say where and with what each cell runs; they never change a
    result, so they are not part of a cell's `settings`.
    """

    dataset: Path
    out: Path
    backbones: tuple[BackboneSpec, ...]
    strategies: tuple[str, ...]
    epochs: int | None = None
    input_size: int | None = None
    weights: str = "imagenet"
    seeds: tuple[int, ...] = (0,)
    test_split: str = "test"
    test_dataset: Path | None = None
    cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more FinetuneConfig fields
    engine: EngineSpec = field(default_factory=EngineSpec)
    resources: Resources = field(default_factory=Resources)

    def cells(self) -> list[Cell]:
        """Every cell in grid order (backbone, then strategy, then seed): the table's order."""
        return [
            Cell(b, s, seed) for b in self.backbones for s in self.strategies for seed in self.seeds
        ]

    def settings(self, cell: Cell) -> dict[str, Any]:
        """Everything that shapes one cell's result: a change means the cell is re-run."""
        return {
            "dataset": str(self.dataset.resolve()),
            "test": str((self.test_dataset or self.dataset).resolve()),
            "test_split": self.test_split,
            "backbone": cell.backbone.name,
            "alpha": cell.backbone.alpha,
            "strategy": cell.strategy,
            "epochs": self.epochs,
            "input_size": self.input_size,
            "weights": self.weights,
            "seed": cell.seed,
            "extra": dict(sorted(self.extra.items())),
        }

    def config(self, cell: Cell) -> FinetuneConfig:
        """The cell's finetune options (TrainingError for values that cannot work)."""
        return FinetuneConfig(
            backbone=cell.backbone.name,
            alpha=cell.backbone.alpha,
            input_size=self.input_size,
            weights=self.weights,
            strategy=cell.strategy,
            epochs=self.epochs,
            seed=cell.seed,
            cache_dir=str(self.cache_dir or self.out / CACHE_DIR),
            **self.extra,
        ).validate()
