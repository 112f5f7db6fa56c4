"""Export a bundle's Keras model as `model.tflite` and record how faithful the conversion is.

Conversion itself is `inference.keras_to_tflite` (the one place for it). This module picks the
images: int8 calibrates on up to `MAX_CALIBRATION_IMAGES` training images; agreement is the share
of validation images whose top-1 class is the same from the Keras model and the TFLite model.
Float exports (float32 and float16 weights) below `MIN_FLOAT_AGREEMENT` are refused, since that
means the conversion changed the network; int8 records its agreement and warns when it is low.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.bundle import TFLITE_FILE, Bundle, read_bundle, update_meta
from tl_perception.dataset import DatasetIndex, Sample, read_dataset
from tl_perception.errors import BundleError, DatasetError, ImageDecodeError
from tl_perception.fsutil import atomic_write_bytes
from tl_perception.images import read_image_file, resize_rgb
from tl_perception.inference import Classifier, keras_to_tflite
from tl_perception.inference.backends import LiteRTBackend
from tl_perception.inference.convert import QUANTIZE_MODES, SIDECAR_FILE

MAX_CALIBRATION_IMAGES = 200
MIN_FLOAT_AGREEMENT = 0.99
BATCH_SIZE = 64
#: A path, a `dataset.Sample`, a (path, class) pair, or an already decoded RGB uint8 image.
ImageItem = str | Path | Sample | tuple[Any, ...] | np.ndarray


def export_tflite(
    bundle_path: str | Path,
    quantize: str | None = None,
    calibration_samples: Sequence[ImageItem] | None = None,
    agreement_samples: Sequence[ImageItem] | None = None,
    dataset_path: str | Path | None = None,
) -> dict[str, Any]:
    """Convert, check agreement with Keras, write `model.tflite` atomically, update bundle.json.

    Images default to the dataset at `dataset_path`, else the one recorded in bundle.json:
    calibration from its train split (all images of a plain tree), agreement from its val split
    (else test, else all).

    Returns:
        The record stored under `"tflite"` in bundle.json: file, quantize, top1_agreement
        (None when no image was available), num_images, size_bytes, calibration_images.

    Raises:
        BundleError: unreadable bundle, failed conversion, or a float model whose agreement
            is below 0.99 (nothing is written then).
        DatasetError: int8 without any calibration image.
    """
    bundle = read_bundle(bundle_path)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    dataset = _dataset(bundle, dataset_path)
    if calibration_samples is None and dataset is not None:
        calibration_samples = _pick(_split(dataset, ("train",)), MAX_CALIBRATION_IMAGES)
    if agreement_samples is None and dataset is not None:
        agreement_samples = _split(dataset, ("val", "test"))

    calibration: list[np.ndarray] = []
    if quantize == "int8":
        calibration = list(_load(calibration_samples or (), bundle.input_size))
        if not calibration:
            raise DatasetError(
                f"int8 export of {str(bundle.path)!r} needs calibration images: pass "
                "--dataset DATASET (its train split is used) or train the bundle with a "
                "recorded dataset"
            )
    data = keras_to_tflite(bundle.load_keras_model(), quantize, calibration or None)

    agreement, num_images = _agreement(bundle, data, agreement_samples or ())
    record: dict[str, Any] = {
        "file": TFLITE_FILE,
        "quantize": quantize,
        "top1_agreement": agreement,
        "num_images": num_images,
        "size_bytes": len(data),
        "calibration_images": len(calibration),
    }
    if agreement is None:
        warnings.warn(
            f"{bundle.path}: no validation images to measure TFLite/Keras agreement; pass "
            "--dataset DATASET to record it",
            stacklevel=2,
        )
    elif agreement < MIN_FLOAT_AGREEMENT:
        message = (
            f"{bundle.path}: TFLite ({quantize or 'float32'}) top-1 agrees with Keras on only "
            f"{agreement:.2%} of {num_images} images (< {MIN_FLOAT_AGREEMENT:.0%})"
        )
        if quantize != "int8":
            raise BundleError(message + "; model.tflite not written, use the Keras backend")
        warnings.warn(message + "; consider float16 or more calibration images", stacklevel=2)
    atomic_write_bytes(bundle.tflite_path, data)
    _drop_conversion_cache_marker(bundle)
    update_meta(bundle.path, tflite=record)
    return record


def _dataset(bundle: Bundle, dataset_path: str | Path | None) -> DatasetIndex | None:
    """The dataset given, else the one bundle.json records (if it still exists)."""
    if dataset_path is not None:
        return read_dataset(dataset_path)
    recorded = recorded_dataset_path(bundle.meta)
    if recorded is None or not Path(recorded).is_dir():
        return None
    with contextlib.suppress(DatasetError):
        return read_dataset(recorded)
    return None


def recorded_dataset_path(meta: Mapping[str, Any]) -> str | None:
    """The training dataset's path that `finetune` records in bundle.json (`dataset.path`)."""
    dataset = meta.get("dataset")
    path = dataset.get("path") if isinstance(dataset, dict) else None
    return path if isinstance(path, str) and path else None


def _split(dataset: DatasetIndex, preferred: Sequence[str]) -> tuple[Sample, ...]:
    for name in preferred:
        if dataset.split(name):
            return dataset.split(name)
    return dataset.samples if not dataset.splits() else ()


def _pick(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """A fixed random subset (seed 0), so every class tends to be represented."""
    if len(samples) <= limit:
        return list(samples)
    order = np.random.default_rng(0).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(order)]


def _load(items: Sequence[ImageItem], size: tuple[int, int]) -> list[np.ndarray]:
    """Decode and resize images; unreadable files are skipped (they say nothing about agreement)."""
    images = []
    for item in items:
        if isinstance(item, np.ndarray):
            rgb = item
        else:
            path = item.path if isinstance(item, Sample) else item
            path = path[0] if isinstance(path, tuple) else path
            try:
                rgb = read_image_file(path)
            except ImageDecodeError:
                continue
        images.append(resize_rgb(np.asarray(rgb, dtype=np.uint8), size))
    return images


def _agreement(
    bundle: Bundle, tflite: bytes, items: Sequence[ImageItem]
) -> tuple[float | None, int]:
    """Share of images with the same top-1 class from Keras and from the TFLite flatbuffer."""
    images = _load(items, bundle.input_size)
    if not images:
        return None, 0
    keras_model = Classifier(bundle.path, backend="keras")
    lite = LiteRTBackend(tflite, bundle)
    same = 0
    for start in range(0, len(images), BATCH_SIZE):
        batch = np.stack(images[start : start + BATCH_SIZE])
        reference = keras_model.predict_proba(list(batch)).argmax(axis=1)
        same += int((lite(batch).argmax(axis=1) == reference).sum())
    return same / len(images), len(images)


def _drop_conversion_cache_marker(bundle: Bundle) -> None:
    """Without its sidecar, `model.tflite` counts as shipped and is never silently reconverted."""
    with contextlib.suppress(FileNotFoundError):
        (bundle.path / SIDECAR_FILE).unlink()
