"""The training phases of a strategy: what each trains, on what data, how long, how fast.

Frozen phases train the head on cached bottleneck features (plus K augmented views per image);
unfrozen phases train end to end on images with online augmentation and a cosine decay to zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_perception.train.config import FinetuneConfig
from tl_perception.train.distribute import batch_count
from tl_perception.train.run import TrainingRun
from tl_perception.train.strategies import Network, set_phase, trainable_counts
from tl_perception.train.trainer import (
    PhasePlan,
    PhaseTrainer,
    Recorder,
    balanced_class_weights,
    feature_pipeline,
    image_pipeline,
)

#: Defaults measured on GTSRB (docs/training.md): epochs and Adam rates per phase kind.
DEFAULT_EPOCHS = {"head": 40, "fine_tune": 15, "from_scratch": 40}
DEFAULT_HEAD_EPOCHS_FINE_TUNE = 10
DEFAULT_RATES = {"head": 3e-3, "fine_tune": 2e-3, "from_scratch": 2e-3}
#: BatchNorm momentum while fine_tune's "all" phase adapts BatchNorm (Keras' MobileNetV2 has
#: 0.999): on GTSRB test 0.944 instead of 0.897, val no longer collapses (docs/performance.md).
FINE_TUNE_BN_MOMENTUM = 0.99


def train_phases(
    network: Network, run: TrainingRun, recorder: Recorder
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """Run the network's phases; history keys are prefixed by phase when there are several."""
    training = StrategyTraining(network, run, recorder)
    training.advance(None)
    return training.finish()


class StrategyTraining:
    """A strategy's phases, trained in steps: every phase before the last runs whole, the last
    (the *main* phase) up to the epoch asked for. `auto`'s race advances a candidate rung by
    rung; a plain run advances once to the end. `name_prefix` keeps several candidates'
    checkpoints apart in one run directory.
    """

    def __init__(
        self, network: Network, run: TrainingRun, recorder: Recorder, name_prefix: str = ""
    ) -> None:
        self.network, self.run, self.recorder = network, run, recorder
        self.name_prefix = name_prefix
        cfg = run.cfg
        self.class_weight = (
            balanced_class_weights(run.data.train.labels, len(run.data.class_names))
            if cfg.class_weight == "balanced"
            else None
        )
        self.history: dict[str, list[float]] = {}
        self.phases: list[dict[str, Any]] = []
        self.trainer: PhaseTrainer | None = None  # the phase being trained
        self._current = -1  # its index in network.phases
        self._counts: dict[str, int] = {}

    @property
    def main_epochs(self) -> int:
        """Epochs of the last phase (what a rung's share is a share of)."""
        return main_phase_epochs(self.network.strategy, self.run.cfg)

    @property
    def cached_main_phase(self) -> bool:
        """The main phase trains a head on cached features (seconds, not minutes)."""
        return self.network.phases[-1] == "head"

    @property
    def on_main(self) -> bool:
        return self.trainer is not None and self._current == len(self.network.phases) - 1

    @property
    def main_epochs_done(self) -> int:
        return self.trainer.epochs_done if self.on_main and self.trainer else 0

    @property
    def score(self) -> float | None:
        """Best val (else train) accuracy of the main phase so far."""
        return self.trainer.score if self.on_main and self.trainer else None

    @property
    def done(self) -> bool:
        """The main phase trained to its end or stopped early: advancing does nothing more."""
        return self.on_main and self.trainer is not None and self.trainer.stopped

    def advance(self, main_epochs: int | None) -> None:
        """Train until the main phase has run `main_epochs` epochs (None: to its end)."""
        last = len(self.network.phases) - 1
        while self._current < last:
            if self.trainer is None:
                self._current += 1
                self.trainer = self._start_phase(self.network.phases[self._current])
            if self._current < last:  # earlier phases run whole
                self.trainer.advance(self.trainer.plan.epochs)
                self._close_phase()
                self.trainer = None
        assert self.trainer is not None
        self.trainer.advance(self.trainer.plan.epochs if main_epochs is None else main_epochs)

    def finish(self) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
        """End the main phase (best epoch's weights back); the history and phase records."""
        if self.on_main and self.trainer is not None and not self.trainer.finished:
            self._close_phase()
        return self.history, self.phases

    def _start_phase(self, phase: str) -> PhaseTrainer:
        network, cfg = self.network, self.run.cfg
        freeze_bn = network.strategy != "from_scratch" and cfg.batchnorm == "frozen"
        set_phase(network, phase, cfg.unfreeze, freeze_batchnorm=freeze_bn)
        if phase == "all" and network.strategy == "fine_tune":
            adapt_batchnorm_momentum(network.base, FINE_TUNE_BN_MOMENTUM)
        counts = trainable_counts(network.model)
        if phase == "head":
            plan = _head_plan(network, self.run, self.class_weight)
        else:
            plan = _end_to_end_plan(network, self.run, self.class_weight)
        plan.name = self.name_prefix + plan.name
        self.run.log(
            f"phase {plan.name!r}: {counts['trainable_weights']} trainable weight tensors, "
            f"{counts['trainable_params']} parameters, up to {plan.epochs} epochs, "
            f"lr {plan.learning_rate:g} ({plan.schedule})"
        )
        self._counts = counts
        return PhaseTrainer(plan, self.recorder)

    def _close_phase(self) -> None:
        assert self.trainer is not None
        phase = self.network.phases[self._current]
        phase_history = self.trainer.finish()
        prefix = "" if len(self.network.phases) == 1 else f"{phase}_"
        self.history.update({prefix + k: v for k, v in phase_history.items()})
        epochs_run = len(next(iter(phase_history.values()), []))
        self.phases.append({"name": phase, **self._counts, "epochs_run": epochs_run})


