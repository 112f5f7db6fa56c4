"""The two ways to run a bundle's network on a uint8 batch: LiteRT and a compiled Keras graph.

Both take an (N, H, W, 3) uint8 batch already at the input size and return (N, C) float32
probabilities. `model.predict` is deliberately absent: it rebuilds its data pipeline on every
call (~59 ms of overhead per frame measured here), which a per-frame node cannot afford.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.bundle import Bundle
from tl_perception.errors import BundleError, one_line


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

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self._infer(self._tf.convert_to_tensor(batch, dtype=self._tf.uint8))
        return np.asarray(out, dtype=np.float32)


class LiteRTBackend:
    """A TFLite flatbuffer in the LiteRT interpreter; handles uint8, int8 and float models."""

    name = "litert"

    def __init__(self, model: bytes | Path, bundle: Bundle, num_threads: int | None = None) -> None:
        self._interpreter = open_interpreter(model, num_threads)
        try:
            check_tflite_shapes(self._interpreter, bundle, _describe(model))
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._resizable = int(self._input["shape_signature"][0]) == -1
            self._batch = int(self._input["shape"][0])
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as err:
            # A damaged flatbuffer can load yet fail on its tensor details (e.g. a name that
            # is not UTF-8): still a bad model file, not a crash.
            raise BundleError(
                f"{_describe(model)}: unreadable TFLite tensor details: {one_line(err)}"
            ) from err

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, int(self._output["shape"][-1])), dtype=np.float32)
        if not self._resizable:
            return np.concatenate([self._run(image[None]) for image in batch])
        if len(batch) != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self._interpreter.allocate_tensors()
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._batch = len(batch)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], _to_input(batch, self._input))
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])
        scale, zero_point = self._output["quantization"]
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
