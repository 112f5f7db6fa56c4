"""The model bundle: the one contract between training and the node (format documented in
docs/formats.md).

A bundle is a directory holding `model.keras` (uint8 RGB in, class probabilities out, backbone
preprocessing inside the graph), `labels.txt`, `bundle.json` and optionally `model.tflite`.
Reading validates everything cheap first; `load_keras_model` loads in Keras safe mode and checks
that the network's shapes match the metadata.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_perception.crop import CropError, CropPolicy, is_number
from tl_perception.errors import BundleError, one_line
from tl_perception.fsutil import atomic_write_json, staged_directory

if TYPE_CHECKING:
    import keras

FORMAT = "tl_perception.bundle"
VERSION = 1
MODEL_FILE = "model.keras"
TFLITE_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
META_FILE = "bundle.json"
REPORT_DIR = "report"

#: The largest input side a bundle may declare. Backbones take 96-600 px; a bundle.json saying
#: more is corrupt or hostile, and would make the warm-up allocate gigabytes before anything
#: could check the network.
MAX_INPUT_SIDE = 4096
#: bundle.json holds metadata and training history (kilobytes); never read a runaway file whole.
MAX_META_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk; `meta` is the whole of bundle.json.

    `crop_policy`: how ROIs are cut from a frame (None: the model classifies whole frames).
    `temperature`: the calibration temperature already folded into the model (None: never
    calibrated); informational, nothing has to apply it. `unknown_threshold`: the best score
    below which an answer should be "unknown", chosen on the validation split (None: none).
    """

    path: Path
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    backbone: str
    meta: Mapping[str, Any] = field(repr=False)
    crop_policy: CropPolicy | None = None
    temperature: float | None = None
    unknown_threshold: float | None = None

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tflite_path(self) -> Path:
        return self.path / TFLITE_FILE

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_keras_model(self) -> keras.Model:
        """Load `model.keras` in safe mode (no lambdas, no pickles) and check its shapes."""
        import keras

        try:
            model = keras.saving.load_model(self.model_path, compile=False, safe_mode=True)
        except Exception as err:  # Keras raises anything from a broken archive; all mean "corrupt"
            raise BundleError(
                f"{self.model_path}: cannot load Keras model: {one_line(err)}"
            ) from err
        check_model_shapes(model, self.input_size, self.num_classes, str(self.model_path))
        return model


def check_model_shapes(
    model: Any, input_size: Sequence[int], num_classes: int, where: str = "model"
) -> None:
    """The network must take (N, H, W, 3) images and give one probability per label."""
    inputs, outputs = (
        list(getattr(model, "inputs", None) or []),
        list(getattr(model, "outputs", None) or []),
    )
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(
            f"{where}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
        )
    in_shape = tuple(inputs[0].shape)
    out_shape = tuple(outputs[0].shape)
    if len(in_shape) != 4 or tuple(in_shape[1:]) != (*tuple(input_size), 3):
        raise BundleError(
            f"{where}: input shape {in_shape} does not match bundle input_size "
            f"{list(input_size)} with 3 channels"
        )
    if len(out_shape) != 2 or out_shape[-1] != num_classes:
        raise BundleError(
            f"{where}: model has {out_shape[-1]} outputs but labels.txt has {num_classes} classes"
        )


def read_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle's metadata without loading the network.

    Raises:
        BundleError: with one line saying what is missing or wrong and where.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a model bundle directory (it does not exist)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{path}: missing {META_FILE}; is this a tl_perception model bundle?")
    try:
        size = meta_path.stat().st_size
        if size > MAX_META_BYTES:
            raise BundleError(
                f"{meta_path}: too large ({size} bytes, at most {MAX_META_BYTES}); not bundle "
                "metadata"
            )
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad UTF-8 or JSON
        raise BundleError(f"{meta_path}: corrupt JSON: {one_line(err, 200)}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: 'format' must be {FORMAT!r}")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:  # JSON true == 1 in Python
        raise BundleError(
            f"{meta_path}: bundle version {version!r} is not supported "
            f"(this tl_perception reads version {VERSION})"
        )
    input_size = meta.get("input_size")
    if (
        not isinstance(input_size, list)
        or len(input_size) != 2
        or not all(
            type(v) is int and 0 < v <= MAX_INPUT_SIDE  # type(): JSON true is not a size
            for v in input_size
        )
    ):
        raise BundleError(
            f"{meta_path}: 'input_size' must be [height, width], integers 1-{MAX_INPUT_SIDE}, "
            f"got {one_line(json.dumps(input_size), 80)}"
        )
    if meta.get("color_order") != "rgb":
        raise BundleError(
            f"{meta_path}: 'color_order' must be 'rgb', got "
            f"{one_line(repr(meta.get('color_order')), 80)}"
        )
    names = meta.get("class_names")
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n.splitlines() == [n] for n in names)
    ):
        raise BundleError(
            f"{meta_path}: 'class_names' must be a non-empty list of names, each one line "
            "(labels.txt holds one per line)"
        )
    if len(set(names)) != len(names):
        raise BundleError(f"{meta_path}: 'class_names' has duplicates")
    backbone = meta.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        raise BundleError(f"{meta_path}: 'backbone' must be a non-empty string")
    labels_path = path / LABELS_FILE
    if not labels_path.is_file():
        raise BundleError(f"{path}: missing {LABELS_FILE}")
    try:
        labels = labels_path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:  # ValueError: not UTF-8
        raise BundleError(f"{labels_path}: unreadable: {one_line(err, 200)}") from err
    if labels != names:
        raise BundleError(
            f"{labels_path}: {len(labels)} labels do not equal bundle.json class_names "
            f"({len(names)} names)"
        )
    model_path = path / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"{path}: missing {MODEL_FILE}")
    if not zipfile.is_zipfile(model_path):
        raise BundleError(f"{model_path}: corrupt (not a .keras zip archive)")
    return Bundle(
        path=path,
        input_size=(input_size[0], input_size[1]),
        class_names=tuple(names),
        backbone=backbone,
        meta=meta,
        crop_policy=_crop_policy(meta, meta_path),
        temperature=_temperature(meta, meta_path),
        unknown_threshold=_unknown_threshold(meta, meta_path),
    )


