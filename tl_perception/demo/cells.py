"""The unit of an experiment: train and evaluate one cell, wherever an engine runs it.

`run_cell` is module-level (engines pickle it by reference) and returns the cell's row, a small
dict of plain numbers and strings; the bundle stays on the shared path, never travels. Each cell
runs with TensorFlow's op determinism on and the cell's seed set, so a cell's figures are the
same in this process, in a pool worker or in a Ray task: the table does not depend on the engine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tl_perception.demo.grid import Cell, ExperimentOptions
from tl_perception.errors import TrainingError, one_line

BUNDLES_DIR = "bundles"
#: Fields of a row that measure time: the only ones that differ between runs of one grid.
TIMING_FIELDS = ("train_seconds", "wall_seconds")


def run_cell(options: ExperimentOptions, cell: Cell) -> dict[str, Any]:
    """Train and evaluate `cell`; its row.

    Raises:
        TlPerceptionError: the cell cannot run (bad input for this backbone, its data, a
            TensorFlow error such as running out of memory): recorded as the cell's failure.
    """
    import tensorflow as tf

    try:
        with deterministic_ops(cell.seed):
            return _train_and_evaluate(options, cell)
    except (tf.errors.OpError, MemoryError) as err:  # one cell's problem, not the grid's
        raise TrainingError(f"{type(err).__name__}: {one_line(err)}") from err


def failed_row(cell: Cell, reason: str) -> dict[str, Any]:
    """The row of a cell that did not finish: which cell, and why, in one line."""
    return {
        "backbone": cell.backbone.label,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "failed": reason,
    }


@contextlib.contextmanager
def deterministic_ops(seed: int) -> Iterator[None]:
    """Seeded, deterministic TensorFlow ops for one cell, as they were afterwards.

    Op determinism is process-wide; a cell run in the driver's own process (`--workers 1`)
    must not leave it on for whatever that process does next.
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_on:
            tf_config.disable_op_determinism()


def _train_and_evaluate(options: ExperimentOptions, cell: Cell) -> dict[str, Any]:
    from tl_perception.train.evaluate import evaluate
    from tl_perception.train.finetune import finetune

    bundle = options.out / BUNDLES_DIR / cell.bundle_name
    name = cell.label(len(options.seeds) == 1)
    started = time.perf_counter()
    result = finetune(
        options.dataset, bundle, options.config(cell), log=lambda line: print(f"    {name}: {line}")
    )
    wall = time.perf_counter() - started
    test = options.test_dataset or options.dataset
    metrics = evaluate(result.bundle_path, test, split=options.test_split)
    auto = cell.strategy == "auto"
    return {
        "backbone": cell.backbone.label,
        "strategy": cell.strategy,
        "seed": cell.seed,
        "trained_strategy": result.strategy,
        "test_accuracy": float(metrics["accuracy"]),
        "test_images": int(metrics["num_images"]),
        "val_accuracy": _maybe_float(result.val_accuracy),
        "train_seconds": float(result.train_seconds),
        "wall_seconds": round(wall, 2),
        "trainable_params": int(result.trainable_params),
        # Only an `auto` run's decision says what auto picks; fixed strategies say "set by user".
        "auto_choice": result.decision["strategy"] if auto else None,
        "auto_reason": result.decision["reason"] if auto else None,
        "bundle": str(Path(bundle)),
    }


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)
