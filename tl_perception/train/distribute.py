"""Training on several devices: the `tf.distribute` strategy, and batches every replica can take.

`--distribute mirrored` copies the model onto every local device and splits each batch among
them (`tf.distribute.MirroredStrategy` under Keras 3): `batch_size` stays the *global* batch, so
one step sees the same images as on one device and each of R replicas computes B/R of them.
Several hosts (`multiworker`, `engine` "ray") are refused: Keras 3.15's `fit` fails under
`MultiWorkerMirroredStrategy` before its first step (docs/scaling.md has the measured errors,
`bench/bench_multiworker.py` reproduces them).

Under R > 1 replicas two rules must hold for every batch `fit` and `evaluate` see, both measured
with Keras 3.15 / TF 2.21 (docs/scaling.md): the first batch splits evenly over the replicas
(Keras builds the model from the replicas' mean of it), and no batch is shorter than R (a
replica with an empty batch meets TF's oneDNN CPU convolution, which returns its input's shape
for an empty batch). `batch_sizes` cuts every split so; `predict` pads a short last batch
instead. On one device every batch is what it always was.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tl_perception.errors import TrainingError

if TYPE_CHECKING:  # numpy and TensorFlow load when training starts, not with the CLI's parser
    import numpy as np

Log = Callable[[str], None]

#: Why multi-host training refuses (one line each, the CLI's exit 2; docs/scaling.md has the
#: measured traces and `bench/bench_multiworker.py` reproduces them).
MULTIWORKER_REFUSAL = (
    "--distribute multiworker is not supported: Keras 3.15 fit() fails under TF 2.21's "
    "MultiWorkerMirroredStrategy before its first step (keras-team/keras#20585); use "
    "--distribute mirrored on one multi-GPU host, or run many trainings in parallel "
    "(docs/scaling.md)"
)
RAY_REFUSAL = (
    "--engine ray is not supported for finetune: Ray Train's TensorflowTrainer runs "
    "MultiWorkerMirroredStrategy, under which Keras 3.15 fit() fails (keras-team/keras#20585); "
    "use --distribute mirrored on one multi-GPU host, or run many trainings in parallel "
    "(docs/scaling.md)"
)


def refuse_unsupported_distribution(distribute: str, engine: str, workers: Any) -> None:
    """Refuse, before anything is read, the multi-host routes that cannot train here.

    Raises:
        TrainingError: `multiworker`, `engine` "ray", or `workers` other than 1.
    """
    if distribute == "multiworker":
        raise TrainingError(MULTIWORKER_REFUSAL)
    if engine == "ray":
        raise TrainingError(RAY_REFUSAL)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TrainingError(f"workers must be a positive integer, got {workers!r}")
    if workers != 1:
        raise TrainingError(
            f"--workers {workers} needs several hosts (--engine ray, which is refused); "
            "one host trains on all its GPUs with --distribute mirrored"
        )


def distribution_strategy(name: str, batch_size: int, log: Log) -> Any:
    """The strategy whose scope the run builds and trains in; refuses what cannot work.

    `batch_size` (the global batch) must split evenly and give every replica at least two
    images, so that any split can be batched by `batch_sizes`' rules.
    """
    import tensorflow as tf

    if name == "multiworker":  # validate() refused it already; never fall back silently
        raise TrainingError(MULTIWORKER_REFUSAL)
    if name != "mirrored":
        return tf.distribute.get_strategy()
    strategy = _mirrored_strategy()
    replicas = int(strategy.num_replicas_in_sync)
    devices = ", ".join(_short_device(d) for d in strategy.extended.worker_devices)
    log(f"distribute: MirroredStrategy over {replicas} replica(s) ({devices})")
    if batch_size < 2 * replicas or batch_size % replicas:
        raise TrainingError(
            f"--batch-size {batch_size} is the global batch, split over {replicas} replicas: "
            f"use a multiple of {replicas} that is at least {2 * replicas}"
        )
    return strategy


@functools.cache
def _mirrored_strategy() -> Any:
    """One MirroredStrategy per process, shared by every run in it (an `experiment`, a test).

    Each new strategy numbers its collective ops from the same start, so a second one in the
    process collides with the first's all-reduces ("Shape mismatch in the collective instance
    100 ... expected shape [771] but another member in the group expected shape [27]",
    measured with two mirrored runs in a row).
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


