"""The training phases of a strategy: what each trains, on what data, how long, how fast.

Frozen phases train the head on cached bottleneck features (plus K augmented views per image);
unfrozen phases train end to end on images with online augmentation and a cosine decay to zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_perception.train.distribute import batch_count
from tl_perception.train.run import TrainingRun
from tl_perception.train.strategies import Network, set_phase, trainable_counts
from tl_perception.train.trainer import (
    PhasePlan,
    Recorder,
    balanced_class_weights,
    feature_pipeline,
    image_pipeline,
    run_phase,
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
    cfg = run.cfg
    class_weight = (
        balanced_class_weights(run.data.train.labels, len(run.data.class_names))
        if cfg.class_weight == "balanced"
        else None
    )
    history: dict[str, list[float]] = {}
    phases = []
    for phase in network.phases:
        freeze_bn = network.strategy != "from_scratch" and cfg.batchnorm == "frozen"
        set_phase(network, phase, cfg.unfreeze, freeze_batchnorm=freeze_bn)
        if phase == "all" and network.strategy == "fine_tune":
            adapt_batchnorm_momentum(network.base, FINE_TUNE_BN_MOMENTUM)
        counts = trainable_counts(network.model)
        if phase == "head":
            plan = _head_plan(network, run, class_weight)
        else:
            plan = _end_to_end_plan(network, run, class_weight)
        run.log(
            f"phase {phase!r}: {counts['trainable_weights']} trainable weight tensors, "
            f"{counts['trainable_params']} parameters, up to {plan.epochs} epochs, "
            f"lr {plan.learning_rate:g} ({plan.schedule})"
        )
        phase_history = run_phase(plan, recorder)
        prefix = "" if len(network.phases) == 1 else f"{phase}_"
        history.update({prefix + k: v for k, v in phase_history.items()})
        phases.append(
            {"name": phase, **counts, "epochs_run": len(next(iter(phase_history.values()), []))}
        )
    return history, phases


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
    epochs = (cfg.head_epochs if fine_tune else cfg.epochs) or (
        DEFAULT_HEAD_EPOCHS_FINE_TUNE if fine_tune else DEFAULT_EPOCHS["head"]
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
    epochs = cfg.epochs or DEFAULT_EPOCHS[kind]
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
