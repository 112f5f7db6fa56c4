"""`tl-perception demo`: every part of tl_perception, end to end, on synthetic drives.

`--mode roi` (the default, `demo/roi.py`) classifies the boxes of a simulated detector in
640x480 road scenes; `--mode frame` (this module) classifies whole frames of a drive past one
sign at a time:

1. synth a training drive and a held-out drive (another seed);
2. extract the training drive (labels from /label, split by sequence);
3. finetune with the defaults (strategy auto, MobileNetV2 alpha 0.35 at 224 px, ImageNet weights);
4. start classifier_node as its own process, play the held-out drive to it, collect its output;
5. write report.md and plots.

Each step records its settings in `demo.json` when it finishes; a second run reuses every step
whose settings are unchanged and whose output is still there. ROS traffic stays in the
`/tl_perception_demo` namespace on localhost, so a robot on the same network is not disturbed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tl_perception.demo.steps import (
    NAMESPACE,
    STATE_FILE,
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
from tl_perception.fsutil import atomic_write_json

__all__ = ["LIVE_FILE", "MODES", "STATE_FILE", "run_demo"]

MODES: tuple[str, ...] = ("roi", "frame")
LIVE_FILE = "live.json"
KIND = "signs"
SIZE = (160, 120)
RATE_HZ = 10.0
TRAIN_FRAMES = 1600  # ~1250 labelled frames: ~9 drive-bys and ~90 train images per class
HELDOUT_FRAMES = 400  # 40 s of driving at 10 Hz
TRAIN_SEED, HELDOUT_SEED = 1, 2
SPLIT = (0.7, 0.15, 0.15)
LABEL_TOLERANCE_S = 0.5 / RATE_HZ  # a label describes one frame only; gaps stay unlabelled


def run_demo(
    workdir: Path,
    *,
    mode: str = "roi",
    rerun_live: bool = False,
    weights: str = "imagenet",
    log: Log = print,
) -> dict[str, Any]:
    """Run (or resume) the demo of `mode` in `workdir`; returns the facts written to report.md."""
    if mode == "roi":
        from tl_perception.demo.roi import run_roi_demo

        return run_roi_demo(Path(workdir), rerun_live=rerun_live, weights=weights, log=log)
    if mode != "frame":
        raise ValueError(f"demo mode {mode!r} is not one of {', '.join(MODES)}")
    return run_frame_demo(Path(workdir), rerun_live=rerun_live, weights=weights, log=log)


def run_frame_demo(
    workdir: Path, *, rerun_live: bool = False, weights: str = "imagenet", log: Log = print
) -> dict[str, Any]:
    """The whole-frame demo (`--mode frame`); returns the facts written to report.md."""
    started = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    workdir.mkdir(parents=True, exist_ok=True)
    state = State(workdir)
    bags = {"train": workdir / "bags" / "train", "heldout": workdir / "bags" / "heldout"}

    step(1, "synthetic drives", log)
    for name, frames, seed in (
        ("train", TRAIN_FRAMES, TRAIN_SEED),
        ("heldout", HELDOUT_FRAMES, HELDOUT_SEED),
    ):
        _synth(state, f"synth_{name}", bags[name], frames, seed, log)

    step(2, "extract the training drive", log)
    dataset = workdir / "dataset"
    _extract(state, bags["train"], dataset, log)

    step(3, f"finetune (strategy auto, MobileNetV2 alpha 0.35, 224 px, weights {weights})", log)
    bundle = workdir / "model"
    training = _finetune(state, dataset, bundle, workdir / "feature_cache", weights, log)

    step(4, "classifier_node on the held-out drive", log)
    live_path = workdir / LIVE_FILE
    live_settings = {"finetune": training["settings"], "heldout": state.steps["synth_heldout"]}
    if live_path.is_file() and not rerun_live and state.done("live", live_settings, live_path):
        log("  reusing the recorded live run (--rerun-live plays it again)")
        live = json.loads(live_path.read_text(encoding="utf-8"))
    else:
        state.begin("live")
        live = _live(bags["heldout"], bundle, workdir, log)
        atomic_write_json(live_path, live)
        state.finish("live", live_settings)

    step(5, "report", log)
    facts = _facts(workdir, bags, dataset, state, live, started)
    order = ("synth_train", "synth_heldout", "extract", "finetune", "live")
    facts["step_seconds"] = {k: state.steps[k].get("seconds") for k in order if k in state.steps}
    from tl_perception.demo.report import write_report

    report = write_report(workdir, facts)
    lv = facts["live"]
    log(f"  strategy auto chose: {training['strategy']} ({training['reason']})")
    log(f"  validation accuracy {training['val_accuracy']:.3f}")
    log(
        f"  live accuracy {lv['accuracy']:.3f} on {lv['labelled']} frames; "
        f"{facts['processed_fps']:.1f} fps; dropped {facts['diagnostics'].get('dropped_frames')}; "
        f"latency p50/p95 {lv['latency_ms_p50'] or 0:.1f}/{lv['latency_ms_p95'] or 0:.1f} ms"
    )
    log(f"wrote {report} in {facts['wall_seconds']:.0f} s")
    return facts


def _synth(state: State, name: str, bag: Path, frames: int, seed: int, log: Log) -> None:
    from tl_perception.synth.writer import DriveSpec, write_synthetic_bag

    settings = {"kind": KIND, "frames": frames, "seed": seed, "size": list(SIZE), "rate": RATE_HZ}
    if state.done(name, settings, bag / "metadata.yaml"):
        log(f"  {bag}: done before, reused")
        return
    state.begin(name)
    spec = DriveSpec(kind=KIND, frames=frames, seed=seed, size=SIZE, rate=RATE_HZ)
    summary = write_synthetic_bag(bag, spec, overwrite=True)
    record = state.finish(name, settings)
    log(
        f"  wrote {bag}: {frames} frames, {summary.labelled_frames} labelled "
        f"({record['seconds']:.1f} s)"
    )


def _extract(state: State, bag: Path, dataset: Path, log: Log) -> dict[str, Any]:
    from tl_perception.bag.extract import ExtractOptions, extract
    from tl_perception.bag.plan import LabelSpec
    from tl_perception.synth.writer import IMAGE_TOPIC, LABEL_TOPIC

    settings = {"bag": state.steps.get("synth_train", {}).get("settings"), "split": list(SPLIT)}
    record = extract_step(state, "extract", settings, dataset, log)
    if record:
        return record
    report = extract(
        ExtractOptions(
            bags=(bag,),
            topic=IMAGE_TOPIC,
            out=dataset,
            labels=LabelSpec("topic", topic=LABEL_TOPIC, tolerance_s=LABEL_TOLERANCE_S),
            split=SPLIT,
            workers=os.cpu_count() or 1,
        )
    )
    counts = split_counts(report.kept)
    record = state.finish("extract", settings, counts=counts)
    log(f"  wrote {report.written} images to {dataset} {counts} ({record['seconds']:.1f} s)")
    return record


def _finetune(
    state: State, dataset: Path, bundle: Path, cache: Path, weights: str, log: Log
) -> dict[str, Any]:
    from tl_perception.train.config import FinetuneConfig

    config = FinetuneConfig(strategy="auto", weights=weights, seed=0, cache_dir=str(cache))
    return finetune_step(state, TrainStep("finetune", "extract", dataset, bundle), config, log)


def _live(bag: Path, bundle: Path, workdir: Path, log: Log) -> dict[str, Any]:
    from tl_perception.synth.writer import IMAGE_TOPIC

    local_ros()
    from tl_perception.ros.collect import LivePlan, collect_live

    image_topic = f"{NAMESPACE}{IMAGE_TOPIC}"
    result = with_node(
        node_command(bundle, image_topic),
        workdir / "logs" / "classifier_node.log",
        lambda alive: collect_live(
            LivePlan(
                bag=bag,
                play={IMAGE_TOPIC: image_topic},
                image_topic=image_topic,
                results_topic=f"{NAMESPACE}/classification",
            ),
            node_alive=alive,
            log=lambda line: log(f"  {line}"),
        ),
        log,
    )
    log(
        f"  {len(result.records)} classifications for {result.published} images "
        f"in {result.seconds:.1f} s"
    )
    return {
        "records": [asdict(r) for r in result.records],
        "published": result.published,
        "images_seen": result.images_seen,
        "seconds": result.seconds,
        "diagnostics": result.diagnostics,
    }


def _facts(
    workdir: Path,
    bags: dict[str, Path],
    dataset: Path,
    state: State,
    live: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    from tl_perception.bundle import read_bundle
    from tl_perception.demo.report import read_labels, score_live
    from tl_perception.synth.writer import LABEL_TOPIC

    bundle = workdir / "model"
    extracted, training = state.steps["extract"], state.steps["finetune"]
    scored = score_live(
        live["records"], read_labels(bags["heldout"], LABEL_TOPIC), round(LABEL_TOLERANCE_S * 1e9)
    )
    seconds = live["seconds"] or 1.0
    return {
        "classes": list(read_bundle(bundle).class_names),
        "dataset": str(dataset),
        "train_images": extracted["counts"].get("train", 0),
        "val_images": extracted["counts"].get("val", 0),
        "test_images": extracted["counts"].get("test", 0),
        "training": training,
        "test_accuracy": training.get("test_accuracy"),
        "heldout_bag": str(bags["heldout"]),
        "rate": RATE_HZ,
        "published": live["published"],
        "input_fps": live["images_seen"] / seconds,
        "processed_fps": len(live["records"]) / seconds,
        "diagnostics": live["diagnostics"],
        "live": scored,
        "wall_seconds": time.monotonic() - started,
    }
