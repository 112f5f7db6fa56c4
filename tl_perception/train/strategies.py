"""The four transfer strategies as networks and per-phase trainable sets.

| strategy           | base weights | base kept       | phase "head" | phase "all"           |
|--------------------|--------------|-----------------|--------------|-----------------------|
| feature_extraction | pretrained   | whole           | head only    | -                     |
| truncate           | pretrained   | up to cut layer | head only    | -                     |
| fine_tune          | pretrained   | whole           | head only    | all (or top N) + head |
| from_scratch       | random       | whole           | -            | everything            |

The end-to-end model is uint8 RGB -> preprocessing layers -> base -> global average pooling ->
dropout -> dense softmax. In fine_tune's "all" phase BatchNorm adapts by default, or stays in
inference mode (`freeze_batchnorm`, the Keras guide's recipe; see `set_phase` for how under
Keras 3); a random base always trains its BatchNorm. The head layers are shared with a small
features -> probabilities model, so training the head on cached features trains the end-to-end
model's head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tl_perception.backbones import (
    Backbone,
    WeightsChoice,
    apply_preprocessing,
    build_base,
    truncate,
    weights_fingerprint,
)
from tl_perception.errors import TrainingError

PHASES: dict[str, tuple[str, ...]] = {
    "feature_extraction": ("head",),
    "truncate": ("head",),
    "fine_tune": ("head", "all"),
    "from_scratch": ("all",),
}
HEAD_DROPOUT = 0.2


@dataclass
class Network:
    model: Any  # keras.Model: uint8 images -> probabilities
    base: Any  # the (possibly truncated) backbone inside `model`
    extractor: Any  # uint8 images -> {"features": pooled base output}
    head_model: Any  # pooled features -> probabilities (shares the head layers)
    feature_layer: str  # name of the base layer whose pooled output feeds the head
    base_fingerprint: str  # sha256 of the full base's weights before training


def build_network(
    backbone: Backbone,
    input_size: int,
    alpha: float | None,
    weights: WeightsChoice,
    num_classes: int,
    strategy: str,
    cut_layer: str | None,
    base: Any | None = None,
) -> Network:
    """The end-to-end model for `strategy` plus the pieces its phases train."""
    import keras

    if strategy == "from_scratch":
        weights = WeightsChoice(None, "random initialisation")
        base = None
    full = base if base is not None else build_base(backbone, input_size, alpha, weights)
    fingerprint = weights_fingerprint(full)
    if strategy == "truncate":
        base = truncate(full, cut_layer or backbone.default_cut_layer)
    else:
        base = full
    feature_layer = base.layers[-1].name
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    x = apply_preprocessing(backbone, inputs)
    x = base(x) if strategy == "from_scratch" else base(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dropout = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout")
    dense = keras.layers.Dense(num_classes, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(dropout(pooled)), name=f"{backbone.name}_{strategy}")
    extractor = keras.Model(inputs, {"features": pooled}, name="extractor")
    feature_in = keras.Input((pooled.shape[-1],), name="features")
    head_model = keras.Model(feature_in, dense(dropout(feature_in)), name="head")
    return Network(model, base, extractor, head_model, feature_layer, fingerprint)


def probe_extractor(backbone: Backbone, base: Any, input_size: int, cut_layer: str) -> Any:
    """uint8 images -> pooled features of the final layer and of `cut_layer` in one pass."""
    import keras

    if cut_layer not in [layer.name for layer in base.layers]:
        truncate(base, cut_layer)  # raises the helpful TrainingError
    both = keras.Model(base.inputs, [base.output, base.get_layer(cut_layer).output])
    inputs = keras.Input((input_size, input_size, 3), dtype="uint8", name="image")
    final, cut = both(apply_preprocessing(backbone, inputs), training=False)
    pool = keras.layers.GlobalAveragePooling2D
    return keras.Model(inputs, {"final": pool()(final), "cut": pool()(cut)}, name="probe")


def set_phase(
    network: Network, phase: str, unfreeze: int | None = None, freeze_batchnorm: bool = False
) -> None:
    """Make exactly the phase's layers trainable (the head is always trainable).

    In the "all" phase of a pretrained base BatchNorm layers stay frozen: in Keras 3 a frozen
    BatchNormalization runs in inference mode, while an outer `training=True` (as `fit` passes)
    overrides the `training=False` of the nested base call.
    """
    import keras

    base = network.base
    if phase == "head":
        base.trainable = False
    elif phase == "all":
        base.trainable = True
        if unfreeze is not None:
            if unfreeze > len(base.layers):
                raise TrainingError(
                    f"--unfreeze {unfreeze} exceeds the {len(base.layers)} layers of the base"
                )
            for layer in base.layers[: len(base.layers) - unfreeze]:
                layer.trainable = False
        if freeze_batchnorm:
            for layer in base.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    else:
        raise ValueError(f"unknown phase {phase!r}")


def trainable_counts(model: Any) -> dict[str, int]:
    """Trainable weight tensors and scalars of `model` as it stands."""
    import numpy as np

    weights = model.trainable_weights
    return {
        "trainable_weights": len(weights),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in weights)),
    }
