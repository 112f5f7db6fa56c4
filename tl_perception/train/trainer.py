"""Training loops: tf.data pipelines, schedules, early stopping, checkpoints for `--resume`.

Every phase checkpoints after each epoch into the run's `<bundle>.partial/` directory (weights,
optimizer state, history so far), so `--resume` continues an interrupted run at the next epoch
with the learning-rate schedule where it was. The directory is removed once the bundle is
written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.fsutil import atomic_write_json
from tl_perception.train.augment import AUGMENT_SPECS, augment_rgb
from tl_perception.train.distribute import batch_dataset

Log = Callable[[str], None]
STATE_FILE = "state.json"


@dataclass
class Checkpoints:
    """The `.partial` directory of one run: per-phase weights, optimizer state and history."""

    directory: Path
    state: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path) -> Checkpoints:
        path = directory / STATE_FILE
        state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return cls(directory, state)

    def phase(self, name: str) -> dict[str, Any]:
        """The phase's record (epochs done, done, history so far); created on first use."""
        phases: dict[str, dict[str, Any]] = self.state.setdefault("phases", {})
        return phases.setdefault(name, {"epochs_done": 0, "done": False, "history": {}})

    def save_state(self) -> None:
        atomic_write_json(self.directory / STATE_FILE, self.state)

    def weights_path(self, phase: str) -> Path:
        return self.directory / f"{phase}.weights.h5"

    def optimizer_path(self, phase: str) -> Path:
        return self.directory / f"{phase}.optimizer.npz"


@dataclass
class Recorder:
    """Where a run's progress goes, besides the weights themselves.

    Checkpoints (for `--resume`), TensorBoard logs (None: none), the log, and the verbosity
    `fit` prints with: one object, because every phase of a run needs all four.
    """

    checkpoints: Checkpoints
    tensorboard_dir: Path | None = None
    log: Log = print
    verbose: Any = "auto"