def _short_device(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:1' -> 'GPU:1'."""
    return device.rsplit("device:", 1)[-1]


def replicas_in_sync() -> int:
    """Replicas of the strategy in scope (1 outside any `--distribute` scope)."""
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def batch_sizes(count: int, batch_size: int, replicas: int) -> list[int]:
    """Sizes of the batches `count` images are cut into: `batch_size` each, the rest last.

    Under R > 1 replicas two rules of Keras 3.15 and TF 2.21 hold (both measured, module doc):
    the first batch splits evenly (a multiple of R), and no batch is shorter than R. A last batch
    shorter than R takes R images from the one before; a lone batch that does not split evenly
    gives its first R * k images a batch of their own. `batch_size` is a multiple of R and at
    least 2R (`distribution_strategy` checks it), so this always works once count >= 2R.

    Raises:
        TrainingError: a split too small to feed every replica under these rules.
    """
    full, rest = divmod(count, batch_size)
    sizes = [batch_size] * full + ([rest] if rest else [])
    if replicas == 1 or rest == 0 or (full and rest >= replicas):
        return sizes
    if full:
        return [*sizes[:-2], batch_size - replicas, replicas + rest]
    if rest % replicas == 0:
        return sizes
    if rest < 2 * replicas:
        raise TrainingError(
            f"{count} image(s) cannot be split over {replicas} replicas (a first batch must "
            f"split evenly and none may be shorter than {replicas}): use fewer devices or more data"
        )
    first = replicas * (rest // replicas - 1)
    return [first, rest - first]


def batch_count(count: int, batch_size: int) -> int:
    """How many batches `batch_dataset` makes of `count` images (steps per epoch)."""
    return len(batch_sizes(count, batch_size, replicas_in_sync()))


def batch_dataset(ds: Any, count: int, batch_size: int) -> Any:
    """`ds.batch(batch_size)` with the sizes of `batch_sizes` for the strategy in scope.

    On one replica, or where the plain batches already feed every replica, this is exactly
    `ds.batch(batch_size)`; otherwise the elements are grouped by their batch index, in order.
    """
    import numpy as np
    import tensorflow as tf

    sizes = batch_sizes(count, batch_size, replicas_in_sync())
    if sizes == batch_sizes(count, batch_size, 1):
        return ds.batch(batch_size)
    ends = tf.constant(np.cumsum(sizes), tf.int64)
    widths = tf.constant(sizes, tf.int64)

    def key(index: Any, _element: Any) -> Any:
        return tf.searchsorted(ends, [index], side="right", out_type=tf.int64)[0]

    def group(_key: Any, window: Any) -> Any:
        return window.map(lambda _index, element: element).batch(max(sizes))

    grouped = ds.enumerate().group_by_window(
        key_func=key, reduce_func=group, window_size_func=lambda k: tf.gather(widths, k)
    )
    return grouped.apply(tf.data.experimental.assert_cardinality(len(sizes)))


def predict(model: Any, images: np.ndarray, batch_size: int) -> Any:
    """`model.predict` that feeds every replica: a short last batch is padded, then cut off.

    Inference treats images independently (BatchNorm in inference mode), so the padded copies
    change nothing but the work done.
    """
    import numpy as np

    replicas = replicas_in_sync()
    count = len(images)
    rest = count % batch_size
    if replicas == 1 or count == 0 or not 0 < rest < replicas:
        return model.predict(images, batch_size=batch_size, verbose=0)
    padding = np.repeat(images[-1:], replicas - rest, axis=0)
    outputs = model.predict(np.concatenate([images, padding]), batch_size=batch_size, verbose=0)
    if isinstance(outputs, dict):
        return {name: value[:count] for name, value in outputs.items()}
    return outputs[:count]
