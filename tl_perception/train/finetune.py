"""`finetune(dataset, out_bundle, config)`: dataset in, model bundle out.

Steps: load and split the data; pick the strategy (`auto` measures, see `auto.py`); train its
phases (frozen phases on cached bottleneck features, unfrozen phases end to end); fit a
temperature on the val split and fold it into the final layer, and pick the unknown threshold
(`calibration.py`); write the bundle atomically with the decision, config, history, metrics,
calibration and the dataset's crop policy in bundle.json and TensorBoard logs in report/; then
evaluate on the val split and export TFLite (from the calibrated model).
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from tl_perception.train import auto, calibration, race
from tl_perception.train.config import FinetuneConfig
from tl_perception.train.data import TrainingData, load_training_data
from tl_perception.train.distribute import distribution_strategy
from tl_perception.train.evaluate import evaluate_samples
from tl_perception.train.export import export_tflite
from tl_perception.train.phases import StrategyTraining
from tl_perception.train.report import plot_training_curves
from tl_perception.train.run import TrainingRun
from tl_perception.train.strategies import Network, build_network, head_logits, probe_extractor
from tl_perception.train.trainer import Checkpoints, Recorder

Log = Callable[[str], None]


@dataclass
class FinetuneResult:
    """What a run produced and measured; the same facts bundle.json records."""

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
    calibration: dict[str, Any] | None = None
    unknown_threshold: dict[str, Any] | None = None


@dataclass(frozen=True)
class ValCalibration:
    """What the val split said after training: accuracy, the temperature record, the threshold."""

    accuracy: float | None
    calibration: dict[str, Any] | None
    unknown_threshold: dict[str, Any] | None


def finetune(
    dataset_path: str | Path,
    out_bundle_path: str | Path,
    config: FinetuneConfig | None = None,
    log: Log = print,
    verbose: Any = "auto",
) -> FinetuneResult:
    """Train a classifier bundle on `dataset_path` (see docs/training.md for every option).

    Raises:
        DatasetError: empty dataset, unreadable tree, a class with < 2 images, file names that
            `group_regex` does not match.
        TrainingError: unknown backbone, impossible input size, missing weights, bad options.
    """
    import keras

    cfg = (config or FinetuneConfig()).validate()
    choices = _backbone_choices(cfg)
    backbone = choices[0]
    out = Path(out_bundle_path)
    checkpoints = _open_checkpoints(out, cfg, log)
    start = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    run = TrainingRun(cfg, backbone, _load_data(dataset_path, cfg, backbone, log), log)
    runs = _Runs(run, dataset_path)
    log(
        f"{len(run.data.train)} train / {len(run.data.val)} val images, "
        f"{len(run.data.class_names)} classes (val: {run.data.val_source})"
    )
    if checkpoints.directory.exists() and not cfg.resume:
        shutil.rmtree(checkpoints.directory)  # only now: bad input must not destroy a run
    checkpoints.save_state()
    log(
        f"backbone {backbone.name} alpha={backbone.alpha} input {backbone.input_size}px, "
        f"weights: {backbone.weights.description}"
    )
    tensorboard_dir = Path(tempfile.mkdtemp(prefix="tl_perception_tb_"))
    recorder = Recorder(checkpoints, tensorboard_dir, log, verbose)
    with distribution_strategy(cfg.distribute, cfg.batch_size, log).scope():
        training, decision = _train(runs, choices, recorder)
        history, phases = training.finish()
        network, run = training.network, training.run
        val = calibrate_network(network, run)
    result = FinetuneResult(
        bundle_path=out,
        strategy=network.strategy,
        decision=decision,
        val_accuracy=val.accuracy,
        train_seconds=time.monotonic() - start,
        trainable_params=max((p["trainable_params"] for p in phases), default=0),
        history=history,
        phases=phases,
        cache=run.stats.as_dict(),
        skipped=list(run.data.skipped),
        calibration=val.calibration,
        unknown_threshold=val.unknown_threshold,
    )
    if result.val_accuracy is not None:
        log(f"val accuracy {result.val_accuracy:.4f} after {result.train_seconds:.0f} s")
    bundle = write_bundle(
        out,
        network.model,
        _bundle_meta(run, network, result, dataset_path),
        extra_files=lambda stage: _write_report(stage / REPORT_DIR, run, history, tensorboard_dir),
    )
    shutil.rmtree(tensorboard_dir, ignore_errors=True)
    shutil.rmtree(checkpoints.directory, ignore_errors=True)
    log(f"wrote bundle {bundle.path}")
    _evaluate_and_export(bundle.path, run.data, cfg, log)
    return dataclasses.replace(result, bundle_path=bundle.path)


def decide_strategy(
    dataset_path: str | Path, config: FinetuneConfig | None = None, log: Log = print
) -> dict[str, Any]:
    """What `--strategy auto` would choose on `dataset_path`, with its measurements (no training).

    Uses (and fills) the same feature cache as `finetune`.
    """
    import keras

    cfg = (config or FinetuneConfig()).validate()
    backbone = _choose_backbone(cfg)
    keras.utils.set_random_seed(cfg.seed)
    run = TrainingRun(cfg, backbone, _load_data(dataset_path, cfg, backbone, log), log)
    decision = _auto_decision(run, backbone.build_base())
    log(f"strategy: {decision['reason']}")
    return decision


def _choose_backbone(cfg: FinetuneConfig) -> backbones.BackboneChoice:
    return backbones.choose_backbone(
        cfg.backbone,
        alpha=cfg.alpha,
        input_size=cfg.input_size,
        weights=cfg.weights,
        cut_layer=cfg.cut_layer,
    )


def _backbone_choices(cfg: FinetuneConfig) -> list[backbones.BackboneChoice]:
    """The backbone at its input size first, then every other pair auto races (resolved now,
    so a bad one fails before any image is read)."""
    names = [backbones.BackboneSpec(cfg.backbone, cfg.alpha)]
    names += [backbones.BackboneSpec.parse(text) for text in cfg.race_backbones]
    if len({n.name for n in names}) > 1 and cfg.weights not in ("imagenet", "none"):
        raise TrainingError(
            f"weights file {cfg.weights!r} fits one backbone; race several backbones with "
            "weights imagenet (or none)"
        )
    choices: dict[tuple[str, float | None, int], backbones.BackboneChoice] = {}
    for name in names:
        for size in [cfg.input_size, *cfg.race_input_sizes]:
            choice = backbones.choose_backbone(
                name.name,
                alpha=name.alpha,
                input_size=size,
                weights=cfg.weights,
                cut_layer=cfg.cut_layer if name.name == cfg.backbone else None,
            )
            choices.setdefault((choice.name, choice.alpha, choice.input_size), choice)
    return list(choices.values())


def variant_label(choice: backbones.BackboneChoice) -> str:
    """`mobilenet_v2:0.35@96`: a race candidate's backbone, width and input size."""
    name = backbones.BackboneSpec(choice.name, choice.alpha).label
    return f"{name}@{choice.input_size}"


