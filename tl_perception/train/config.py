"""`FinetuneConfig`: every option of `tl-perception finetune`, with defaults that work untuned.

The same fields come from the CLI, from a YAML `--config FILE`, or from Python; the effective
config is saved in the bundle (`bundle.json` "config" and `report/config.yaml`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.errors import TrainingError
from tl_perception.fsutil import user_cache_dir
from tl_perception.train.distribute import refuse_unsupported_distribution

# The allowed values of the choice options: the CLI's `choices` come from here too.
STRATEGIES: tuple[str, ...] = ("feature_extraction", "truncate", "fine_tune", "from_scratch")
STRATEGY_CHOICES: tuple[str, ...] = ("auto", *STRATEGIES)
AUGMENTS: tuple[str, ...] = ("default", "none", "strong")
DISTRIBUTES: tuple[str, ...] = ("none", "mirrored", "multiworker")
ENGINES: tuple[str, ...] = ("local", "ray")
CLASS_WEIGHTS: tuple[str, ...] = ("balanced", "none")
BATCHNORMS: tuple[str, ...] = ("adapt", "frozen")


@dataclass
class FinetuneConfig:
    """Training options. `None` means "the backbone's or strategy's evidence-based default"."""

    backbone: str = "mobilenet_v2"
    alpha: float | None = None
    input_size: int | None = None
    weights: str = "imagenet"
    strategy: str = "auto"
    cut_layer: str | None = None
    unfreeze: int | None = None  # fine_tune: train only the top N base layers (None = all)
    epochs: int | None = None  # None: 40 for a head on cached features, 15 fine-tune, 40 scratch
    head_epochs: int | None = None  # fine_tune's frozen head phase (None = 10)
    batch_size: int = 32
    batchnorm: str = "adapt"  # fine_tune's unfrozen phase: "adapt" (train BN) or "frozen"
    learning_rate: float | None = None  # None: 3e-3 head, 2e-3 fine-tune, 2e-3 scratch
    augment: str = "default"
    class_weight: str = "balanced"
    val_fraction: float = 0.2
    # Plain trees: regex whose first group, searched in each file name, names its sequence.
    group_regex: str | None = None
    seed: int = 0
    resume: bool = False
    distribute: str = "none"  # "mirrored": every local GPU, batch_size is the global batch
    engine: str = "local"  # "ray" (several hosts) is refused: docs/scaling.md says why
    workers: int = 1  # hosts to train on; more than 1 needs engine "ray"
    cache_augmentations: int = 2  # augmented views per image in the feature cache
    cache_dir: str | None = None
    patience: int = 6  # early stopping, epochs without val accuracy gain
    # auto: see docs/training.md for the evidence behind each threshold
    size_threshold: int = 1000  # train images per class at or above which data is "large"
    similar_threshold: float = 0.85  # probe skill above chance at which features "separate"
    transfer_threshold: float = 0.2  # probe skill below which pretrained features do not help
    solved_threshold: float = 0.97  # probe accuracy at which even large data needs no fine-tune
    probe_max_per_class: int = 100
    # auto: race these backbones ("name" or "name:alpha") and input sizes too, beside
    # `backbone`/`alpha` and `input_size`: every combination is a candidate (docs/training.md)
    race_backbones: list[str] = dataclasses.field(default_factory=list)
    race_input_sizes: list[int] = dataclasses.field(default_factory=list)
    # fit a temperature on the val split and fold it into the final layer (docs/training.md)
    calibrate: bool = True
    # precision the answered val images must reach for the recorded unknown_threshold
    unknown_precision: float = 0.95
    evaluate: bool = True  # write the val-split evaluation report into the bundle's report/
    export_tflite: bool = True  # add model.tflite (float) with its Keras agreement

    def validate(self) -> FinetuneConfig:
        """Raise TrainingError for values that cannot work; return self."""
        _choice("strategy", self.strategy, STRATEGY_CHOICES)
        _choice("augment", self.augment, AUGMENTS)
        _choice("distribute", self.distribute, DISTRIBUTES)
        _choice("engine", self.engine, ENGINES)
        refuse_unsupported_distribution(self.distribute, self.engine, self.workers)
        _choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _choice("batchnorm", self.batchnorm, BATCHNORMS)
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.group_regex is not None:
            _check_group_regex(self.group_regex)
        for name in ("epochs", "head_epochs", "batch_size", "unfreeze", "input_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise TrainingError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.cache_augmentations < 0:
            raise TrainingError(
                f"cache_augmentations must be >= 0, got {self.cache_augmentations!r}"
            )
        if not isinstance(self.calibrate, bool):
            raise TrainingError(f"calibrate must be true or false, got {self.calibrate!r}")
        precision: Any = self.unknown_precision  # from YAML: anything
        if isinstance(precision, bool) or not isinstance(precision, int | float):
            precision = math.nan
        if not 0.0 < precision <= 1.0:
            raise TrainingError(
                f"unknown_precision must be a number in (0, 1], got {self.unknown_precision!r}"
            )
        if self.size_threshold < 1:
            raise TrainingError(f"size_threshold must be >= 1, got {self.size_threshold!r}")
        self._check_race_lists()
        return self

    def _check_race_lists(self) -> None:
        """Several backbones or sizes are candidates of auto's race, nothing else."""
        backbones: Any = self.race_backbones  # from YAML: anything
        sizes: Any = self.race_input_sizes
        if not isinstance(backbones, list | tuple) or not isinstance(sizes, list | tuple):
            raise TrainingError("race_backbones and race_input_sizes must be lists")
        self.race_backbones, self.race_input_sizes = [str(b) for b in backbones], list(sizes)
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise TrainingError(f"race_input_sizes must be positive integers, got {size!r}")
        if (self.race_backbones or self.race_input_sizes) and self.strategy != "auto":
            raise TrainingError(
                f"race_backbones/race_input_sizes are candidates of auto's race, not of "
                f"strategy {self.strategy!r}; compare fixed strategies with `tl-perception "
                "experiment`"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cache_root(self) -> Path:
        """`cache_dir` or `${XDG_CACHE_HOME:-~/.cache}/tl_perception/features`."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return user_cache_dir() / "features"


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TrainingError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _check_group_regex(pattern: str) -> None:
    """A regex with a group to name the sequence; caught here, before any image is read."""
    try:
        groups = re.compile(pattern).groups
    except (re.error, TypeError) as err:
        raise TrainingError(f"group_regex {pattern!r} is not a valid regex: {err}") from None
    if groups < 1:
        raise TrainingError(
            f"group_regex {pattern!r} has no group; its first group names the sequence, "
            r"e.g. '^(\d+_\d+)_' for GTSRB's CLASS_TRACK_FRAME.png"
        )


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def config_from_mapping(values: dict[str, Any], where: str = "config") -> FinetuneConfig:
    """A validated config from a mapping; unknown keys are an error (typos must not pass)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TrainingError(f"{where}: unknown option(s) {unknown}; known: {', '.join(FIELDS)}")
    return FinetuneConfig(**{k.replace("-", "_"): v for k, v in values.items()}).validate()


def load_config(yaml_path: str | Path | None = None, **overrides: Any) -> FinetuneConfig:
    """Options from a YAML file (dashes or underscores), then `overrides` that are not None."""
    import yaml

    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise TrainingError(f"cannot read config {str(path)!r}: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise TrainingError(f"config {str(path)!r} must be a mapping of option: value")
        values = {str(k).replace("-", "_"): v for k, v in (loaded or {}).items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(values, str(yaml_path or "config"))