def _save_checkpoint(model: Any, checkpoints: Checkpoints, phase: str) -> None:
    """Weights, optimizer state and the run's state file, each replaced atomically."""
    target = checkpoints.weights_path(phase)
    tmp = target.with_name(f".{target.name}.tmp.weights.h5")
    model.save_weights(tmp)
    tmp.replace(target)
    variables = {f"v{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)}
    opt_tmp = checkpoints.optimizer_path(phase).with_name(f".{phase}.tmp.npz")
    np.savez(opt_tmp, **variables)
    opt_tmp.replace(checkpoints.optimizer_path(phase))
    checkpoints.save_state()


def _checkpoint_callback(model: Any, checkpoints: Checkpoints, phase: str) -> Any:
    """Weights + optimizer + history after every epoch (the phase's end: `PhaseTrainer.finish`)."""
    import keras

    def on_epoch_end(epoch: int, logs: dict[str, Any] | None = None) -> None:
        record = checkpoints.phase(phase)
        for key, value in (logs or {}).items():
            record["history"].setdefault(key, []).append(float(value))
        record["epochs_done"] = epoch + 1
        _save_checkpoint(model, checkpoints, phase)

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """n / (classes * count): every class weighs the same in the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return {
        i: float(total / (num_classes * c)) if c else 1.0 for i, c in enumerate(counts.tolist())
    }


def image_pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augment: str,
    seed: int,
    shuffle: bool,
) -> Any:
    """uint8 images -> (augmented) shuffled batches, prefetched; seeded per element."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    spec = AUGMENT_SPECS.get(augment)
    if spec is not None and shuffle:
        shape = images.shape[1:]

        def _augment(image: np.ndarray, element_seed: np.int64) -> np.ndarray:
            return augment_rgb(image, int(element_seed) % (2**63), spec)

        def _map(image: Any, label: Any, element_seed: Any) -> tuple[Any, Any]:
            out = tf.numpy_function(_augment, [image, element_seed], tf.uint8)
            out.set_shape(shape)
            return out, label

        seeds = tf.data.Dataset.random(seed=seed)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda pair, s: _map(pair[0], pair[1], s),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return batch_dataset(ds, len(labels), batch_size).prefetch(tf.data.AUTOTUNE)


def feature_pipeline(
    features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, shuffle: bool
) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((features.astype(np.float32), labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return batch_dataset(ds, len(labels), batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass
class PhasePlan:
    """How one phase trains: what, how long, at what rate, with which schedule."""

    name: str
    model: Any
    train_ds: Any
    val_ds: Any | None
    epochs: int
    learning_rate: float
    schedule: str  # "cosine" (to 0 over the phase) or "plateau"
    steps_per_epoch: int
    class_weight: dict[int, float] | None
    patience: int


def run_phase(plan: PhasePlan, recorder: Recorder) -> dict[str, list[float]]:
    """Compile, (resume,) fit with early stopping and checkpoints; return the phase history."""
    trainer = PhaseTrainer(plan, recorder)
    trainer.advance(plan.epochs)
    return trainer.finish()


class PhaseTrainer:
    """One phase trained in steps: `advance(k)` fits up to epoch k, `finish()` ends the phase.

    A plain run advances once to the end; `auto`'s race advances a candidate rung by rung, and
    the steps add up to exactly the one run: the model is compiled once, so the optimizer's
    moments and the cosine schedule's step counter carry on, and the weights are the last
    epoch's. Early stopping (`BestEpochs`) also spans the steps; its best weights are put back
    only by `finish()`, as Keras' EarlyStopping does at the end of `fit`.
    """

    def __init__(self, plan: PhasePlan, recorder: Recorder) -> None:
        import keras

        self.plan, self.recorder = plan, recorder
        checkpoints = recorder.checkpoints
        self.record = record = checkpoints.phase(plan.name)
        if plan.schedule == "cosine":
            rate: Any = keras.optimizers.schedules.CosineDecay(
                plan.learning_rate,
                decay_steps=max(1, plan.epochs * plan.steps_per_epoch),
                alpha=0.0,
            )
        else:
            rate = plan.learning_rate
        plan.model.compile(
            optimizer=keras.optimizers.Adam(rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        self.best = BestEpochs(plan.patience, "val_accuracy" if plan.val_ds else "accuracy")
        self.finished = False
        start = int(record["epochs_done"])
        if start and checkpoints.weights_path(plan.name).is_file():
            plan.model.load_weights(checkpoints.weights_path(plan.name))
            _restore_optimizer(plan.model, checkpoints.optimizer_path(plan.name))
            if record["done"] or start >= plan.epochs:
                recorder.log(
                    f"phase {plan.name!r}: already trained ({start} epochs), loaded its checkpoint"
                )
                self.finished = True
            else:
                recorder.log(f"phase {plan.name!r}: resuming at epoch {start + 1} of {plan.epochs}")
        else:
            record.update(epochs_done=0, done=False, history={})

    @property
    def epochs_done(self) -> int:
        return int(self.record["epochs_done"])

    @property
    def score(self) -> float | None:
        """The best monitored accuracy so far (val accuracy when there is a val split)."""
        key = self.best.monitor
        values = self.record["history"].get(key, [])
        return max(values) if values else None

    @property
    def stopped(self) -> bool:
        """Trained to its last epoch, or stopped early: advancing it further does nothing."""
        return self.finished or self.best.stopped or self.epochs_done >= self.plan.epochs

    def advance(self, to_epoch: int) -> None:
        """Fit from the epoch reached so far up to `to_epoch` (capped at the phase's epochs)."""
        import keras

        plan = self.plan
        target = min(to_epoch, plan.epochs)
        if self.stopped or target <= self.epochs_done:
            return
        callbacks: list[Any] = [self.best.callback(plan.model)]
        if plan.schedule == "plateau":
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor=self.best.monitor,
                    mode="max",
                    factor=0.3,
                    patience=max(1, plan.patience // 2),
                )
            )
        if self.recorder.tensorboard_dir is not None:
            log_dir = self.recorder.tensorboard_dir / plan.name
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
        callbacks.append(_checkpoint_callback(plan.model, self.recorder.checkpoints, plan.name))
        plan.model.fit(
            plan.train_ds,
            validation_data=plan.val_ds,
            epochs=target,
            initial_epoch=self.epochs_done,
            class_weight=plan.class_weight,
            callbacks=callbacks,
            verbose=self.recorder.verbose,
        )

    def finish(self) -> dict[str, list[float]]:
        """Put back the best epoch's weights, checkpoint the phase as done; its history."""
        if not self.finished:
            self.best.restore(self.plan.model)
            self.record["done"] = True
            _save_checkpoint(self.plan.model, self.recorder.checkpoints, self.plan.name)
            self.finished = True
        return dict(self.record["history"])


class BestEpochs:
    """Early stopping whose state spans several `fit` calls (Keras' resets at each one).

    Stops when `monitor` has not improved for `patience` epochs; keeps the best epoch's weights
    for `restore`.
    """

    def __init__(self, patience: int, monitor: str) -> None:
        self.patience, self.monitor = patience, monitor
        self.best_value: float | None = None
        self.best_weights: list[Any] | None = None
        self.wait = 0
        self.stopped = False

    def callback(self, model: Any) -> Any:
        """A Keras callback for one `fit` of `model` that updates this state."""
        import keras

        def on_epoch_end(epoch: int, logs: dict[str, Any] | None = None) -> None:
            value = (logs or {}).get(self.monitor)
            if value is None:
                return
            if self.best_value is None or float(value) > self.best_value:
                self.best_value, self.wait = float(value), 0
                self.best_weights = model.get_weights()
                return
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped = True
                model.stop_training = True

        return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)

    def restore(self, model: Any) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


def _restore_optimizer(model: Any, path: Path) -> None:
    """Adam moments and the step counter (so a cosine schedule continues where it stopped)."""
    if not path.is_file():
        return
    saved = np.load(path)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    variables = optimizer.variables
    if len(variables) != len(saved.files):
        return  # a different trainable set: start the optimizer fresh
    for i, variable in enumerate(variables):
        value = saved[f"v{i}"]
        if tuple(variable.shape) == value.shape:
            variable.assign(value)