@dataclass
class _Runs:
    """One `TrainingRun` per backbone choice, the data decoded once per input size."""

    first: TrainingRun
    dataset_path: str | Path
    _data: dict[int, TrainingData] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._data[self.first.backbone.input_size] = self.first.data

    def get(self, choice: backbones.BackboneChoice) -> TrainingRun:
        first = self.first
        if choice == first.backbone:
            return first
        if choice.input_size not in self._data:
            self._data[choice.input_size] = _load_data(
                self.dataset_path, first.cfg, choice, first.log
            )
        return TrainingRun(first.cfg, choice, self._data[choice.input_size], first.log)


def _load_data(
    dataset_path: str | Path, cfg: FinetuneConfig, backbone: backbones.BackboneChoice, log: Log
) -> TrainingData:
    return load_training_data(
        dataset_path,
        backbone.input_size,
        cfg.val_fraction,
        cfg.seed,
        log,
        group_regex=cfg.group_regex,
    )


def _open_checkpoints(out: Path, cfg: FinetuneConfig, log: Log) -> Checkpoints:
    """The run's `<out>.partial/` checkpoints, refusing a `--resume` with other options.

    `--resume` only continues a run with the same options (epochs may grow). Without it the
    run starts fresh; an old directory is removed only once the data has loaded.
    """
    partial = out.with_name(out.name + ".partial")
    checkpoints = Checkpoints.open(partial) if cfg.resume else Checkpoints(partial)
    loose = {"resume", "epochs", "head_epochs", "patience", "calibrate", "unknown_precision"}
    wanted = {k: v for k, v in cfg.to_dict().items() if k not in loose}
    saved: dict[str, Any] | None = checkpoints.state.get("config")
    if cfg.resume and saved is None:
        log("--resume: no interrupted run found, starting fresh")
    elif cfg.resume and saved is not None and saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise TrainingError(
            f"--resume: options {changed} differ from the interrupted run in "
            f"{str(partial)!r}; rerun with the same options or without --resume"
        )
    checkpoints.state["config"] = wanted
    return checkpoints