def _crop_policy(meta: Mapping[str, Any], meta_path: Path) -> CropPolicy | None:
    """`crop`: read strictly by `CropPolicy.from_dict`; absent or null means whole frames."""
    data = meta.get("crop")
    if data is None:
        return None
    try:
        return CropPolicy.from_dict(data, where=f"{meta_path}: crop")
    except CropError as err:
        raise BundleError(one_line(err, 300)) from None


def _temperature(meta: Mapping[str, Any], meta_path: Path) -> float | None:
    """`calibration.temperature`: a positive number when `calibration` is there."""
    calibration = meta.get("calibration")
    if calibration is None:
        return None
    if not isinstance(calibration, dict):
        raise BundleError(f"{meta_path}: 'calibration' must be an object")
    value = calibration.get("temperature")
    if not is_number(value) or value <= 0:
        raise BundleError(
            f"{meta_path}: calibration: temperature must be a positive number, got "
            f"{one_line(repr(value), 80)}"
        )
    return float(value)


def _unknown_threshold(meta: Mapping[str, Any], meta_path: Path) -> float | None:
    """`unknown_threshold.value`: a score in [0, 1], or null when validation found none."""
    record = meta.get("unknown_threshold")
    if record is None:
        return None
    if not isinstance(record, dict) or "value" not in record:
        raise BundleError(f"{meta_path}: 'unknown_threshold' must be an object with a 'value'")
    value = record["value"]
    if value is None:
        return None
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise BundleError(
            f"{meta_path}: unknown_threshold: value must be a number in [0, 1] or null, got "
            f"{one_line(repr(value), 80)}"
        )
    return float(value)


def bundle_meta(
    *,
    class_names: Sequence[str],
    input_size: Sequence[int],
    backbone: str,
    **extra: Any,
) -> dict[str, Any]:
    """The required bundle.json fields plus any extra (strategy, config, metrics, ...)."""
    return {
        **extra,
        "format": FORMAT,
        "version": VERSION,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "color_order": "rgb",
        "backbone": backbone,
        "class_names": list(class_names),
    }


def write_bundle(
    path: str | Path,
    model: Any,
    meta: Mapping[str, Any],
    *,
    tflite: bytes | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Bundle:
    """Write a complete bundle atomically (a previous bundle at `path` survives any failure).

    `meta` comes from `bundle_meta`; `extra_files(stage_dir)` may add a report or other files.
    """
    meta = dict(meta)
    check_model_shapes(model, meta["input_size"], len(meta["class_names"]))
    with staged_directory(path) as stage:
        model.save(stage / MODEL_FILE)
        (stage / LABELS_FILE).write_text("\n".join(meta["class_names"]) + "\n", encoding="utf-8")
        if tflite is not None:
            (stage / TFLITE_FILE).write_bytes(tflite)
        if extra_files is not None:
            extra_files(stage)
        atomic_write_json(stage / META_FILE, meta)
        read_bundle(stage)
    return read_bundle(path)


def update_meta(path: str | Path, **fields: Any) -> Bundle:
    """Add or replace bundle.json fields atomically (e.g. TFLite agreement after export)."""
    bundle = read_bundle(path)
    atomic_write_json(bundle.path / META_FILE, {**bundle.meta, **fields})
    return read_bundle(path)
