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


def _checkpoint_callback(model: Any, checkpoints: Checkpoints, phase: str) -> Any:
    """Weights + optimizer + history after every epoch; `done` once the phase ends.

    Must come after EarlyStopping in the callback list, so the end-of-phase checkpoint holds
    the best weights it restored.
    """
    import keras

    def save() -> None:
        target = checkpoints.weights_path(phase)
        tmp = target.with_name(f".{target.name}.tmp.weights.h5")
        model.save_weights(tmp)
        tmp.replace(target)
        variables = {f"v{i}": v.numpy() for i, v in enumerate(model.optimizer.variables)}
        opt_tmp = checkpoints.optimizer_path(phase).with_name(f".{phase}.tmp.npz")
        np.savez(opt_tmp, **variables)
        opt_tmp.replace(checkpoints.optimizer_path(phase))
        checkpoints.save_state()

    def on_epoch_end(epoch: int, logs: dict[str, Any] | None = None) -> None:
        record = checkpoints.phase(phase)
        for key, value in (logs or {}).items():
            record["history"].setdefault(key, []).append(float(value))
        record["epochs_done"] = epoch + 1
        save()

    def on_train_end(logs: dict[str, Any] | None = None) -> None:
        checkpoints.phase(phase)["done"] = True
        save()

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end, on_train_end=on_train_end)


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
    import keras

    checkpoints, log = recorder.checkpoints, recorder.log
    record = checkpoints.phase(plan.name)
    if plan.schedule == "cosine":
        rate: Any = keras.optimizers.schedules.CosineDecay(
            plan.learning_rate, decay_steps=max(1, plan.epochs * plan.steps_per_epoch), alpha=0.0
        )
    else:
        rate = plan.learning_rate
    model = plan.model
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = int(record["epochs_done"])
    if start and checkpoints.weights_path(plan.name).is_file():
        model.load_weights(checkpoints.weights_path(plan.name))
        _restore_optimizer(model, checkpoints.optimizer_path(plan.name))
        if record["done"] or start >= plan.epochs:
            log(f"phase {plan.name!r}: already trained ({start} epochs), loaded its checkpoint")
            return dict(record["history"])
        log(f"phase {plan.name!r}: resuming at epoch {start + 1} of {plan.epochs}")
    else:
        start = 0
        record.update(epochs_done=0, done=False, history={})
    monitor = "val_accuracy" if plan.val_ds is not None else "accuracy"
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=plan.patience, restore_best_weights=True
        ),
    ]
    if plan.schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, mode="max", factor=0.3, patience=max(1, plan.patience // 2)
            )
        )
    if recorder.tensorboard_dir is not None:
        log_dir = recorder.tensorboard_dir / plan.name
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
    callbacks.append(_checkpoint_callback(model, checkpoints, plan.name))
    model.fit(
        plan.train_ds,
        validation_data=plan.val_ds,
        epochs=plan.epochs,
        initial_epoch=start,
        class_weight=plan.class_weight,
        callbacks=callbacks,
        verbose=recorder.verbose,
    )
    return dict(checkpoints.phase(plan.name)["history"])


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
