"""Feature cache vs the plain Keras workflow: `feature_extraction` for N epochs on GTSRB.

(a) plain: the frozen base sits inside the model and `model.fit` runs every image through it on
    every epoch (the Keras transfer-learning guide's first recipe);
(b) cached: `finetune(strategy="feature_extraction")`, which runs the base once per image into
    the bottleneck cache and trains the head on the features (cold cache: a fresh directory),
    then the same command again on the warm cache.

Same data (the trainer's own train/val split), network, head, optimiser, schedule, class weights
and seed; no augmentation in either (the trainer's default `--augment default` caches 2 extra
views per image, i.e. three base passes instead of one). Early stopping is disabled so both run
every epoch. Both models are evaluated on the test split. Wall times include decoding the images.

    .venv/bin/python bench/bench_feature_cache.py [--data ../shared/data/gtsrb] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "gtsrb"))
    parser.add_argument(
        "--weights", default=str(SHARED / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5")
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_feature_cache_"))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def run(args: argparse.Namespace, work: Path) -> dict:
    import numpy as np

    from tl_perception.train.config import FinetuneConfig
    from tl_perception.train.evaluate import evaluate
    from tl_perception.train.finetune import finetune

    config = FinetuneConfig(
        backbone="mobilenet_v2",
        alpha=0.35,
        input_size=args.input_size,
        weights=args.weights,
        strategy="feature_extraction",
        epochs=args.epochs,
        batch_size=args.batch_size,
        augment="none",
        cache_augmentations=0,
        patience=args.epochs,  # no early stop: every epoch runs in both paths
        seed=args.seed,
        cache_dir=str(work / "cache"),
        evaluate=False,
        export_tflite=False,
    )
    quiet = lambda _msg: None  # noqa: E731

    warm_up(args)
    start = time.perf_counter()
    finetune(args.data, work / "cached", config, log=quiet, verbose=0)
    cached_cold = time.perf_counter() - start
    print(f"cached (cold cache): {cached_cold:.1f} s", flush=True)
    start = time.perf_counter()
    finetune(args.data, work / "cached_warm", config, log=quiet, verbose=0)
    cached_warm = time.perf_counter() - start
    print(f"cached (warm cache): {cached_warm:.1f} s", flush=True)

    start = time.perf_counter()
    plain_bundle = train_plain(args, work / "plain")
    plain = time.perf_counter() - start
    print(f"plain Keras: {plain:.1f} s", flush=True)

    cached_eval = evaluate(work / "cached", args.data, split="test")
    plain_eval = evaluate(plain_bundle, args.data, split="test")
    acc_cached, acc_plain = cached_eval["accuracy"], plain_eval["accuracy"]
    same = np.mean(
        np.asarray(cached_eval["confusion_matrix"]) == np.asarray(plain_eval["confusion_matrix"])
    )
    return {
        "epochs": args.epochs,
        "input_size": args.input_size,
        "backbone": "mobilenet_v2 alpha 0.35",
        "cpu_count": os.cpu_count(),
        "plain_seconds": round(plain, 1),
        "cached_cold_seconds": round(cached_cold, 1),
        "cached_warm_seconds": round(cached_warm, 1),
        "speedup_cold": round(plain / cached_cold, 2),
        "speedup_warm": round(plain / cached_warm, 2),
        "test_accuracy_plain": round(acc_plain, 4),
        "test_accuracy_cached": round(acc_cached, 4),
        "confusion_cells_equal": round(float(same), 4),
        "load_average_after": os.getloadavg(),
    }


def warm_up(args: argparse.Namespace) -> None:
    """Untimed: TensorFlow's one-time start-up and the images in the page cache, so neither
    path pays for them on behalf of the other (the path timed first used to)."""
    import numpy as np

    from tl_perception import backbones
    from tl_perception.dataset import read_dataset

    for sample in read_dataset(args.data).samples:
        sample.path.read_bytes()
    spec = backbones.get_backbone("mobilenet_v2")
    weights = backbones.resolve_weights(spec, args.weights, args.input_size, 0.35)
    base = backbones.build_base(spec, args.input_size, 0.35, weights)
    base.predict(np.zeros((2, args.input_size, args.input_size, 3), np.float32), verbose=0)


def train_plain(args: argparse.Namespace, out: Path) -> Path:
    """The frozen base inside the model; `fit` on images; the trainer's own phase runner."""
    import keras

    from tl_perception import backbones
    from tl_perception.bundle import bundle_meta, write_bundle
    from tl_perception.train.data import load_training_data
    from tl_perception.train.phases import DEFAULT_RATES
    from tl_perception.train.strategies import build_network, set_phase
    from tl_perception.train.trainer import (
        Checkpoints,
        PhasePlan,
        Recorder,
        balanced_class_weights,
        image_pipeline,
        run_phase,
    )

    keras.utils.set_random_seed(args.seed)
    data = load_training_data(args.data, args.input_size, 0.2, args.seed, lambda _m: None)
    backbone = backbones.choose_backbone(
        "mobilenet_v2", alpha=0.35, input_size=args.input_size, weights=args.weights
    )
    num_classes = len(data.class_names)
    network = build_network(backbone, num_classes, "feature_extraction")
    set_phase(network, "head")
    batch = args.batch_size
    plan = PhasePlan(
        name="head",
        model=network.model,
        train_ds=image_pipeline(
            data.train.images, data.train.labels, batch, "none", args.seed, True
        ),
        val_ds=image_pipeline(data.val.images, data.val.labels, batch, "none", args.seed, False),
        epochs=args.epochs,
        learning_rate=DEFAULT_RATES["head"],
        schedule="plateau",
        steps_per_epoch=-(-len(data.train) // batch),
        class_weight=balanced_class_weights(data.train.labels, num_classes),
        patience=args.epochs,
    )
    checkpoints_dir = out.with_name(out.name + ".partial")
    checkpoints_dir.mkdir(parents=True)
    run_phase(plan, Recorder(Checkpoints.open(checkpoints_dir), log=lambda _m: None, verbose=0))
    meta = bundle_meta(
        class_names=data.class_names,
        input_size=(args.input_size, args.input_size),
        backbone="mobilenet_v2",
    )
    write_bundle(out, network.model, meta)
    return out


if __name__ == "__main__":
    sys.exit(main())
