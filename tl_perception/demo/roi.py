"""`tl-perception demo` (`--mode roi`, the default): classify what a detector found, not frames.

1. synth two road drives (640x480 JPEG at 10 Hz, several signs and vehicles in view, their true
   boxes on /detections/truth and a simulated detector's noisy boxes on /detections), one to
   train on and a held-out one (another seed);
2. extract the training drive: one crop per *true* box (`--boxes-topic /detections/truth`, the
   crop policy's defaults, recorded in dataset.json) plus `--negatives` background crops;
3. finetune (strategy auto, MobileNetV2 alpha 0.35, ImageNet weights) at 96 px: the crops are
   19-115 px, and at the default 224 px fine-tuning alone took 15 minutes on two cores;
4. start classifier_node with `roi_source:=detections` (it crops with the policy in the
   bundle) and play the held-out drive's images and its *noisy* /detections to it;
5. score every classified detection against the truth by track id (`obj-<n>` must be named by
   its class, the detector's false positives `fp-<n>` must come out as background) and write
   report.md with plots.

Same `demo.json` as the whole-frame demo, under other step names and paths, so the two modes
can share one work directory (report.md is the last run's).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tl_perception.crop import policy_record
from tl_perception.demo.steps import (
    NAMESPACE,
    Log,
    State,
    TrainStep,
    extract_step,
    finetune_step,
    local_ros,
    node_command,
    split_counts,
    step,
    with_node,
)
from tl_perception.errors import TlPerceptionError
from tl_perception.fsutil import atomic_write_json

LIVE_FILE = "live_roi.json"
SIZE = (640, 480)
RATE_HZ = 10.0
TRAIN_FRAMES = 1000  # ~110 tracks, ~1800 true boxes: ~8 tracks and ~90 train crops per class
HELDOUT_FRAMES = 400  # 40 s of driving at 10 Hz
TRAIN_SEED, HELDOUT_SEED = 1, 2
NOISE_LEVEL = 0.5  # synth's default: 10% missed boxes, 0.25 false positives a frame, 4% jitter
SPLIT = (0.7, 0.15, 0.15)
NEGATIVES = 1  # background crops per frame: about as many as true boxes
INPUT_SIZE = 96
BACKGROUND = "background"
STEP_NAMES = ("road_train", "road_heldout", "roi_extract", "roi_finetune", "roi_live")


@dataclass(frozen=True)
class RoiPaths:
    """Where the ROI demo keeps its bags, dataset, bundle and live record."""

    train: Path
    heldout: Path
    dataset: Path
    bundle: Path
    live: Path
    cache: Path
    node_log: Path

    @classmethod
    def of(cls, workdir: Path) -> RoiPaths:
        return cls(
            train=workdir / "bags" / "road_train",
            heldout=workdir / "bags" / "road_heldout",
            dataset=workdir / "roi_dataset",
            bundle=workdir / "roi_model",
            live=workdir / LIVE_FILE,
            cache=workdir / "feature_cache",
            node_log=workdir / "logs" / "classifier_node.log",
        )


def run_roi_demo(
    workdir: Path, *, rerun_live: bool = False, weights: str = "imagenet", log: Log = print
) -> dict[str, Any]:
    """Run (or resume) the ROI demo in `workdir`; returns the facts written to report.md."""
    started = time.monotonic()
    _require_vision_msgs()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    workdir.mkdir(parents=True, exist_ok=True)
    state = State(workdir)
    where = RoiPaths.of(workdir)

    step(1, "synthetic road drives (640x480, signs and vehicles, detector boxes)", log)
    _synth(state, "road_train", where.train, (TRAIN_FRAMES, TRAIN_SEED), log)
    _synth(state, "road_heldout", where.heldout, (HELDOUT_FRAMES, HELDOUT_SEED), log)

    step(2, "extract one crop per true box of the training drive, with negatives", log)
    _extract(state, where.train, where.dataset, log)

    step(3, f"finetune (strategy auto, MobileNetV2 alpha 0.35, {INPUT_SIZE} px, {weights})", log)
    training = _finetune(state, where, weights, log)

    step(4, "classifier_node (roi_source detections) on the held-out drive", log)
    live = _live_step(state, where, training, rerun_live, log)

    step(5, "report", log)
    return _report(workdir, state, live, started, log)


def _require_vision_msgs() -> None:
    """Detections travel as vision_msgs/Detection2DArray: say so before minutes of training."""
    from tl_perception.ros.messages import vision_msgs_available

    if not vision_msgs_available():
        raise TlPerceptionError(
            "the ROI demo plays vision_msgs/Detection2DArray to the node, but vision_msgs "
            "cannot be imported; build it into the venv (make venv, with cmake and a C/C++ "
            "compiler), source a ROS 2 install, or run tl-perception demo --mode frame"
        )


def _synth(state: State, name: str, bag: Path, frames_seed: tuple[int, int], log: Log) -> None:
    from tl_perception.synth.detector import DetectorNoise
    from tl_perception.synth.writer import DriveSpec, write_synthetic_bag

    frames, seed = frames_seed
    noise = DetectorNoise.from_level(NOISE_LEVEL)
    settings = {
        "kind": "road",
        "frames": frames,
        "seed": seed,
        "size": list(SIZE),
        "rate": RATE_HZ,
        "compressed": True,
        "noise": asdict(noise),
    }
    if state.done(name, settings, bag / "metadata.yaml"):
        log(f"  {bag}: done before, reused")
        return
    state.begin(name)
    spec = DriveSpec(
        kind="road",
        frames=frames,
        seed=seed,
        size=SIZE,
        rate=RATE_HZ,
        compressed=True,
        detector_noise=noise,
    )
    summary = write_synthetic_bag(bag, spec, overwrite=True)
    road = summary.road
    if road is None:  # a road drive always has one; say so rather than fail on None later
        raise TlPerceptionError(f"{bag}: synth wrote no detection summary for a road drive")
    record = state.finish(
        name,
        settings,
        truth_boxes=road.truth_boxes,
        tracks=len(road.tracks),
        detected=road.detected,
        missed=road.missed,
        false_positives=road.false_positives,
    )
    log(
        f"  wrote {bag}: {frames} frames, {road.truth_boxes} true boxes in {len(road.tracks)} "
        f"tracks; detector: {road.detected} found, {road.missed} missed, "
        f"{road.false_positives} false positives ({record['seconds']:.1f} s)"
    )


def _extract(state: State, bag: Path, dataset: Path, log: Log) -> dict[str, Any]:
    from tl_perception.bag.boxes import BoxSpec
    from tl_perception.bag.extract import ExtractOptions, extract
    from tl_perception.bag.plan import LabelSpec
    from tl_perception.bag.roiplan import RoiOptions
    from tl_perception.synth.writer import COMPRESSED_TOPIC, TRUTH_TOPIC

    rois = RoiOptions(
        boxes=BoxSpec("topic", topic=TRUTH_TOPIC), negatives=NEGATIVES, background_label=BACKGROUND
    )
    settings = {
        "bag": state.steps.get("road_train", {}).get("settings"),
        "split": list(SPLIT),
        "rois": rois.record(),
        "crop_policy": rois.policy.to_dict(),
    }
    record = extract_step(state, "roi_extract", settings, dataset, log)
    if record:
        return record
    report = extract(
        ExtractOptions(
            bags=(bag,),
            topic=COMPRESSED_TOPIC,
            out=dataset,
            labels=LabelSpec("boxes"),
            split=SPLIT,
            workers=os.cpu_count() or 1,
            rois=rois,
        )
    )
    counts = split_counts(report.kept)
    background = sum(n for (cls, _split), n in report.kept.items() if cls == BACKGROUND)
    record = state.finish(
        "roi_extract",
        settings,
        counts=counts,
        background=background,
        boxes_skipped=dict(report.boxes_skipped),
    )
    log(
        f"  wrote {report.written} crops ({background} background) to {dataset} {counts} "
        f"({record['seconds']:.1f} s)"
    )
    return record


def _finetune(state: State, where: RoiPaths, weights: str, log: Log) -> dict[str, Any]:
    from tl_perception.train.config import FinetuneConfig

    config = FinetuneConfig(
        strategy="auto",
        weights=weights,
        input_size=INPUT_SIZE,
        seed=0,
        cache_dir=str(where.cache),
    )
    train = TrainStep("roi_finetune", "roi_extract", where.dataset, where.bundle)
    return finetune_step(state, train, config, log)


def _live_step(
    state: State,
    where: RoiPaths,
    training: dict[str, Any],
    rerun_live: bool,
    log: Log,
) -> dict[str, Any]:
    """Play the held-out drive to the node, or reuse the recorded run."""
    live_path = where.live
    settings = {
        "finetune": training["settings"],
        "heldout": state.steps["road_heldout"],
        "node": node_arguments(),
    }
    if live_path.is_file() and not rerun_live and state.done("roi_live", settings, live_path):
        log("  reusing the recorded live run (--rerun-live plays it again)")
        live: dict[str, Any] = json.loads(live_path.read_text(encoding="utf-8"))
        return live
    state.begin("roi_live")
    live = _live(where, log)
    atomic_write_json(live_path, live)
    state.finish("roi_live", settings)
    return live


def node_arguments() -> list[str]:
    """What makes the node classify the detector's boxes (beyond the frame demo's arguments).

    Background is published (not left out) so the report can tell a false positive rejected as
    background from a detection the node never answered.
    """
    return [
        "-r",
        f"detections:={NAMESPACE}/detections",
        "-p",
        "image_transport:=compressed",
        "-p",
        "roi_source:=detections",
        "-p",
        "publish_background:=true",
        "-p",
        f"background_label:={BACKGROUND}",
    ]


def _live(where: RoiPaths, log: Log) -> dict[str, Any]:
    from tl_perception.synth.writer import COMPRESSED_TOPIC, DETECTIONS_TOPIC, IMAGE_TOPIC

    local_ros()
    from tl_perception.ros.collect import LivePlan, collect_live

    plan = LivePlan(
        bag=where.heldout,
        play={
            COMPRESSED_TOPIC: f"{NAMESPACE}{COMPRESSED_TOPIC}",
            DETECTIONS_TOPIC: f"{NAMESPACE}{DETECTIONS_TOPIC}",
        },
        image_topic=f"{NAMESPACE}{COMPRESSED_TOPIC}",
        detections_topic=f"{NAMESPACE}{DETECTIONS_TOPIC}",
        results_topic=f"{NAMESPACE}/classified_detections",
    )
    command = node_command(where.bundle, f"{NAMESPACE}{IMAGE_TOPIC}", node_arguments())
    result = with_node(
        command,
        where.node_log,
        lambda alive: collect_live(plan, node_alive=alive, log=lambda line: log(f"  {line}")),
        log,
    )
    log(
        f"  {len(result.rois)} classified_detections messages for {result.images_seen} images "
        f"in {result.seconds:.1f} s"
    )
    return {
        "records": [asdict(r) for r in result.rois],
        "published": result.published,
        "images_seen": result.images_seen,
        "detections_seen": result.detections_seen,
        "seconds": result.seconds,
        "diagnostics": result.diagnostics,
    }


def _report(
    workdir: Path, state: State, live: dict[str, Any], started: float, log: Log
) -> dict[str, Any]:
    from tl_perception.demo.report import fmt
    from tl_perception.demo.roi_report import write_roi_report

    facts = _facts(workdir, state, live, started)
    report = write_roi_report(workdir, facts)
    scored, training = facts["live"], facts["training"]
    objects, fps = scored["objects"], scored["false_positives"]
    log(f"  strategy auto chose: {training['strategy']} ({training['reason']})")
    log(f"  validation accuracy {training['val_accuracy']:.3f}")
    log(
        f"  per-ROI accuracy {objects['accuracy']:.3f} on {objects['scored']} detected objects; "
        f"false positives rejected as background {fps['rejected']}/{fps['scored']}; "
        f"{facts['processed_fps']:.1f} fps; dropped {facts['diagnostics'].get('dropped_frames')}; "
        f"latency p50/p95 {fmt(scored['latency_ms_p50'])}/{fmt(scored['latency_ms_p95'])} ms"
    )
    log(f"wrote {report} in {facts['wall_seconds']:.0f} s")
    return facts


def _facts(workdir: Path, state: State, live: dict[str, Any], started: float) -> dict[str, Any]:
    from tl_perception.bundle import read_bundle
    from tl_perception.demo.roi_report import read_drive_truth, score_rois

    where = RoiPaths.of(workdir)
    extracted, training = state.steps["roi_extract"], state.steps["roi_finetune"]
    scored = score_rois(live["records"], read_drive_truth(where.heldout), BACKGROUND)
    bundle = read_bundle(where.bundle)
    seconds = live["seconds"] or 1.0
    return {
        "classes": list(bundle.class_names),
        "crop_policy": policy_record(bundle.crop_policy),
        "dataset": str(where.dataset),
        "train_images": extracted["counts"].get("train", 0),
        "val_images": extracted["counts"].get("val", 0),
        "test_images": extracted["counts"].get("test", 0),
        "background_images": extracted.get("background", 0),
        "training": training,
        "test_accuracy": training.get("test_accuracy"),
        "heldout_bag": str(where.heldout),
        "heldout": state.steps["road_heldout"],
        "rate": RATE_HZ,
        "published": live["published"],
        "images_seen": live["images_seen"],
        "input_fps": live["images_seen"] / seconds,
        "processed_fps": len(live["records"]) / seconds,
        "diagnostics": live["diagnostics"],
        "live": scored,
        "step_seconds": {k: state.steps[k].get("seconds") for k in STEP_NAMES if k in state.steps},
        "wall_seconds": time.monotonic() - started,
    }
