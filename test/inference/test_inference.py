"""Classifier on real tiny bundles: preprocessing, both backends, the TFLite conversion cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tl_perception.errors import BundleError, ImageDecodeError
from tl_perception.inference import Classifier, keras_to_tflite
from tl_perception.inference.convert import SIDECAR_FILE

from support.helpers import COLORS, color_image, make_color_bundle

NAMES = tuple(COLORS)


def colour_set(count: int = 12, size: tuple[int, int] = (40, 56)) -> tuple[list, list[str]]:
    names = [NAMES[i % 3] for i in range(count)]
    return [color_image(n, size, seed=100 + i) for i, n in enumerate(names)], names


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private copy without any cached TFLite model."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.tflite*"))
    return dst


@pytest.fixture(scope="module")
def litert(color_bundle: Path) -> Classifier:
    return Classifier(color_bundle, backend="litert")


@pytest.fixture(scope="module")
def keras_clf(color_bundle: Path) -> Classifier:
    return Classifier(color_bundle, backend="keras")


def test_classify_returns_top_k_best_first_with_probabilities(litert: Classifier) -> None:
    images, names = colour_set()
    results = litert.classify(images, top_k=2)
    assert [r[0][0] for r in results] == names
    for result in results:
        assert len(result) == 2
        scores = [score for _, score in result]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1.0 + 1e-5
    assert len(litert.classify(images[:1], top_k=10)[0]) == 3  # capped at the class count
    probs = litert.predict_proba(images)
    assert probs.shape == (len(images), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_classifier_exposes_bundle_facts(litert: Classifier, color_bundle: Path) -> None:
    assert litert.class_names == NAMES
    assert litert.input_size == (32, 32)
    assert litert.bundle.path == color_bundle
    litert.warmup()
    with pytest.raises(ValueError, match="top_k"):
        litert.classify([color_image("red")], top_k=0)
    with pytest.raises(ValueError, match="backend"):
        Classifier(color_bundle, backend="onnx")


@pytest.mark.parametrize("size", [(4, 4), (32, 32), (480, 640), (600, 90), (17, 300)])
def test_images_of_any_size_and_aspect_are_resized_once(litert: Classifier, size) -> None:
    images = [color_image(n, size, seed=7) for n in NAMES]
    assert [r[0][0] for r in litert.classify(images, top_k=1)] == list(NAMES)


def test_grey_and_rgba_inputs_match_their_rgb_equivalents(litert: Classifier) -> None:
    rgb = color_image("green", (50, 70), seed=3)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])
    probs = litert.predict_proba([grey, grey[:, :, None], np.dstack([grey] * 3), rgba, rgb])
    np.testing.assert_array_equal(probs[0], probs[2])
    np.testing.assert_array_equal(probs[1], probs[2])
    np.testing.assert_array_equal(probs[3], probs[4])
    assert litert.predict_proba([]).shape == (0, 3)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((8,), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_unusable_images_are_refused_clearly(litert: Classifier, image, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        litert.predict_proba([image])


def test_keras_and_litert_agree(litert: Classifier, keras_clf: Classifier) -> None:
    assert (litert.backend, keras_clf.backend) == ("litert", "keras")
    images, names = colour_set(count=24, size=(45, 61))
    rng = np.random.default_rng(0)
    images += [rng.integers(0, 256, (30, 30, 3), dtype=np.uint8) for _ in range(6)]
    p_lite = litert.predict_proba(images)
    p_keras = keras_clf.predict_proba(images)
    np.testing.assert_array_equal(p_lite.argmax(1), p_keras.argmax(1))
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-4)
    assert [NAMES[i] for i in p_keras.argmax(1)[: len(names)]] == names
    # Batch size changes (LiteRT resizes its input tensor) give the same answers.
    np.testing.assert_allclose(litert.predict_proba(images[:1]), p_lite[:1], atol=1e-6)


def test_auto_prefers_litert_and_caches_beside_a_writable_bundle(
    color_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    clf = Classifier(bundle)
    assert clf.backend == "litert"
    tflite, sidecar = bundle / "model.tflite", bundle / SIDECAR_FILE
    record = json.loads(sidecar.read_text())
    assert (
        record["source_sha256"] == hashlib.sha256((bundle / "model.keras").read_bytes()).hexdigest()
    )
    converted_at = tflite.stat().st_mtime_ns
    again = Classifier(bundle)
    assert tflite.stat().st_mtime_ns == converted_at  # reused, not reconverted
    images, _ = colour_set(6)
    np.testing.assert_array_equal(clf.predict_proba(images), again.predict_proba(images))


def test_keras_backend_does_not_convert(color_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    Classifier(bundle, backend="keras")
    assert not (bundle / "model.tflite").exists()


def test_read_only_bundle_caches_in_user_cache_dir(
    color_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sha = hashlib.sha256((bundle / "model.keras").read_bytes()).hexdigest()
    cached = tmp_path / "cache" / "tl_perception" / "tflite" / f"{sha}.tflite"
    bundle.chmod(0o555)
    try:
        assert Classifier(bundle).backend == "litert"
        assert cached.is_file()
        assert sorted(p.name for p in bundle.iterdir()) == sorted(
            p.name for p in color_bundle.iterdir() if not p.name.startswith("model.tflite")
        )
        converted_at = cached.stat().st_mtime_ns
        Classifier(bundle)
        assert cached.stat().st_mtime_ns == converted_at
    finally:
        bundle.chmod(0o755)


def test_changed_model_keras_invalidates_the_cache(color_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    first = Classifier(bundle)
    old = json.loads((bundle / SIDECAR_FILE).read_text())["source_sha256"]
    # Same shapes, different weights: a "retrained" model.keras.
    other = make_color_bundle(tmp_path / "other", classes=("blue", "red", "green"), seed=1)
    shutil.copy(other / "model.keras", bundle / "model.keras")
    second = Classifier(bundle)
    new = json.loads((bundle / SIDECAR_FILE).read_text())["source_sha256"]
    assert new != old
    blue = [color_image("blue", seed=5)]
    assert first.classify(blue, 1)[0][0][0] == "blue"
    # The new network maps blue to output 0, which this bundle's labels call "red".
    assert second.classify(blue, 1)[0][0][0] == "red"
    np.testing.assert_allclose(
        second.predict_proba(blue),
        Classifier(bundle, backend="keras").predict_proba(blue),
        atol=1e-4,
    )


def test_corrupt_auto_converted_tflite_is_regenerated(color_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    Classifier(bundle)
    (bundle / "model.tflite").write_bytes(b"not a flatbuffer")
    clf = Classifier(bundle)
    assert clf.classify([color_image("red")], 1)[0][0][0] == "red"
    record = json.loads((bundle / SIDECAR_FILE).read_text())
    assert (
        hashlib.sha256((bundle / "model.tflite").read_bytes()).hexdigest()
        == record["tflite_sha256"]
    )


def test_corrupt_shipped_tflite_is_refused(color_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(color_bundle, tmp_path / "b")
    (bundle / "model.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match=r"model\.tflite: cannot load TFLite model"):
        Classifier(bundle)
    assert (bundle / "model.tflite").read_bytes() == b"\x00" * 64  # the user's file is untouched


def test_shipped_tflite_with_wrong_class_count_is_refused(tmp_path: Path) -> None:
    two = make_color_bundle(tmp_path / "two", classes=("red", "blue"), input_size=16)
    three = make_color_bundle(tmp_path / "three", input_size=16)
    tflite = keras_to_tflite(Classifier(two, backend="keras").bundle.load_keras_model())
    (three / "model.tflite").write_bytes(tflite)
    with pytest.raises(BundleError, match="2 outputs but the bundle has 3 classes"):
        Classifier(three, backend="litert")


def test_keras_to_tflite_quantized_variants_keep_top1(color_bundle: Path, tmp_path: Path) -> None:
    model = Classifier(color_bundle, backend="keras").bundle.load_keras_model()
    images, names = colour_set(9, size=(32, 32))
    for mode in ("float16", "int8"):
        bundle = copy_bundle(color_bundle, tmp_path / mode)
        tflite = keras_to_tflite(model, quantize=mode, representative_images=images)
        (bundle / "model.tflite").write_bytes(tflite)  # shipped, as `export` would write it
        clf = Classifier(bundle, backend="litert")
        assert [r[0][0] for r in clf.classify(images, top_k=1)] == names, mode
    with pytest.raises(ValueError, match="representative_images"):
        keras_to_tflite(model, quantize="int8")
    with pytest.raises(ValueError, match="quantize"):
        keras_to_tflite(model, quantize="int4")


def test_missing_bundle_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        Classifier(tmp_path / "nowhere")


def test_imagenet_mobilenet_classifies_the_parrot_as_macaw(
    shared_dir: Path, tmp_path: Path
) -> None:
    import keras

    from tl_perception.bundle import bundle_meta, write_bundle

    weights = shared_dir / "weights"
    labels = (weights / "imagenet_labels.txt").read_text().splitlines()[1:]
    seen: set[str] = set()
    names = []
    for index, label in enumerate(labels):  # ImageNet has two "crane"s (bird, machine)
        names.append(label if label not in seen else f"{label} (#{index})")
        seen.add(label)
    inputs = keras.Input((224, 224, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    net = keras.applications.MobileNet(
        input_shape=(224, 224, 3),
        alpha=0.25,
        include_top=True,
        weights=str(weights / "mobilenet_v1_0.25_imagenet_with_top.h5"),
    )
    model = keras.Model(inputs, net(x))
    bundle = tmp_path / "imagenet"
    write_bundle(
        bundle,
        model,
        bundle_meta(class_names=names, input_size=(224, 224), backbone="mobilenet_v1_0.25"),
    )
    bgr = cv2.imread(str(weights / "imagenet_smoke" / "parrot.jpg"))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    for backend in ("litert", "keras"):
        top = Classifier(bundle, backend=backend).classify([rgb], top_k=5)[0]
        assert top[0][0] == "macaw", (backend, top)
