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

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_perception.backbones import (
    BackboneChoice,
    WeightsChoice,
    apply_preprocessing,
    truncate,
    weights_fingerprint,
)
from tl_perception.errors import TrainingError
from tl_perception.train.distribute import predict

PHASES: dict[str, tuple[str, ...]] = {
    "feature_extraction": ("head",),
    "truncate": ("head",),
    "fine_tune": ("head", "all"),
    "from_scratch": ("all",),
}
HEAD_DROPOUT = 0.2
#: The final Dense (softmax) layer; calibration scales its kernel and bias by 1/T.
HEAD_LAYER = "predictions"
RANDOM_WEIGHTS = WeightsChoice(None, "random initialisation")


@dataclass
class Network:
    strategy: str  # which of the four cases this network is built for
    model: Any  # keras.Model: uint8 images -> probabilities
    base: Any  # the (possibly truncated) backbone inside `model`
    extractor: Any  # uint8 images -> {"features": pooled base output}
    head_model: Any  # pooled features -> probabilities (shares the head layers)
    feature_layer: str  # name of the base layer whose pooled output feeds the head
    base_fingerprint: str  # sha256 of the full base's weights before training

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES[self.strategy]

    @property
    def predictions(self) -> Any:
        """The final Dense softmax layer, shared by `model` and `head_model`."""
        return self.head_model.get_layer(HEAD_LAYER)


def build_network(
    backbone: BackboneChoice, num_classes: int, strategy: str, base: Any | None = None
) -> Network:
    """The end-to-end model for `strategy` plus the pieces its phases train.

    `base` reuses an already built base (auto's probe built one); from_scratch never does.
    """
    import keras

    if strategy == "from_scratch":
        backbone = dataclasses.replace(backbone, weights=RANDOM_WEIGHTS)
        base = None
    full = base if base is not None else backbone.build_base()
    fingerprint = weights_fingerprint(full)
    base = truncate(full, backbone.cut_layer) if strategy == "truncate" else full
    size = backbone.input_size
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = apply_preprocessing(backbone.spec, inputs)
    x = base(x) if strategy == "from_scratch" else base(x, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    dropout = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout")
    dense = keras.layers.Dense(num_classes, activation="softmax", name=HEAD_LAYER)
    model = keras.Model(inputs, dense(dropout(pooled)), name=f"{backbone.name}_{strategy}")
    extractor = keras.Model(inputs, {"features": pooled}, name="extractor")
    feature_in = keras.Input((pooled.shape[-1],), name="features")
    head_model = keras.Model(feature_in, dense(dropout(feature_in)), name="head")
    return Network(
        strategy=strategy,
        model=model,
        base=base,
        extractor=extractor,
        head_model=head_model,
        feature_layer=base.layers[-1].name,
        base_fingerprint=fingerprint,
    )


def head_logits(network: Network, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The final layer's pre-softmax outputs (N, C) in float64, for calibration.

    Pooled features from `extractor` times the head's kernel plus bias: exactly what the
    softmax Dense sees at inference (dropout is the identity then), with no probabilities
    rounded to 0 on the way, as log(softmax) would be for very confident images.
    """
    pooled = predict(network.extractor, images, batch_size)["features"]
    kernel, bias = network.predictions.get_weights()
    logits: np.ndarray = np.asarray(pooled, np.float64) @ kernel.astype(np.float64) + bias
    return logits


def probe_extractor(backbone: BackboneChoice, base: Any) -> Any:
    """uint8 images -> pooled features of the final layer and of the cut layer in one pass."""
    import keras

    cut_layer = backbone.cut_layer
    if cut_layer not in [layer.name for layer in base.layers]:
        truncate(base, cut_layer)  # raises the helpful TrainingError
    both = keras.Model(base.inputs, [base.output, base.get_layer(cut_layer).output])
    size = backbone.input_size
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    final, cut = both(apply_preprocessing(backbone.spec, inputs), training=False)
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
    weights = model.trainable_weights
    return {
        "trainable_weights": len(weights),
        "trainable_params": int(sum(int(np.prod(w.shape)) for w in weights)),
    }
