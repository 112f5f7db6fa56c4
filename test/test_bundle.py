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
