"""Bench models for bench_node.py: two uint8-input bundles and their raw inference floor.

MobileNetV2 a0.35 @224 uses the shared ImageNet no-top weights; EfficientNetB0 @224 is built with
`weights=None` because no EfficientNet weights are available offline (speed does not depend on
the weights). Both get a random Dense(10, softmax) head: the bench measures time, not accuracy.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
MOBILENET_WEIGHTS = SHARED_WEIGHTS / "mobilenet_v2_0.35_imagenet_no_top.h5"
INPUT_SIZE = (224, 224)
CLASSES = tuple(f"class_{i}" for i in range(10))
MODELS = ("mobilenet_v2_0.35", "efficientnet_b0")


def build_model(name: str, input_size: tuple[int, int] = INPUT_SIZE):
    """uint8 RGB in, the backbone's preprocessing inside, 10 softmax outputs."""
    import keras

    keras.utils.set_random_seed(0)
    shape = (*input_size, 3)
    inputs = keras.Input(shape, dtype="uint8", name="image")
    if name == "mobilenet_v2_0.35":
        weights = str(MOBILENET_WEIGHTS) if MOBILENET_WEIGHTS.is_file() else None
        backbone = keras.applications.MobileNetV2(
            input_shape=shape, alpha=0.35, include_top=False, weights=weights
        )
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    elif name == "efficientnet_b0":
        backbone = keras.applications.EfficientNetB0(
            input_shape=shape, include_top=False, weights=None
        )
        x = keras.layers.Rescaling(1.0)(inputs)  # EfficientNet normalises 0-255 inside
    else:
        raise ValueError(f"unknown bench model {name!r}; use one of {MODELS}")
    x = backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs, name=name.replace(".", "_"))


def ensure_bundle(name: str, workdir: Path, input_size: tuple[int, int] = INPUT_SIZE) -> Path:
    """Write the bundle (and its cached TFLite conversion) once per work directory."""
    from tl_perception.bundle import bundle_meta, read_bundle, write_bundle
    from tl_perception.errors import BundleError
    from tl_perception.inference import Classifier

    path = workdir / (name if input_size == INPUT_SIZE else f"{name}_{input_size[0]}")
    try:
        read_bundle(path)
    except BundleError:
        meta = bundle_meta(class_names=CLASSES, input_size=input_size, backbone=name)
        write_bundle(path, build_model(name, input_size), meta)
    Classifier(path, backend="litert")  # converts and caches model.tflite beside the bundle
    return path


def _median_ms(fn, repeats: int, warmup: int = 3, rounds: int = 4) -> float:
    """Best of `rounds` medians: the CPU is shared, and a floor should not carry others' load."""
    for _ in range(warmup):
        fn()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(max(2, repeats // rounds)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
        medians.append(statistics.median(times))
    return min(medians)


def inference_floor(bundle: Path, repeats: int = 60) -> dict[str, float]:
    """Median ms per single 224x224 frame: LiteRT invoke, Keras tf.function, model.predict."""
    import keras
    import tensorflow as tf

    from tl_perception.inference import Classifier

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, *INPUT_SIZE, 3), dtype=np.uint8)
    camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    litert = Classifier(bundle, backend="litert")
    litert.predict_proba(list(frame))
    interp = litert._run._slots[1].interpreter  # the bare interpreter: no wrapper at all
    index = interp.get_input_details()[0]["index"]

    def invoke() -> None:
        interp.set_tensor(index, frame)
        interp.invoke()

    model = keras.saving.load_model(bundle / "model.keras", safe_mode=True)
    compiled = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    tensor = tf.constant(frame)
    keras_clf = Classifier(bundle, backend="keras")
    return {
        "litert_invoke_ms": _median_ms(invoke, repeats),
        "litert_classify_640x480_ms": _median_ms(lambda: litert.classify([camera]), repeats),
        "keras_tf_function_ms": _median_ms(lambda: compiled(tensor), max(10, repeats // 3)),
        "keras_classify_640x480_ms": _median_ms(
            lambda: keras_clf.classify([camera]), max(10, repeats // 3)
        ),
        "model_predict_ms": _median_ms(lambda: model.predict(frame, verbose=0), 12, warmup=2),
    }


def batch_floor(bundle: Path, counts: tuple[int, ...], repeats: int = 40) -> dict[str, dict]:
    """Median ms to run N images at the bundle's input size through bare LiteRT interpreters:
    once as one batch of N (the node's batched path: its bucket's interpreter) and as N calls
    of one image (the per-ROI baseline). No resize, no wrapper: the floor either path pays."""
    from ai_edge_litert.interpreter import Interpreter

    from tl_perception.bundle import read_bundle
    from tl_perception.inference.backends import bucket_for, default_threads

    size = read_bundle(bundle).input_size
    model = (bundle / "model.tflite").read_bytes()

    def interpreter(batch: int):
        interp = Interpreter(model_content=model, num_threads=default_threads())
        index = interp.get_input_details()[0]["index"]
        interp.resize_tensor_input(index, [batch, *size, 3])
        interp.allocate_tensors()
        return interp, index

    single, single_index = interpreter(1)
    one = np.zeros((1, *size, 3), dtype=np.uint8)
    out: dict[str, dict] = {}
    for count in counts:
        batched, index = interpreter(bucket_for(count))
        images = np.zeros((bucket_for(count), *size, 3), dtype=np.uint8)

        def run_batch(interp=batched, index=index, images=images) -> None:
            interp.set_tensor(index, images)
            interp.invoke()

        def run_each(count=count) -> None:
            for _ in range(count):
                single.set_tensor(single_index, one)
                single.invoke()

        out[str(count)] = {
            "batched_ms": _median_ms(run_batch, repeats),
            "per_roi_ms": _median_ms(run_each, repeats),
        }
    return out
