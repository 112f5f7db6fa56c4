"""Each strategy's network trains exactly the layers it should, phase by phase."""

from __future__ import annotations

import pytest

from tl_perception.backbones import choose_backbone, get_backbone
from tl_perception.errors import TrainingError
from tl_perception.train.strategies import PHASES, build_network, set_phase, trainable_counts


def _network(strategy: str, cut_layer: str | None = None):
    backbone = choose_backbone(
        "mobilenet_v2", alpha=0.35, input_size=32, weights="none", cut_layer=cut_layer
    )
    return build_network(backbone, 3, strategy)


def test_phases_follow_the_four_cases() -> None:
    assert PHASES == {
        "feature_extraction": ("head",),
        "truncate": ("head",),
        "fine_tune": ("head", "all"),
        "from_scratch": ("all",),
    }


@pytest.mark.parametrize("strategy", ["feature_extraction", "truncate", "fine_tune"])
def test_head_phase_trains_only_the_dense_head(strategy: str) -> None:
    network = _network(strategy)
    set_phase(network, "head")
    counts = trainable_counts(network.model)
    assert counts["trainable_weights"] == 2  # kernel and bias of the new Dense layer
    head = network.model.get_layer("predictions")
    assert counts["trainable_params"] == sum(int(w.numpy().size) for w in head.weights)


def test_truncate_cuts_the_base_at_the_default_mid_layer() -> None:
    network = _network("truncate")
    assert network.base.layers[-1].name == get_backbone("mobilenet_v2").default_cut_layer
    full = _network("feature_extraction")
    assert len(network.base.layers) < len(full.base.layers) * 0.7


def test_truncate_rejects_an_unknown_cut_layer() -> None:
    with pytest.raises(TrainingError, match="cut layer 'no_such_layer' is not a layer"):
        _network("truncate", "no_such_layer")


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def test_fine_tune_all_phase_with_frozen_batchnorm_unfreezes_every_other_layer() -> None:
    network = _network("fine_tune")
    set_phase(network, "all", freeze_batchnorm=True)
    expected = sum(
        len(layer.weights) for layer in network.base.layers if not _is_bn(layer) and layer.weights
    )
    assert trainable_counts(network.model)["trainable_weights"] == expected + 2
    assert expected > 50
    assert not any(layer.trainable for layer in network.base.layers if _is_bn(layer))


def test_fine_tune_unfreeze_n_trains_only_the_top_layers() -> None:
    network = _network("fine_tune")
    set_phase(network, "all", unfreeze=5, freeze_batchnorm=True)
    top = network.base.layers[-5:]
    expected = sum(len(layer.weights) for layer in top if not _is_bn(layer)) + 2
    assert trainable_counts(network.model)["trainable_weights"] == expected
    assert not any(layer.trainable_weights for layer in network.base.layers[:-5])


def test_unfreeze_more_layers_than_the_base_has_is_an_error() -> None:
    network = _network("fine_tune")
    with pytest.raises(TrainingError, match="exceeds the"):
        set_phase(network, "all", unfreeze=10_000)


def test_from_scratch_trains_everything_with_batchnorm_in_training_mode() -> None:
    network = _network("from_scratch")
    set_phase(network, "all")
    assert trainable_counts(network.model)["trainable_weights"] == (
        len(network.base.trainable_weights) + 2
    )
    # A random base must learn its BatchNorm statistics: in training mode they move.
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    bn = next(layer for layer in network.base.layers if "bn" in layer.name.lower())
    before = bn.moving_mean.numpy().copy()
    network.model(images, training=True)
    assert not np.allclose(before, bn.moving_mean.numpy())


def test_frozen_batchnorm_stays_in_inference_mode_when_the_base_is_unfrozen() -> None:
    import numpy as np

    network = _network("fine_tune")
    set_phase(network, "all", freeze_batchnorm=True)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    bn = next(layer for layer in network.base.layers if "bn" in layer.name.lower())
    before = bn.moving_mean.numpy().copy()
    network.model(images, training=True)
    np.testing.assert_array_equal(before, bn.moving_mean.numpy())


@pytest.mark.slow
def test_adapting_batchnorm_statistics_catch_up_with_new_data_within_100_steps() -> None:
    """With Keras' 0.999 the moving mean closes ~10 % of the gap in 100 steps (val collapses)."""
    import numpy as np

    from tl_perception.train.phases import adapt_batchnorm_momentum

    network = _network("fine_tune")
    set_phase(network, "all")
    assert adapt_batchnorm_momentum(network.base) == sum(
        layer.__class__.__name__ == "BatchNormalization" for layer in network.base.layers
    )
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    scaled = images.astype("float32") / 127.5 - 1.0  # mobilenet_v2's preprocessing
    batch_mean = np.mean(network.base.get_layer("Conv1")(scaled).numpy(), axis=(0, 1, 2))
    bn = network.base.get_layer("bn_Conv1")
    gap_before = np.abs(batch_mean - bn.moving_mean.numpy()).mean()
    for _ in range(100):
        network.model(images, training=True)
    gap_after = np.abs(batch_mean - bn.moving_mean.numpy()).mean()
    assert gap_after < 0.5 * gap_before


def test_frozen_batchnorm_keeps_its_momentum_when_the_rest_adapts() -> None:
    from tl_perception.train.phases import adapt_batchnorm_momentum

    network = _network("fine_tune")
    set_phase(network, "all", freeze_batchnorm=True)
    assert adapt_batchnorm_momentum(network.base, 0.5) == 0
