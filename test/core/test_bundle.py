"""The bundle contract: every way a bundle can be broken gives one clear BundleError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tl_perception.bundle import read_bundle, update_meta
from tl_perception.errors import BundleError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_valid_bundle_reads_and_loads(color_bundle: Path) -> None:
    bundle = read_bundle(color_bundle)
    assert bundle.class_names == ("red", "green", "blue")
    assert bundle.input_size == (32, 32)
    model = bundle.load_keras_model()
    assert model.outputs[0].shape[-1] == 3


def _edit_meta(path: Path, **fields: object) -> None:
    meta = json.loads((path / "bundle.json").read_text())
    meta.update(fields)
    (path / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("breakage", "match"),
    [
        (lambda p: (p / "bundle.json").unlink(), "missing bundle.json"),
        (lambda p: (p / "bundle.json").write_text("{not json"), "corrupt JSON"),
        (lambda p: (p / "labels.txt").unlink(), "missing labels.txt"),
        (lambda p: (p / "labels.txt").write_text("red\ngreen\n"), "do not equal"),
        (lambda p: (p / "model.keras").unlink(), "missing model.keras"),
        (lambda p: (p / "model.keras").write_bytes(b"garbage"), "corrupt"),
        (lambda p: _edit_meta(p, version=99), "version 99"),
        (lambda p: _edit_meta(p, format="other"), "format"),
        (lambda p: _edit_meta(p, input_size=[32]), "input_size"),
    ],
)
def test_broken_bundles_are_refused(color_bundle: Path, tmp_path: Path, breakage, match) -> None:
    broken = _copy(color_bundle, tmp_path / "b")
    breakage(broken)
    with pytest.raises(BundleError, match=match):
        read_bundle(broken)


def test_label_count_must_match_model_outputs(color_bundle: Path, tmp_path: Path) -> None:
    broken = _copy(color_bundle, tmp_path / "b")
    _edit_meta(broken, class_names=["red", "green"])
    (broken / "labels.txt").write_text("red\ngreen\n")
    with pytest.raises(BundleError, match=r"3 outputs but labels\.txt has 2"):
        read_bundle(broken).load_keras_model()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle(tmp_path / "nope")


def test_update_meta_keeps_required_fields(color_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(color_bundle, tmp_path / "b")
    bundle = update_meta(copy, metrics={"accuracy": 1.0})
    assert bundle.meta["metrics"] == {"accuracy": 1.0}
    assert bundle.class_names == ("red", "green", "blue")


def test_crop_policy_calibration_and_threshold_are_read(color_bundle: Path, tmp_path: Path) -> None:
    from tl_perception.crop import CropPolicy

    plain = read_bundle(color_bundle)
    assert (plain.crop_policy, plain.temperature, plain.unknown_threshold) == (None, None, None)
    policy = CropPolicy(context=0.25, square=False, fill="constant", fill_value=7, min_box=4.0)
    copy = _copy(color_bundle, tmp_path / "b")
    _edit_meta(
        copy,
        crop=policy.to_dict(),
        calibration={"temperature": 1.7, "ece_before": 0.2, "ece_after": 0.05},
        unknown_threshold={"value": 0.6, "coverage": 0.8},
    )
    bundle = read_bundle(copy)
    assert bundle.crop_policy == policy
    assert (bundle.temperature, bundle.unknown_threshold) == (1.7, 0.6)
    _edit_meta(copy, crop=None, unknown_threshold={"value": None, "reason": "never reached"})
    assert (read_bundle(copy).crop_policy, read_bundle(copy).unknown_threshold) == (None, None)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"crop": {"version": 1, "context": -0.1}}, r"crop: missing 'square'"),
        (
            {
                "crop": {
                    "version": 1,
                    "context": -0.1,
                    "square": True,
                    "fill": "replicate",
                    "fill_value": 0,
                    "min_box": 12.0,
                }
            },
            r"bundle\.json: crop: context must be a number",
        ),
        ({"crop": "whole"}, "crop: expected an object"),
        ({"calibration": {"temperature": 0}}, "temperature must be a positive number"),
        ({"calibration": {"temperature": True}}, "temperature must be a positive number"),
        ({"calibration": {"ece_after": 0.1}}, "temperature must be a positive number"),
        ({"calibration": [1.5]}, "'calibration' must be an object"),
        ({"unknown_threshold": 0.5}, "'unknown_threshold' must be an object with a 'value'"),
        ({"unknown_threshold": {"value": 1.5}}, r"value must be a number in \[0, 1\]"),
        ({"unknown_threshold": {"value": "0.5"}}, r"value must be a number in \[0, 1\]"),
    ],
)
def test_bad_crop_calibration_or_threshold_is_one_line_error(
    color_bundle: Path, tmp_path: Path, fields: dict[str, object], match: str
) -> None:
    broken = _copy(color_bundle, tmp_path / "b")
    _edit_meta(broken, **fields)
    with pytest.raises(BundleError, match=match) as caught:
        read_bundle(broken)
    assert len(str(caught.value).splitlines()) == 1