def _train(
    runs: _Runs, choices: list[backbones.BackboneChoice], recorder: Recorder
) -> tuple[StrategyTraining, dict[str, Any]]:
    """The chosen strategy trained to its end, and why it was chosen.

    `auto` races the candidates (`race.py`); a resumed run keeps its recorded decision and
    continues the winner from its checkpoints, and a race cut short resumes each candidate
    from its own.
    """
    run, checkpoints = runs.first, recorder.checkpoints
    decision: dict[str, Any] | None = checkpoints.state.get("decision")
    if decision is None and run.cfg.strategy == "auto":
        training, decision = _race(runs, choices, recorder)
    else:
        if decision is None:
            decision = {"strategy": run.cfg.strategy, "reason": "set by user"}
        if "race" in decision:  # the race's winner, resumed under its own checkpoint names
            won = [c for c in choices if variant_label(c) == decision.get("variant")]
            run = runs.get(won[0]) if won else run
            prefix = race.checkpoint_prefix(decision.get("winner", decision["strategy"]))
        else:
            prefix = ""
        network = build_network(run.backbone, len(run.data.class_names), decision["strategy"])
        training = StrategyTraining(network, run, recorder, name_prefix=prefix)
    run.log(f"strategy: {decision['reason']}")
    checkpoints.state["decision"] = decision
    checkpoints.save_state()
    training.advance(None)
    return training, decision


def _race(
    runs: _Runs, choices: list[backbones.BackboneChoice], recorder: Recorder
) -> tuple[StrategyTraining, dict[str, Any]]:
    """Race the candidates on the val split; the winner's training and the decision record.

    The four-case rule's probe runs on the first backbone choice; its decision prunes (and,
    without a val split, decides).
    """
    run = runs.first
    base = run.backbone.build_base()
    prior = _auto_decision(run, base)
    if not len(run.data.val):
        prior["reason"] += " (no val split to race on: the four-case rule decided)"
        network = build_network(run.backbone, len(run.data.class_names), prior["strategy"], base)
        return StrategyTraining(network, run, recorder), prior
    variants = [(variant_label(c), c) for c in choices]
    candidates = race.plan_candidates(run.cfg, prior, variants)
    started = time.monotonic()

    def build(candidate: race.Candidate) -> StrategyTraining:
        import keras

        # Each candidate starts exactly as its own `--strategy` run would (the same seed, then
        # a fresh base and head), so a rung's score is that run's score at that epoch.
        keras.utils.set_random_seed(run.cfg.seed)
        own = runs.get(candidate.variant)
        network = build_network(own.backbone, len(own.data.class_names), candidate.strategy)
        return StrategyTraining(
            network, own, recorder, name_prefix=race.checkpoint_prefix(candidate.key)
        )

    contest = race.Race(candidates, build, run.log)
    winner = contest.run()
    decision = race.decision_record(contest, winner, prior, time.monotonic() - started)
    decision["variant"] = variant_label(winner.variant)
    assert isinstance(winner.trainee, StrategyTraining)
    return winner.trainee, decision


def _auto_decision(run: TrainingRun, base: Any) -> dict[str, Any]:
    """Linear probes on cached pooled features of the final and the cut layer.

    The probe holds out whole sequences (the manifest's, or `group_regex`'s), so frames of one
    object on both sides cannot make the features look better than they are.
    """
    cfg, choice = run.cfg, run.backbone
    fingerprint = backbones.weights_fingerprint(base)
    caches = {
        "final": run.feature_cache(fingerprint, base.layers[-1].name),
        "cut": run.feature_cache(fingerprint, choice.cut_layer),
    }
    extractor = run.cached_extractor(probe_extractor(choice, base), caches)
    pick = auto.probe_subset(run.data.train.labels, cfg.probe_max_per_class, cfg.seed)
    probed = run.data.train.subset(pick)
    features = extractor.features(probed.images, probed.hashes)
    groups = probed.sequences()
    probe_final = auto.linear_probe(features["final"][0], probed.labels, cfg.seed, groups)
    probe_cut = auto.linear_probe(features["cut"][0], probed.labels, cfg.seed, groups)
    return auto.decide(run.data.images_per_class(), probe_final, probe_cut, choice.cut_layer, cfg)


