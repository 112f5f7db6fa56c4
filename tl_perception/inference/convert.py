"""Keras -> TFLite conversion (the one place for it) and the cache of automatic conversions.

A bundle may ship `model.tflite` (written by `tl-perception export`); that file is used as is.
When it has none, the Classifier converts `model.keras` once and caches the result:

* beside the bundle as `model.tflite` plus a `model.tflite.json` sidecar recording the SHA-256 of
  the `model.keras` it came from and of the `.tflite` itself, when the directory is writable
  (a directory without any write bit is treated as read-only even for root);
* else in `${XDG_CACHE_HOME:-~/.cache}/tl_perception/tflite/<sha256 of model.keras>.tflite`.

Either way the key is the content of `model.keras`, so a retrained model is reconverted and a
stale or half-written cache is never used. A sidecar-marked file that fails to load is
regenerated; a shipped file that fails to load is refused (it is the user's artefact).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.bundle import Bundle
from tl_perception.errors import BundleError, one_line
from tl_perception.fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    user_cache_dir,
)

SIDECAR_FILE = "model.tflite.json"
QUANTIZE_MODES = (None, "float16", "int8")


def keras_to_tflite(
    model: Any,
    quantize: str | None = None,
    representative_images: Sequence[np.ndarray] | np.ndarray | None = None,
) -> bytes:
    """Convert a uint8-input Keras model to a TFLite flatbuffer.

    Args:
        model: a Keras 3 model (uint8 RGB in, probabilities out).
        quantize: None (float32 weights), "float16" (half-size weights) or "int8" (weights and
            activations calibrated on `representative_images`; the uint8 input and float
            output stay as they are, so callers need not change).
        representative_images: uint8 RGB images at the model's input size, needed for "int8".
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and (representative_images is None or len(representative_images) == 0):
        raise ValueError("quantize='int8' needs representative_images (uint8 RGB at input size)")
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        assert representative_images is not None  # checked above; narrows the type
        samples = [np.asarray(img, dtype=np.uint8) for img in list(representative_images)]

        def representative() -> Iterator[list[np.ndarray]]:
            for sample in samples:
                yield [sample[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    with _quiet() as log:
        try:
            return bytes(converter.convert())
        except Exception as err:
            tail = log().strip().splitlines()[-3:]
            detail = f" ({' | '.join(tail)})" if tail else ""
            raise BundleError(one_line(f"TFLite conversion failed: {err}{detail}")) from err


def tflite_cache_dir() -> Path:
    """Converted models of bundles that ship none, under the project's one cache root."""
    return user_cache_dir() / "tflite"


def tflite_for_bundle(bundle: Bundle, validate: Callable[[bytes | Path], None]) -> bytes | Path:
    """A TFLite model for `bundle`: shipped, cached, or freshly converted (and then cached).

    `validate` must raise BundleError when the model does not load or its shapes disagree with
    bundle.json. Returns a path, or the bytes when no cache location is writable.
    """
    shipped = bundle.tflite_path
    sidecar = bundle.path / SIDECAR_FILE
    if shipped.is_file() and not sidecar.is_file():
        validate(shipped)
        return shipped
    source_sha = file_sha256(bundle.model_path)
    if shipped.is_file() and _sidecar_matches(sidecar, source_sha, shipped):
        with contextlib.suppress(BundleError):
            validate(shipped)
            return shipped
    user_cached = tflite_cache_dir() / f"{source_sha}.tflite"
    if not may_write(bundle.path) and user_cached.is_file():
        with contextlib.suppress(BundleError):
            validate(user_cached)
            return user_cached
    data = keras_to_tflite(bundle.load_keras_model())
    validate(data)
    return _store(bundle, data, source_sha, user_cached)


def _store(bundle: Bundle, data: bytes, source_sha: str, user_cached: Path) -> bytes | Path:
    """Cache beside the bundle if we may, else in the user cache, else keep it in memory."""
    record = {
        "converted_from": "model.keras",
        "source_sha256": source_sha,
        "tflite_sha256": hashlib.sha256(data).hexdigest(),
        "note": "written by tl_perception when the bundle had no model.tflite; safe to delete",
    }
    if may_write(bundle.path):
        # Sidecar first: a crash in between leaves a sidecar that does not match the old file.
        with contextlib.suppress(OSError):
            atomic_write_json(bundle.path / SIDECAR_FILE, record)
            return atomic_write_bytes(bundle.tflite_path, data)
    with contextlib.suppress(OSError):
        return atomic_write_bytes(user_cached, data)
    return data


def may_write(directory: Path) -> bool:
    """Writable, and not made read-only on purpose: `chmod a-w` is respected even for root."""
    try:
        return os.access(directory, os.W_OK) and bool(directory.stat().st_mode & 0o222)
    except OSError:
        return False


def _sidecar_matches(sidecar: Path, source_sha: str, tflite: Path) -> bool:
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        return bool(
            record.get("source_sha256") == source_sha
            and record.get("tflite_sha256") == file_sha256(tflite)
        )
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[Callable[[], str]]:
    """Silence the converter's C++/absl/print chatter; the text stays readable for errors."""
    import logging

    tf_logger = logging.getLogger("tensorflow")
    old_level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)

            def read() -> str:
                sink.flush()
                sink.seek(0)
                return sink.read().decode("utf-8", "replace")

            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield read
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tf_logger.setLevel(old_level)
