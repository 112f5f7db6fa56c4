"""TFLite export of a real tiny bundle: agreement recorded, quantisation modes, atomic replace."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from tl_perception.bundle import read_bundle
from tl_perception.cli import main
from tl_perception.errors import DatasetError
from tl_perception.inference import Classifier
from tl_perception.train.export import export_tflite

from support.helpers import color_image


@pytest.fixture
def bundle(color_bundle: Path, tmp_path: Path) -> Path:
    """A private copy: export writes into the bundle."""
    return Path(shutil.copytree(color_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def color_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ splits of red, green and blue images."""
    root = tmp_path_factory.mktemp("export_data")
    for split, count, seed in (("train", 12, 1000), ("val", 10, 2000)):
        for color in ("red", "green", "blue"):
            folder = root / split / color
            folder.mkdir(parents=True)
            for i in range(count):
                bgr = cv2.cvtColor(color_image(color, (40, 40), seed + i), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(folder / f"{i}.png"), bgr)
    return root


def meta(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def test_float_export_records_agreement_on_the_val_split(bundle: Path, color_dataset: Path) -> None:
    record = export_tflite(bundle, dataset_path=color_dataset)
    assert record["quantize"] is None
    assert record["num_images"] == 30  # the val split, not train
    assert record["top1_agreement"] >= 0.99
    assert meta(bundle)["tflite"] == record
    assert read_bundle(bundle).tflite_path.stat().st_size == record["size_bytes"]
    lite = Classifier(bundle, backend="litert")
    probs = lite.predict_proba([color_image("green", (40, 40), 7)])
    assert lite.class_names[int(probs.argmax())] == "green"


def test_float16_and_int8_exports_work_and_replace_the_file_atomically(
    bundle: Path, color_dataset: Path
) -> None:
    export_tflite(bundle, dataset_path=color_dataset)
    float32_bytes = (bundle / "model.tflite").read_bytes()
    half = export_tflite(bundle, quantize="float16", dataset_path=color_dataset)
    assert half["quantize"] == "float16" and half["top1_agreement"] >= 0.99
    assert (bundle / "model.tflite").read_bytes() != float32_bytes  # replaced, not kept
    int8 = export_tflite(bundle, quantize="int8", dataset_path=color_dataset)
    assert int8["calibration_images"] == 36  # every training image (fewer than 200)
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["num_images"] == 30
    assert meta(bundle)["tflite"]["quantize"] == "int8"
    assert (bundle / "model.tflite").stat().st_size == int8["size_bytes"]
    leftovers = [p.name for p in bundle.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    lite = Classifier(bundle, backend="litert")
    assert lite.predict_proba([color_image("red", (40, 40), 3)]).argmax() == 0


def test_export_uses_given_samples_and_drops_the_conversion_cache_marker(bundle: Path) -> None:
    Classifier(bundle, backend="auto")  # caches an automatic conversion with its sidecar
    assert (bundle / "model.tflite.json").is_file()
    images = [color_image(c, (32, 32), 50 + i) for i in range(4) for c in ("red", "green")]
    record = export_tflite(bundle, agreement_samples=images)
    assert (record["num_images"], record["top1_agreement"]) == (8, 1.0)
    assert not (bundle / "model.tflite.json").exists()


def test_int8_without_calibration_images_is_refused_and_changes_nothing(bundle: Path) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    with pytest.raises(DatasetError, match="needs calibration images"):
        export_tflite(bundle, quantize="int8")
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before


def test_export_without_images_warns_and_records_no_agreement(bundle: Path) -> None:
    with pytest.warns(UserWarning, match="no validation images"):
        record = export_tflite(bundle)
    assert record["top1_agreement"] is None and record["num_images"] == 0


def test_cli_export_prints_agreement_and_bad_bundle_exits_2(
    bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(bundle), "--tflite", "--quantize", "float16"]
    assert main([*argv, "--dataset", str(color_dataset)]) == 0
    assert "top-1 agreement with Keras 1.0000 on 30 images" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing"), "--tflite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "not a model bundle" in err[0]


def test_recorded_agreement_equals_an_independent_comparison(bundle: Path) -> None:
    """int8 calibrated on one black image drifts; the record must match what the models do."""
    images = [color_image(c, (32, 32), 80 + i) for i in range(10) for c in ("red", "green", "blue")]
    images += [np.full((32, 32, 3), v, np.uint8) for v in range(0, 256, 16)]
    black = [np.zeros((32, 32, 3), np.uint8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low int8 agreement warns; the value is what we check
        record = export_tflite(bundle, "int8", calibration_samples=black, agreement_samples=images)
    keras_top1 = Classifier(bundle, backend="keras").predict_proba(images).argmax(axis=1)
    lite_top1 = Classifier(bundle, backend="litert").predict_proba(images).argmax(axis=1)
    assert record["num_images"] == len(images)
    assert record["top1_agreement"] == pytest.approx(float((keras_top1 == lite_top1).mean()))