def calibrate_network(network: Network, run: TrainingRun) -> ValCalibration:
    """Fit T on the val split, fold it into the head, and choose the unknown threshold there.

    The val split is the honest one `load_training_data` made (whole sequences, or the
    dataset's own val split). T divides the logits, so accuracy is the same before and after;
    the threshold is chosen on the scores the saved model will give (after T).
    """
    cfg, val = run.cfg, run.data.val
    if not len(val):
        run.log("no val split: scores not calibrated, no unknown_threshold recorded")
        return ValCalibration(None, None, None)
    logits = head_logits(network, val.images, cfg.batch_size)
    record = calibration.calibrate(logits, val.labels, fit=cfg.calibrate)
    if record.fitted:
        calibration.bake_temperature(network.predictions, record.temperature)
    probs = calibration.softmax(logits / record.temperature)
    correct = probs.argmax(axis=1) == val.labels
    threshold = calibration.unknown_threshold(probs.max(axis=1), correct, cfg.unknown_precision)
    run.log(_calibration_line(record, threshold))
    return ValCalibration(float(np.mean(correct)), record.to_dict(), threshold.to_dict())


def _calibration_line(
    record: calibration.Calibration, threshold: calibration.ThresholdChoice
) -> str:
    """One log line: T and val ECE before/after, and the unknown threshold with its coverage."""
    if record.fitted:
        head = (
            f"calibration: T={record.temperature:.3f}, val ECE {record.ece_before:.4f} -> "
            f"{record.ece_after:.4f} ({record.n} images)"
        )
    else:
        head = f"calibration: not fitted ({record.reason}), val ECE {record.ece_before:.4f}"
    if threshold.value is None:
        return f"{head}; no unknown_threshold ({threshold.reason})"
    return (
        f"{head}; unknown_threshold {threshold.value:.4f}: {threshold.precision:.3f} precision "
        f"at {threshold.coverage:.1%} coverage"
    )


def _fingerprint(data: TrainingData) -> str:
    digest = hashlib.sha256()
    for h in sorted(data.train.hashes + data.val.hashes):
        digest.update(h.encode())
    return digest.hexdigest()


def _bundle_meta(
    run: TrainingRun, network: Network, result: FinetuneResult, dataset_path: str | Path
) -> dict[str, Any]:
    """bundle.json: the contract's fields and everything that says how the model was made."""
    cfg, choice, data = run.cfg, run.backbone, run.data
    return bundle_meta(
        class_names=data.class_names,
        input_size=(choice.input_size, choice.input_size),
        backbone=choice.name,
        alpha=choice.alpha,
        strategy=result.strategy,
        auto=result.decision if cfg.strategy == "auto" else None,
        decision=result.decision,
        config=cfg.to_dict(),
        weights=choice.weights.description,
        base_weights_sha256=network.base_fingerprint,
        feature_layer=network.feature_layer,
        cut_layer=choice.cut_layer if result.strategy == "truncate" else None,
        dataset={
            "path": str(Path(dataset_path).resolve()),
            "train_images": len(data.train),
            "val_images": len(data.val),
            "val_source": data.val_source,
            "fingerprint": _fingerprint(data),
            "skipped": [{"path": p, "reason": r} for p, r in data.skipped],
        },
        metrics={"val_accuracy": result.val_accuracy},
        calibration=result.calibration,
        unknown_threshold=result.unknown_threshold,
        **({"crop": data.crop.to_dict()} if data.crop is not None else {}),
        phases=result.phases,
        feature_cache=result.cache,
        train_seconds=round(result.train_seconds, 2),
    )


def _write_report(
    report: Path, run: TrainingRun, history: dict[str, list[float]], tensorboard_dir: Path
) -> None:
    """report/: history, effective config, TensorBoard logs, training curves."""
    import yaml

    report.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report / "history.json", history)
    atomic_write_text(report / "config.yaml", yaml.safe_dump(run.cfg.to_dict(), sort_keys=True))
    if tensorboard_dir.is_dir():
        shutil.copytree(tensorboard_dir, report / "tensorboard", dirs_exist_ok=True)
    try:
        plot_training_curves(history, report / "training_curves.png")
    except Exception as err:  # a plot must never cost the trained model
        run.log(f"training curves not drawn: {err}")


def _evaluate_and_export(
    bundle_path: Path, data: TrainingData, cfg: FinetuneConfig, log: Log
) -> None:
    """Val-split report and float TFLite export with its top-1 agreement on the whole val split.

    The Keras bundle is already complete; a failed export is reported, not fatal.
    """
    if cfg.evaluate and data.val.samples:
        evaluate_samples(bundle_path, data.val.samples, out_dir=bundle_path / REPORT_DIR)
    if cfg.export_tflite:
        try:
            record = export_tflite(
                bundle_path, agreement_samples=data.val.samples or data.train.samples
            )
            log(f"exported model.tflite (top-1 agreement {record['top1_agreement']})")
        except TlPerceptionError as err:
            log(f"TFLite export failed, the Keras bundle stands: {err}")