def main_phase_epochs(strategy: str, cfg: FinetuneConfig) -> int:
    """Epochs of a strategy's last phase under `cfg` (its defaults where `cfg` has none)."""
    if strategy in ("feature_extraction", "truncate"):
        return cfg.epochs or DEFAULT_EPOCHS["head"]
    kind = "from_scratch" if strategy == "from_scratch" else "fine_tune"
    return cfg.epochs or DEFAULT_EPOCHS[kind]


def _head_plan(
    network: Network, run: TrainingRun, class_weight: dict[int, float] | None
) -> PhasePlan:
    """The frozen-base phase trains the head on cached features (K augmented views)."""
    cfg, data = run.cfg, run.data
    cache = run.feature_cache(network.base_fingerprint, network.feature_layer)
    extractor = run.cached_extractor(network.extractor, {"features": cache})
    train = extractor.features(
        data.train.images, data.train.hashes, cfg.cache_augmentations, cfg.augment
    )["features"]
    views = train.shape[0]
    x_train = train.reshape(-1, train.shape[-1])
    y_train = np.tile(data.train.labels, views)
    val_ds = None
    if len(data.val):
        val = extractor.features(data.val.images, data.val.hashes)["features"][0]
        val_ds = feature_pipeline(val, data.val.labels, cfg.batch_size, cfg.seed, False)
    fine_tune = network.strategy == "fine_tune"
    epochs = (
        (cfg.head_epochs or DEFAULT_HEAD_EPOCHS_FINE_TUNE)
        if fine_tune
        else main_phase_epochs(network.strategy, cfg)
    )
    rate = (None if fine_tune else cfg.learning_rate) or DEFAULT_RATES["head"]
    return PhasePlan(
        name="head",
        model=network.head_model,
        train_ds=feature_pipeline(x_train, y_train, cfg.batch_size, cfg.seed, True),
        val_ds=val_ds,
        epochs=epochs,
        learning_rate=rate,
        schedule="plateau",
        steps_per_epoch=batch_count(len(y_train), cfg.batch_size),
        class_weight=class_weight,
        patience=cfg.patience,
    )


def _end_to_end_plan(
    network: Network, run: TrainingRun, class_weight: dict[int, float] | None
) -> PhasePlan:
    """Unfrozen training on images with online augmentation and a cosine decay to zero."""
    cfg, data = run.cfg, run.data
    kind = "from_scratch" if network.strategy == "from_scratch" else "fine_tune"
    epochs = main_phase_epochs(network.strategy, cfg)
    train_ds = image_pipeline(
        data.train.images, data.train.labels, cfg.batch_size, cfg.augment, cfg.seed, True
    )
    val_ds = None
    if len(data.val):
        val_ds = image_pipeline(
            data.val.images, data.val.labels, cfg.batch_size, "none", cfg.seed, False
        )
    return PhasePlan(
        name="all",
        model=network.model,
        train_ds=train_ds,
        val_ds=val_ds,
        epochs=epochs,
        learning_rate=cfg.learning_rate or DEFAULT_RATES[kind],
        schedule="cosine",
        steps_per_epoch=batch_count(len(data.train), cfg.batch_size),
        class_weight=class_weight,
        patience=max(cfg.patience, epochs),  # cosine to zero: the last epochs are the best
    )


def adapt_batchnorm_momentum(base: Any, momentum: float = FINE_TUNE_BN_MOMENTUM) -> int:
    """Give the base's trainable BatchNorm layers `momentum`; return how many changed.

    With Keras' 0.999 (a ~1000-step memory) the moving statistics that inference (and val)
    use lag the batch statistics the unfrozen base trains with by many epochs of a small
    dataset: on GTSRB val fell from 0.80 to 0.25 and took ~10 epochs to recover, whatever
    the learning rate did. 0.99 follows the data within about 100 steps. Frozen BatchNorm
    (`--batchnorm frozen`) has no moving statistics to update and is left alone.
    """
    import keras

    changed = 0
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.momentum = momentum
            changed += 1
    return changed
