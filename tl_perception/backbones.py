"""The backbone registry: the one place that knows each pretrained network.

Each entry names its Keras constructor, default and minimum input size, the preprocessing it
expects (built into the model as plain Keras layers, so bundles load in safe mode), the ImageNet
alphas Keras publishes weights for, and a default cut layer for the `truncate` strategy (about
half-way through the network). TensorFlow is imported only inside functions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_perception.errors import TrainingError

if TYPE_CHECKING:
    import keras

MAX_INPUT_SIZE = 1024
#: Keras picks a MobileNet v1/v2 weights file by input size among these; others use 224.
MOBILENET_WEIGHT_SIZES = (96, 128, 160, 192, 224)
#: Caffe-style (VGG, ResNet) channel means in BGR order, as keras.applications subtracts them.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    """One pretrained network family and how to feed it."""

    name: str
    constructor: str  # attribute of keras.applications
    default_input_size: int
    min_input_size: int
    preprocessing: str  # "tf": [-1, 1]; "caffe": BGR minus mean; "builtin": raw 0-255 floats
    default_cut_layer: str
    alphas: tuple[float, ...] = ()  # width multipliers with ImageNet weights; () = no alpha
    default_alpha: float | None = None

    def imagenet_file(self, input_size: int, alpha: float | None) -> str:
        """The no-top weights file name Keras downloads into `$KERAS_HOME/models/`."""
        if self.name == "mobilenet":
            text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0"}.get(float(alpha or 1.0), "2_5")
            return f"mobilenet_{text}_{_keras_rows(input_size)}_tf_no_top.h5"
        if self.name == "mobilenet_v2":
            return (
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
                f"{float(alpha or 1.0)}_{_keras_rows(input_size)}_no_top.h5"
            )
        if self.name.startswith("mobilenet_v3"):
            kind = self.name.rsplit("_", 1)[1]
            return f"weights_mobilenet_v3_{kind}_224_{float(alpha or 1.0)}_float_no_top_v2.h5"
        if self.name == "efficientnet_b0":
            return "efficientnetb0_notop.h5"
        return f"{self.name}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _keras_rows(input_size: int) -> int:
    return input_size if input_size in MOBILENET_WEIGHT_SIZES else 224


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("vgg16", "VGG16", 224, 32, "caffe", "block4_pool"),
        Backbone("vgg19", "VGG19", 224, 32, "caffe", "block4_pool"),
        Backbone("inception_v3", "InceptionV3", 299, 75, "tf", "mixed5"),
        Backbone("resnet50", "ResNet50", 224, 32, "caffe", "conv3_block4_out"),
        Backbone(
            "mobilenet", "MobileNet", 224, 32, "tf", "conv_pw_7_relu", (0.25, 0.5, 0.75, 1.0), 0.25
        ),
        Backbone(
            "mobilenet_v2",
            "MobileNetV2",
            224,
            32,
            "tf",
            "block_9_expand_relu",
            (0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            0.35,
        ),
        Backbone(
            "mobilenet_v3_small",
            "MobileNetV3Small",
            224,
            32,
            "builtin",
            "expanded_conv_5_add",
            (0.75, 1.0),
            1.0,
        ),
        Backbone(
            "mobilenet_v3_large",
            "MobileNetV3Large",
            224,
            32,
            "builtin",
            "expanded_conv_8_add",
            (0.75, 1.0),
            1.0,
        ),
        Backbone("efficientnet_b0", "EfficientNetB0", 224, 32, "builtin", "block4c_add"),
    )
}


@dataclass(frozen=True)
class BackboneSpec:
    """`mobilenet_v2` or `mobilenet_v2:0.35` (name and optional width multiplier)."""

    name: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        name, _, alpha = text.strip().partition(":")
        if not name:
            raise TrainingError(f"empty backbone name in {text!r}")
        try:
            return cls(name, float(alpha) if alpha else None)
        except ValueError:
            raise TrainingError(f"backbone {text!r}: alpha after ':' must be a number") from None

    @property
    def label(self) -> str:
        return self.name if self.alpha is None else f"{self.name}:{self.alpha:g}"


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`; TrainingError listing the known names otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise TrainingError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


def resolve_input_size(backbone: Backbone, input_size: int | None) -> int:
    """`input_size` or the backbone default, checked against the range the network can take."""
    size = backbone.default_input_size if input_size is None else int(input_size)
    if not backbone.min_input_size <= size <= MAX_INPUT_SIZE:
        raise TrainingError(
            f"input size {size!r} is not valid for {backbone.name}: use "
            f"{backbone.min_input_size} to {MAX_INPUT_SIZE} (default {backbone.default_input_size})"
        )
    return size


def resolve_alpha(backbone: Backbone, alpha: float | None, weights: str | None) -> float | None:
    """The width multiplier: only MobileNets take one; ImageNet weights exist for a few."""
    if not backbone.alphas:
        if alpha is not None:
            raise TrainingError(f"--alpha applies to the MobileNets only, not {backbone.name!r}")
        return None
    alpha = backbone.default_alpha if alpha is None else float(alpha)
    if weights == "imagenet" and alpha not in backbone.alphas:
        raise TrainingError(
            f"{backbone.name} has ImageNet weights for alpha {list(backbone.alphas)}, not "
            f"{alpha!r}; pick one of those or use --weights none"
        )
    if alpha is None or alpha <= 0:
        raise TrainingError(f"alpha must be positive, got {alpha!r}")
    return alpha


@dataclass(frozen=True)
class WeightsChoice:
    """What the constructor gets (`None`, "imagenet" or a file) and what to tell the user."""

    keras_arg: str | None
    description: str
    expected_file: Path | None = None  # where an ImageNet file would be cached


def keras_models_dir() -> Path:
    """`$KERAS_HOME/models` (read at call time, so a test or user may set it late)."""
    home = os.environ.get("KERAS_HOME") or str(Path("~/.keras").expanduser())
    return Path(home) / "models"


def resolve_weights(
    backbone: Backbone, weights: str | None, input_size: int, alpha: float | None
) -> WeightsChoice:
    """Turn `imagenet|none|PATH` into a constructor argument that works offline when it can.

    For `imagenet` the size-specific Keras file is used when cached; otherwise the 224 px file
    (no-top convolution weights fit any input size); otherwise Keras is left to download.
    """
    if weights is None or weights == "none":
        return WeightsChoice(None, "random initialisation")
    if weights == "imagenet":
        models = keras_models_dir()
        wanted = backbone.imagenet_file(input_size, alpha)
        for name in dict.fromkeys([wanted, backbone.imagenet_file(224, alpha)]):
            if (models / name).is_file():
                return WeightsChoice(str(models / name), f"imagenet from {models / name}")
        return WeightsChoice("imagenet", f"imagenet (download {wanted})", models / wanted)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TrainingError(
            f"weights file {str(path)!r} does not exist; pass imagenet, none or a no-top "
            f"weights file for {backbone.name}"
        )
    return WeightsChoice(str(path.resolve()), f"file {path.resolve()}")


@dataclass(frozen=True)
class BackboneChoice:
    """A backbone with every option resolved, once, from the user's options.

    Which network, at what input size and width, from which weights, cut where: every later
    step reads these instead of resolving the options again.
    """

    spec: Backbone
    input_size: int
    alpha: float | None
    weights: WeightsChoice
    cut_layer: str

    @property
    def name(self) -> str:
        return self.spec.name

    def build_base(self) -> keras.Model:
        """The no-top base with these weights."""
        return build_base(self.spec, self.input_size, self.alpha, self.weights)


def choose_backbone(
    name: str,
    *,
    alpha: float | None = None,
    input_size: int | None = None,
    weights: str = "imagenet",
    cut_layer: str | None = None,
) -> BackboneChoice:
    """Resolve the user's options (None: the backbone's default) before anything is trained.

    `weights` is `imagenet`, `none` or a file. Raises TrainingError for any option the
    backbone cannot take, so a run fails before it reads a single image.
    """
    spec = get_backbone(name)
    size = resolve_input_size(spec, input_size)
    weights_arg = None if weights == "none" else weights
    width = resolve_alpha(spec, alpha, weights_arg)
    return BackboneChoice(
        spec=spec,
        input_size=size,
        alpha=width,
        weights=resolve_weights(spec, weights_arg, size, width),
        cut_layer=cut_layer or spec.default_cut_layer,
    )


def build_base(
    backbone: Backbone, input_size: int, alpha: float | None, weights: WeightsChoice
) -> keras.Model:
    """The no-top backbone on float inputs (preprocessing is added by `apply_preprocessing`)."""
    import keras

    kwargs: dict[str, Any] = {}
    if alpha is not None:
        kwargs["alpha"] = alpha
    if backbone.preprocessing == "builtin" and backbone.name.startswith("mobilenet_v3"):
        kwargs["include_preprocessing"] = True
    constructor = getattr(keras.applications, backbone.constructor)
    try:
        return constructor(
            input_shape=(input_size, input_size, 3),
            include_top=False,
            weights=weights.keras_arg,
            **kwargs,
        )
    except Exception as err:
        if weights.keras_arg == "imagenet" and weights.expected_file is not None:
            raise TrainingError(
                f"cannot get ImageNet weights for {backbone.name} ({type(err).__name__}); "
                f"offline? place {weights.expected_file.name!r} at "
                f"{str(weights.expected_file)!r} or pass --weights PATH to a no-top weights file"
            ) from err
        if weights.keras_arg not in (None, "imagenet"):
            raise TrainingError(
                f"weights file {weights.keras_arg!r} does not fit {backbone.name} "
                f"(alpha {alpha}): {str(err).splitlines()[0][:200]}"
            ) from err
        raise


def truncate(base: keras.Model, cut_layer: str) -> keras.Model:
    """The base up to and including `cut_layer` (the `truncate` strategy's frozen part)."""
    import keras

    names = [layer.name for layer in base.layers]
    if cut_layer not in names:
        hints = [n for n in names if n.endswith(("_add", "_out", "_relu", "pool"))][-8:]
        raise TrainingError(
            f"cut layer {cut_layer!r} is not a layer of {base.name}; e.g. {', '.join(hints)}"
        )
    return keras.Model(base.inputs, base.get_layer(cut_layer).output, name=f"{base.name}_cut")


def apply_preprocessing(backbone: Backbone, images: Any) -> Any:
    """uint8 RGB tensor -> what the backbone expects, with serialisable built-in layers only.

    No Lambda layers: bundles must load in Keras safe mode.
    """
    import keras
    import numpy as np

    if backbone.preprocessing == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")(images)
    x = keras.layers.Rescaling(1.0, name="to_float")(images)
    if backbone.preprocessing == "builtin":
        return x
    # caffe: RGB -> BGR and mean subtraction as one fixed 1x1 convolution.
    conv = keras.layers.Conv2D(3, 1, trainable=False, name="preprocess_caffe_bgr")
    x = conv(x)
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out_channel, in_channel in enumerate((2, 1, 0)):
        kernel[0, 0, in_channel, out_channel] = 1.0
    conv.set_weights([kernel, -np.asarray(CAFFE_BGR_MEAN, dtype="float32")])
    return x


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 of every weight array: keys the feature cache to the exact network."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = weight.numpy()
        digest.update(f"{weight.path}:{value.shape}:{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
