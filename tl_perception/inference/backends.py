"""The two ways to run a bundle's network on a uint8 batch: LiteRT and a compiled Keras graph.

Both take an (N, H, W, 3) uint8 batch already at the input size and return (N, C) float32
probabilities. `model.predict` is deliberately absent: it rebuilds its data pipeline on every
call (~59 ms of overhead per frame measured here), which a per-frame node cannot afford.

Batches are what ROI mode and several cameras run on (all crops of all cameras in one call):
`padded_size` says what size the caller fills (LiteRT: a power-of-two bucket, each with its own
interpreter allocated once), `max_batch` how many images one call takes at most.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.bundle import Bundle
from tl_perception.errors import BundleError, one_line

#: Batch sizes LiteRT runs at: a batch of n images is padded to the smallest bucket >= n, and
#: batches over the largest bucket run in chunks of it. Each bucket keeps its own interpreter,
#: allocated once, so a frame never resizes or re-allocates tensors (the ROI count changes from
#: frame to frame; resizing one interpreter costs milliseconds each time it does).
BATCH_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def bucket_for(count: int, buckets: tuple[int, ...] = BATCH_BUCKETS) -> int:
    """The smallest bucket holding `count` images (the largest one for more)."""
    return next((b for b in buckets if b >= count), buckets[-1])


class KerasBackend:
    """`model.keras` behind a `tf.function` with a fixed (None, H, W, 3) uint8 signature."""

    name = "keras"

    def __init__(self, bundle: Bundle) -> None:
        import tensorflow as tf

        model = bundle.load_keras_model()
        height, width = bundle.input_size
        spec = tf.TensorSpec((None, height, width, 3), tf.uint8, name="images")

        def infer(images: Any) -> Any:
            return model(images, training=False)

        self._model = model
        # tf.function is untyped: wrap by call, not as a decorator, so `infer` keeps its type.
        self._infer = tf.function(infer, input_signature=[spec], reduce_retracing=True)
        self._tf = tf

    @property
    def max_batch(self) -> int:
        """The most images one call runs (bounds the graph's activation memory)."""
        return BATCH_BUCKETS[-1]

    @staticmethod
    def padded_size(count: int) -> int:
        """The fixed signature takes any batch size without retracing: no padding needed."""
        return count

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self._infer(self._tf.convert_to_tensor(batch, dtype=self._tf.uint8))
        return np.asarray(out, dtype=np.float32)


class _Slot:
    """One allocated interpreter at one batch size, with its tensor details."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])


class LiteRTBackend:
    """A TFLite flatbuffer in the LiteRT interpreter; handles uint8, int8 and float models.

    A model with a dynamic batch dimension gets one interpreter per `BATCH_BUCKETS` size, made
    on first use (`Classifier.warmup` makes them before frames come) and kept; a fixed-batch
    model runs image by image.
    """

    name = "litert"

    def __init__(self, model: bytes | Path, bundle: Bundle, num_threads: int | None = None) -> None:
        self._model = model
        self._threads = num_threads
        interpreter = open_interpreter(model, num_threads)
        try:
            check_tflite_shapes(interpreter, bundle, _describe(model))
            first = _Slot(interpreter)
            self._resizable = int(first.input["shape_signature"][0]) == -1
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as err:
            # A damaged flatbuffer can load yet fail on its tensor details (e.g. a name that
            # is not UTF-8): still a bad model file, not a crash.
            raise BundleError(
                f"{_describe(model)}: unreadable TFLite tensor details: {one_line(err)}"
            ) from err
        self._classes = int(first.output["shape"][-1])
        self._slots: dict[int, _Slot] = {first.batch: first}

    @property
    def max_batch(self) -> int:
        """The most images one call runs at once (larger batches are chunked by the caller)."""
        return BATCH_BUCKETS[-1] if self._resizable else 1

    def padded_size(self, count: int) -> int:
        """The batch size a call with `count` images runs at (the rest is zero padding)."""
        return bucket_for(count) if self._resizable else count

    def _slot(self, batch: int) -> _Slot:
        slot = self._slots.get(batch)
        if slot is None:
            interpreter = open_interpreter(self._model, self._threads)
            index = interpreter.get_input_details()[0]["index"]
            interpreter.resize_tensor_input(index, [batch, *self._input_hw3()])
            interpreter.allocate_tensors()
            slot = self._slots[batch] = _Slot(interpreter)
        return slot

    def _input_hw3(self) -> list[int]:
        return [int(v) for v in next(iter(self._slots.values())).input["shape"][1:]]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, C) probabilities; N must be `padded_size(n)` for the n images the caller has."""
        if len(batch) == 0:
            return np.zeros((0, self._classes), dtype=np.float32)
        if not self._resizable:
            return np.concatenate([self._invoke(self._only(), image[None]) for image in batch])
        return self._invoke(self._slot(len(batch)), batch)

    def _only(self) -> _Slot:
        return next(iter(self._slots.values()))

    @staticmethod
    def _invoke(slot: _Slot, batch: np.ndarray) -> np.ndarray:
        interpreter = slot.interpreter
        interpreter.set_tensor(slot.input["index"], _to_input(batch, slot.input))
        interpreter.invoke()
        out = interpreter.get_tensor(slot.output["index"])
        scale, zero_point = slot.output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale:
            out = (np.asarray(out, dtype=np.float32) - zero_point) * scale
        return np.array(out, dtype=np.float32)  # a copy: LiteRT reuses its output buffer


def default_threads() -> int:
    """All cores up to 4: LiteRT's own default is a single thread."""
    return max(1, min(4, os.cpu_count() or 1))


def open_interpreter(model: bytes | Path, num_threads: int | None = None) -> Any:
    """Load a TFLite model in LiteRT; any failure is a BundleError naming the file."""
    from ai_edge_litert.interpreter import Interpreter

    threads = num_threads or default_threads()
    try:
        if isinstance(model, bytes):
            interpreter = Interpreter(model_content=model, num_threads=threads)
        else:
            interpreter = Interpreter(model_path=str(model), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as err:
        raise BundleError(f"{_describe(model)}: cannot load TFLite model: {one_line(err)}") from err
    return interpreter


def check_tflite_shapes(interpreter: Any, bundle: Bundle, where: str) -> None:
    """The TFLite model must take one (N, H, W, 3) image tensor and give C probabilities."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(
            f"{where}: expected 1 input and 1 output tensor, got {len(inputs)} and {len(outputs)}"
        )
    in_shape = tuple(int(v) for v in inputs[0]["shape"])
    out_shape = tuple(int(v) for v in outputs[0]["shape"])
    if len(in_shape) != 4 or in_shape[1:] != (*bundle.input_size, 3):
        raise BundleError(
            f"{where}: input shape {in_shape} does not match bundle input_size "
            f"{list(bundle.input_size)} with 3 channels; re-export the TFLite model"
        )
    if out_shape[-1] != bundle.num_classes:
        raise BundleError(
            f"{where}: TFLite model has {out_shape[-1]} outputs but the bundle has "
            f"{bundle.num_classes} classes; re-export the TFLite model"
        )


def _to_input(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """uint8 pixels as the model's input dtype (quantised inputs use their scale/zero point)."""
    dtype = detail["dtype"]
    scale, zero_point = detail["quantization"]
    if dtype == np.uint8 and not scale:
        return batch
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.rint(batch.astype(np.float32) / scale + zero_point)
        quantized: np.ndarray = np.clip(q, info.min, info.max).astype(dtype)
        return quantized
    converted: np.ndarray = batch.astype(dtype)
    return converted


def _describe(model: bytes | Path) -> str:
    return "converted TFLite model" if isinstance(model, bytes) else str(model)
