"""`finetune(dataset, out_bundle, config)`: dataset in, model bundle out.

Steps: load and split the data; pick the strategy (`auto` measures, see `auto.py`); train its
phases (frozen phases on cached bottleneck features, unfrozen phases end to end); write the
bundle atomically with the decision, config, history and metrics in bundle.json and TensorBoard
logs in report/; then evaluate on the val split and export TFLite when those modules exist.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception import backbones
from tl_perception.bundle import REPORT_DIR, bundle_meta, write_bundle
from tl_perception.errors import TlPerceptionError, TrainingError
from tl_perception.fsutil import atomic_write_json, atomic_write_text
from tl_perception.train import auto
from tl_perception.train.cache import CacheStats, FeatureCache, cache_key, cached_features
from tl_perception.train.config import FinetuneConfig
from tl_perception.train.data import TrainingData, load_training_data
from tl_perception.train.phases import train_phases
from tl_perception.train.strategies import build_network, probe_extractor
from tl_perception.train.trainer import Checkpoints

Log = Callable[[str], None]


@dataclass
class FinetuneResult:
    bundle_path: Path
    strategy: str
    decision: dict[str, Any]
    val_accuracy: float | None
    train_seconds: float
    trainable_params: int
    history: dict[str, list[float]]
    phases: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def finetune(
    dataset_path: str | Path,
    out_bundle_path: str | Path,
    config: FinetuneConfig | None = None,
    log: Log = print,
    verbose: Any = "auto",
) -> FinetuneResult:
    """Train a classifier bundle on `dataset_path` (see docs/training.md for every option).

    Raises:
        DatasetError: empty dataset, unreadable tree, a class with < 2 images.
        TrainingError: unknown backbone, impossible input size, missing weights, bad options.
    """
    import keras

    cfg = (config or FinetuneConfig()).validate()
    spec = backbones.get_backbone(cfg.backbone)
    size = backbones.resolve_input_size(spec, cfg.input_size)
    weights_arg = None if cfg.weights == "none" else cfg.weights
    alpha = backbones.resolve_alpha(spec, cfg.alpha, weights_arg)
    cut_layer = cfg.cut_layer or spec.default_cut_layer
    out = Path(out_bundle_path)
    partial = out.with_name(out.name + ".partial")
    checkpoints = Checkpoints.open(partial) if cfg.resume else Checkpoints(partial)
    _check_resume(checkpoints, cfg, log)
    weights = backbones.resolve_weights(spec, weights_arg, size, alpha)

    start = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    data = load_training_data(dataset_path, size, cfg.val_fraction, cfg.seed, log)
    num_classes = len(data.class_names)
    log(
        f"{len(data.train)} train / {len(data.val)} val images, {num_classes} classes "
        f"(val: {data.val_source})"
    )
    if partial.exists() and not cfg.resume:
        shutil.rmtree(partial)  # only now: bad input must not destroy an interrupted run
    checkpoints.save_state()
    log(f"backbone {spec.name} alpha={alpha} input {size}px, weights: {weights.description}")
    stats = CacheStats()
    cache_root = cfg.cache_root()
    tensorboard_dir = Path(tempfile.mkdtemp(prefix="tl_perception_tb_"))

    with _distribution(cfg.distribute, log).scope():
        base = None
        decision = checkpoints.state.get("decision")
        if decision is None and cfg.strategy == "auto":
            base = backbones.build_base(spec, size, alpha, weights)
            decision = _auto_decision(
                spec, base, size, alpha, cut_layer, data, cfg, cache_root, stats, log
            )
        elif decision is None:
            decision = {"strategy": cfg.strategy, "reason": "set by user"}
        strategy = decision["strategy"]
        log(f"strategy: {decision['reason']}")
        checkpoints.state.update(strategy=strategy, decision=decision)
        checkpoints.save_state()
        network = build_network(
            spec, size, alpha, weights, num_classes, strategy, cut_layer, base=base
        )
        history, phases = train_phases(
            network, strategy, data, cfg, spec.name, alpha, size, cache_root, stats,
            checkpoints, tensorboard_dir, log, verbose,
        )  # fmt: skip
    train_seconds = time.monotonic() - start
    val_accuracy = _val_accuracy(network.model, data, cfg.batch_size)
    if val_accuracy is not None:
        log(f"val accuracy {val_accuracy:.4f} after {train_seconds:.0f} s")
    meta = bundle_meta(
        class_names=data.class_names,
        input_size=(size, size),
        backbone=spec.name,
        alpha=alpha,
        strategy=strategy,
        auto=decision if cfg.strategy == "auto" else None,
        decision=decision,
        config=cfg.to_dict(),
        weights=weights.description,
        base_weights_sha256=network.base_fingerprint,
        feature_layer=network.feature_layer,
        cut_layer=cut_layer if strategy == "truncate" else None,
        dataset={
            "path": str(Path(dataset_path).resolve()),
            "train_images": len(data.train),
            "val_images": len(data.val),
            "val_source": data.val_source,
            "fingerprint": _fingerprint(data),
            "skipped": [{"path": p, "reason": r} for p, r in data.skipped],
        },
        metrics={"val_accuracy": val_accuracy},
        phases=phases,
        feature_cache=stats.as_dict(),
        train_seconds=round(train_seconds, 2),
    )

    def report_files(stage: Path) -> None:
        report = stage / REPORT_DIR
        report.mkdir(parents=True, exist_ok=True)
        atomic_write_json(report / "history.json", history)
        import yaml

        atomic_write_text(report / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
        if tensorboard_dir.is_dir():
            shutil.copytree(tensorboard_dir, report / "tensorboard", dirs_exist_ok=True)
        _plot_curves(history, report / "training_curves.png", log)

    bundle = write_bundle(out, network.model, meta, extra_files=report_files)
    shutil.rmtree(tensorboard_dir, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)
    log(f"wrote bundle {bundle.path}")
    _evaluate_and_export(bundle.path, data, cfg, log)
    return FinetuneResult(
        bundle_path=bundle.path,
        strategy=strategy,
        decision=decision,
        val_accuracy=val_accuracy,
        train_seconds=train_seconds,
        trainable_params=max((p["trainable_params"] for p in phases), default=0),
        history=history,
        phases=phases,
        cache=stats.as_dict(),
        skipped=list(data.skipped),
    )


def decide_strategy(
    dataset_path: str | Path, config: FinetuneConfig | None = None, log: Log = print
) -> dict[str, Any]:
    """What `--strategy auto` would choose on `dataset_path`, with its measurements (no training).

    Uses (and fills) the same feature cache as `finetune`.
    """
    import keras

    cfg = (config or FinetuneConfig()).validate()
    spec = backbones.get_backbone(cfg.backbone)
    size = backbones.resolve_input_size(spec, cfg.input_size)
    weights_arg = None if cfg.weights == "none" else cfg.weights
    alpha = backbones.resolve_alpha(spec, cfg.alpha, weights_arg)
    keras.utils.set_random_seed(cfg.seed)
    data = load_training_data(dataset_path, size, cfg.val_fraction, cfg.seed, log)
    weights = backbones.resolve_weights(spec, weights_arg, size, alpha)
    base = backbones.build_base(spec, size, alpha, weights)
    cut_layer = cfg.cut_layer or spec.default_cut_layer
    stats = CacheStats()
    decision = _auto_decision(
        spec, base, size, alpha, cut_layer, data, cfg, cfg.cache_root(), stats, log
    )
    log(f"strategy: {decision['reason']}")
    return decision


def _check_resume(checkpoints: Checkpoints, cfg: FinetuneConfig, log: Log) -> None:
    """`--resume` only continues a run with the same options (epochs may grow)."""
    loose = {"resume", "epochs", "head_epochs", "patience"}
    wanted = {k: v for k, v in cfg.to_dict().items() if k not in loose}
    saved = checkpoints.state.get("config")
    if cfg.resume and saved is None:
        log("--resume: no interrupted run found, starting fresh")
    elif cfg.resume and saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise TrainingError(
            f"--resume: options {changed} differ from the interrupted run in "
            f"{str(checkpoints.directory)!r}; rerun with the same options or without --resume"
        )
    checkpoints.state["config"] = wanted


def _distribution(name: str, log: Log) -> Any:
    import tensorflow as tf

    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        log(f"distribute: MirroredStrategy over {strategy.num_replicas_in_sync} replica(s)")
        return strategy
    if name == "multiworker":
        log("distribute: MultiWorkerMirroredStrategy (workers from TF_CONFIG)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _auto_decision(
    spec: backbones.Backbone,
    base: Any,
    size: int,
    alpha: float | None,
    cut_layer: str,
    data: TrainingData,
    cfg: FinetuneConfig,
    cache_root: Path,
    stats: CacheStats,
    log: Log,
) -> dict[str, Any]:
    """Linear probes on cached pooled features of the final and the cut layer."""
    extractor = probe_extractor(spec, base, size, cut_layer)
    fingerprint = backbones.weights_fingerprint(base)
    caches = {
        "final": FeatureCache(
            cache_root, cache_key(spec.name, alpha, fingerprint, base.layers[-1].name, size)
        ),
        "cut": FeatureCache(cache_root, cache_key(spec.name, alpha, fingerprint, cut_layer, size)),
    }
    pick = auto.probe_subset(data.train.labels, cfg.probe_max_per_class, cfg.seed)
    images = data.train.images[pick]
    hashes = [data.train.hashes[i] for i in pick]
    feats = cached_features(extractor, caches, images, hashes, 0, "none", cfg.batch_size, stats)
    labels = data.train.labels[pick]
    groups = [data.train.samples[i].sequence for i in pick]
    probe_final = auto.linear_probe(feats["final"][0], labels, cfg.seed, groups)
    probe_cut = auto.linear_probe(feats["cut"][0], labels, cfg.seed, groups)
    return auto.decide(data.images_per_class(), probe_final, probe_cut, cut_layer, cfg)


def _val_accuracy(model: Any, data: TrainingData, batch_size: int) -> float | None:
    if not len(data.val):
        return None
    probs = model.predict(data.val.images, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == data.val.labels))


def _fingerprint(data: TrainingData) -> str:
    import hashlib

    digest = hashlib.sha256()
    for h in sorted(data.train.hashes + data.val.hashes):
        digest.update(h.encode())
    return digest.hexdigest()


def _plot_curves(history: dict[str, list[float]], out_png: Path, log: Log) -> None:
    try:
        from tl_perception.train.report import plot_training_curves
    except ImportError:
        return
    try:
        plot_training_curves(history, out_png)
    except Exception as err:  # a plot must never cost the trained model
        log(f"training curves not drawn: {err}")


def _evaluate_and_export(
    bundle_path: Path, data: TrainingData, cfg: FinetuneConfig, log: Log
) -> None:
    """Val-split report and float TFLite export with its top-1 agreement on the whole val split.

    The Keras bundle is already complete; a failed export is reported, not fatal.
    """
    from tl_perception.train.evaluate import evaluate_samples
    from tl_perception.train.export import export_tflite

    if cfg.evaluate and data.val.samples:
        evaluate_samples(bundle_path, data.val.samples, out_dir=bundle_path / REPORT_DIR)
    if cfg.export_tflite:
        try:
            record = export_tflite(
                bundle_path, agreement_samples=data.val.samples or data.train.samples
            )
            log(f"exported model.tflite (top-1 agreement {record.get('top1_agreement')})")
        except TlPerceptionError as err:
            log(f"TFLite export failed, the Keras bundle stands: {err}")
