"""Classifier: a model bundle in, top-k (class name, score) per image out.

Images of any size go through one OpenCV resize (see `preprocess`); normalisation is inside the
model. `backend="auto"` uses LiteRT (about 100x less per-frame overhead than Keras on a CPU) and
converts the bundle's Keras model once when no `model.tflite` is shipped (see `convert`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tl_perception.bundle import Bundle, read_bundle
from tl_perception.errors import BundleError, one_line
from tl_perception.inference.backends import (
    KerasBackend,
    LiteRTBackend,
    bucket_for,
    default_threads,
)
from tl_perception.inference.convert import tflite_for_bundle
from tl_perception.inference.preprocess import fill_batch, worth_parallel

BACKENDS = ("auto", "litert", "keras")


class Classifier:
    """Run a bundle on RGB uint8 images.

    Calls are serialised by a lock, so several threads may share one Classifier (they wait for
    each other; for parallel throughput create one Classifier per thread).

    Raises:
        BundleError: the bundle (or its TFLite model) is missing, corrupt or inconsistent.
        ValueError: unknown backend.
    """

    def __init__(
        self, bundle_path: str | Path, backend: str = "auto", num_threads: int | None = None
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.bundle: Bundle = read_bundle(bundle_path)
        self._lock = threading.Lock()
        self._buffers: dict[int, np.ndarray] = {}  # batch bucket -> reused input batch
        self._pool: ThreadPoolExecutor | None = None  # resizes batches of large frames
        if backend == "keras":
            self._run: KerasBackend | LiteRTBackend = KerasBackend(self.bundle)
        else:
            self._run = self._litert(num_threads)
        self.backend: str = self._run.name

    def _litert(self, num_threads: int | None) -> LiteRTBackend:
        loaded: list[LiteRTBackend] = []

        def validate(model: bytes | Path) -> None:
            loaded.append(LiteRTBackend(model, self.bundle, num_threads))

        tflite_for_bundle(self.bundle, validate)
        return loaded[-1]  # the last model validated is the one tflite_for_bundle settled on

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.bundle.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        return self.bundle.input_size

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) float32 class probabilities for RGB uint8 images of any size.

        Grey (HxW, HxWx1) is replicated to RGB and an alpha channel is dropped.

        Raises:
            ImageDecodeError: an image that is not uint8 or has an unsupported shape.
        """
        count = len(images)
        with self._lock:
            step = self._run.max_batch
            if count <= step:
                return self._run_chunk(images)
            return np.concatenate(
                [self._run_chunk(images[i : i + step]) for i in range(0, count, step)]
            )

    def _run_chunk(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """One backend call: images resized into a reused buffer, zero-padded to its bucket."""
        count = len(images)
        padded = self._run.padded_size(count)
        batch = self._buffer(padded)[:padded]
        pool = None
        if worth_parallel(images):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(default_threads(), thread_name_prefix="resize")
            pool = self._pool
        fill_batch(images, batch, pool)
        batch[count:] = 0
        return self._run(batch)[:count]

    def _buffer(self, count: int) -> np.ndarray:
        size = bucket_for(count)
        buffer = self._buffers.get(size)
        if buffer is None or len(buffer) < count:
            height, width = self.input_size
            buffer = np.zeros((max(size, count), height, width, 3), dtype=np.uint8)
            self._buffers[size] = buffer
        return buffer

    def classify(
        self, images: Sequence[np.ndarray], top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """The `top_k` (class name, score) pairs per image, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        probs = self.predict_proba(images)
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.class_names[c], float(row[c])) for c in idx]
            for row, idx in zip(probs, order, strict=True)
        ]

    def warmup(self, max_batch: int = 1) -> None:
        """Dummy inferences so the first real frame does not pay graph tracing or allocation:
        one image, then one batch per bucket up to `max_batch` (the most crops a frame of the
        caller can have), so each bucket's interpreter and input buffer exist before frames do.

        It is also the first time the network runs, so a model that loads but cannot run
        (a damaged flatbuffer, an op that fails) is refused here as a BundleError.
        """
        height, width = self.input_size
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        try:
            probs = self.predict_proba([blank])
            for size in sorted({bucket_for(n) for n in range(2, max_batch + 1)}):
                self.predict_proba([blank] * size)
        except Exception as err:  # TF and LiteRT raise many types; all mean "this model is broken"
            raise BundleError(
                f"{self.bundle.path}: the model fails on a blank image: {one_line(err)}"
            ) from err
        if probs.shape != (1, self.bundle.num_classes):
            raise BundleError(
                f"{self.bundle.path}: the model returns shape {probs.shape} for one image, "
                f"expected (1, {self.bundle.num_classes})"
            )

    def __repr__(self) -> str:
        return (
            f"Classifier({str(self.bundle.path)!r}, backend={self.backend!r}, "
            f"classes={len(self.class_names)}, input_size={self.input_size})"
        )
