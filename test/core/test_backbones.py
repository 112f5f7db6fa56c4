"""The backbone registry: names, sizes, alphas, weights resolution, preprocessing in the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tl_perception.backbones import (
    BACKBONES,
    apply_preprocessing,
    build_base,
    get_backbone,
    resolve_alpha,
    resolve_input_size,
    resolve_weights,
)
from tl_perception.errors import TrainingError


def test_registry_holds_the_issue_backbones() -> None:
    assert set(BACKBONES) == {
        "vgg16", "vgg19", "inception_v3", "resnet50", "mobilenet", "mobilenet_v2",
        "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
    }  # fmt: skip


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(TrainingError, match="unknown backbone 'alexnet'; choose one of vgg16"):
        get_backbone("alexnet")


def test_input_size_below_the_minimum_is_an_error_with_the_range() -> None:
    with pytest.raises(TrainingError, match="valid for inception_v3: use 75 to 1024"):
        resolve_input_size(get_backbone("inception_v3"), 64)
    assert resolve_input_size(get_backbone("mobilenet_v2"), None) == 224


def test_alpha_defaults_and_checks() -> None:
    assert resolve_alpha(get_backbone("mobilenet_v2"), None, "imagenet") == 0.35
    assert resolve_alpha(get_backbone("mobilenet"), None, "imagenet") == 0.25
    with pytest.raises(TrainingError, match="ImageNet weights for alpha"):
        resolve_alpha(get_backbone("mobilenet_v2"), 0.6, "imagenet")
    assert resolve_alpha(get_backbone("mobilenet_v2"), 0.6, None) == 0.6
    with pytest.raises(TrainingError, match="MobileNets only"):
        resolve_alpha(get_backbone("resnet50"), 0.5, "imagenet")


def test_imagenet_at_96_px_falls_back_to_the_cached_224_file(keras_home: Path) -> None:
    spec = get_backbone("mobilenet_v2")
    choice = resolve_weights(spec, "imagenet", 96, 0.35)
    assert choice.keras_arg is not None
    assert Path(choice.keras_arg).name.endswith("_0.35_224_no_top.h5")
    assert str(keras_home) in choice.description
    base = build_base(spec, 96, 0.35, choice)
    assert base.output.shape[1:] == (3, 3, 1280)


def test_missing_imagenet_file_offline_names_the_cache_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    choice = resolve_weights(get_backbone("mobilenet"), "imagenet", 128, 0.25)
    assert choice.keras_arg == "imagenet"
    assert choice.expected_file == tmp_path / "models" / "mobilenet_2_5_128_tf_no_top.h5"


def test_missing_weights_file_is_an_error() -> None:
    with pytest.raises(TrainingError, match="does not exist; pass imagenet, none or"):
        resolve_weights(get_backbone("vgg16"), "/no/such/file.h5", 224, None)


def test_weights_file_of_another_backbone_is_a_clear_error(shared_dir: Path) -> None:
    spec = get_backbone("mobilenet")
    choice = resolve_weights(
        spec, str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5"), 64, 0.25
    )
    with pytest.raises(TrainingError, match="does not fit mobilenet"):
        build_base(spec, 64, 0.25, choice)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v3_small", "efficientnet_b0"])
def test_preprocessing_matches_keras_applications(name: str) -> None:
    """uint8 in, the layers inside the model equal keras' own preprocess_input."""
    import keras

    spec = get_backbone(name)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, apply_preprocessing(spec, inputs))
    module = {
        "resnet50": keras.applications.resnet50,
        "mobilenet_v3_small": keras.applications.mobilenet_v3,
        "efficientnet_b0": keras.applications.efficientnet,
    }[name]
    expected = module.preprocess_input(images.astype("float32"))
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-3)


def test_caffe_preprocessing_survives_a_safe_mode_round_trip(tmp_path: Path) -> None:
    import keras

    spec = get_backbone("vgg16")
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, apply_preprocessing(spec, inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    expected = keras.applications.vgg16.preprocess_input(images.astype("float32"))
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-3)
