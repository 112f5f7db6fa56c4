"""Score the ROI demo's live run against the held-out drive's truth, and write its report.

The node answers each frame with `classified_detections`: the detector's boxes, each with its
`id` and the classifier's hypotheses. The drive says what every id is: `/detections/truth` has
the class of each object in view (`obj-<n>`, the same id the simulated detector gives the box it
found), so a detection whose id is in the truth of its frame is an object that must be named by
its class, and any other (`fp-<n>`) is a false positive that must come out as background.
Detections the node never answered (a dropped frame, a box the crop policy refused, beyond
`max_rois`) are counted apart, not as mistakes. ROS-free: the truth is read with rosbags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.demo.report import (
    LATENCY_PNG,
    REPORT_MD,
    fmt,
    inference_line,
    plot_latency,
    save_figure,
    timing_line,
    training_lines,
)
from tl_perception.fsutil import atomic_write_text

ROI_ACCURACY_PNG = "roi_accuracy.png"


@dataclass(frozen=True)
class DriveTruth:
    """Per image stamp: the true class of each object id in view, and the detector's ids."""

    truth: Mapping[int, Mapping[str, str]]
    offered: Mapping[int, tuple[str, ...]]


def read_drive_truth(
    bag: Path, truth_topic: str = "/detections/truth", detections_topic: str = "/detections"
) -> DriveTruth:
    """The held-out drive's truth and detector boxes, by header stamp (read like extract does)."""
    from tl_perception.bag.boxes import read_box_topic
    from tl_perception.bag.reader import open_bag

    with open_bag(bag) as reader:
        truth = {
            m.t_ns: {b.track_id: b.label or "" for b in m.boxes}
            for m in read_box_topic(reader, Path(bag), truth_topic)
        }
        offered = {
            m.t_ns: tuple(b.track_id for b in m.boxes)
            for m in read_box_topic(reader, Path(bag), detections_topic)
        }
    return DriveTruth(truth, offered)


@dataclass
class _Tally:
    """Running counts while scoring: per class hits and answers, false positives."""

    hits: dict[str, list[int]] = field(default_factory=dict)
    answers: dict[str, Counter[str]] = field(default_factory=dict)
    fp_rejected: list[int] = field(default_factory=list)
    unanswered_objects: int = 0
    unanswered_fps: int = 0

    def add(self, truth: str | None, top1: str | None, background: str) -> None:
        if truth is None:  # a false positive of the detector
            if top1 is None:
                self.unanswered_fps += 1
            else:
                self.fp_rejected.append(int(top1 == background))
        elif top1 is None:
            self.unanswered_objects += 1
        else:
            self.hits.setdefault(truth, []).append(int(top1 == truth))
            self.answers.setdefault(truth, Counter())[top1] += 1


def score_rois(
    records: Sequence[Mapping[str, Any]], drive: DriveTruth, background: str
) -> dict[str, Any]:
    """Per-ROI accuracy on the detector's true boxes (by id), false positives rejected as
    `background`, unanswered detections and latency percentiles, from the live records."""
    answered: dict[int, dict[str, str]] = {}
    for rec in records:  # the first answer for a stamp counts
        answers = {str(d["id"]): str(d["top1"]) for d in rec["detections"]}
        answered.setdefault(int(rec["stamp_ns"]), answers)
    tally = _Tally()
    for stamp, ids in drive.offered.items():
        got = answered.get(stamp)
        truth = drive.truth.get(stamp, {})
        for track in ids:
            tally.add(truth.get(track), None if got is None else got.get(track), background)
    return {
        "messages": len(records),
        "frames_with_detections": sum(1 for ids in drive.offered.values() if ids),
        "answered_frames_with_detections": sum(
            1 for stamp, ids in drive.offered.items() if ids and stamp in answered
        ),
        "objects": _objects(tally, background),
        "false_positives": _false_positives(tally),
        **_latency(records),
    }


def _objects(tally: _Tally, background: str) -> dict[str, Any]:
    hits = [h for v in tally.hits.values() for h in v]
    mistakes = {
        cls: [(name, n) for name, n in counts.most_common() if name != cls]
        for cls, counts in tally.answers.items()
    }
    return {
        "scored": len(hits),
        "accuracy": float(np.mean(hits)) if hits else 0.0,
        "per_class": {c: float(np.mean(v)) for c, v in sorted(tally.hits.items())},
        "per_class_rois": {c: len(v) for c, v in sorted(tally.hits.items())},
        "top_mistake": {c: m[0] if m else None for c, m in sorted(mistakes.items())},
        "called_background": sum(c[background] for c in tally.answers.values()),
        "unanswered": tally.unanswered_objects,
    }


def _false_positives(tally: _Tally) -> dict[str, Any]:
    scored = len(tally.fp_rejected)
    rejected = sum(tally.fp_rejected)
    return {
        "scored": scored,
        "rejected": rejected,
        "rejection_rate": rejected / scored if scored else 0.0,
        "unanswered": tally.unanswered_fps,
    }


def _latency(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    pair = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    image = [r["image_latency_ms"] for r in records if r.get("image_latency_ms") is not None]
    return {
        "latency_ms_p50": _percentile(pair, 50),
        "latency_ms_p95": _percentile(pair, 95),
        "image_latency_ms_p50": _percentile(image, 50),
        "image_latency_ms_p95": _percentile(image, 95),
        "latencies_ms": pair,
    }


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def roi_report_markdown(facts: dict[str, Any]) -> str:
    """report.md of the ROI demo from the facts `roi.run_roi_demo` gathered."""
    return "\n".join(
        [
            "# tl_perception demo report: regions of interest",
            "",
            "Synthetic road drives (`tl-perception synth --kind road`): 640x480 frames with "
            "several signs and vehicles; a simulated detector's boxes are classified by the node. "
            "A demo of the pipeline, not a claim about real-world accuracy.",
            "",
            *training_lines(facts),
            _crop_line(facts),
            "",
            *_live_lines(facts),
            "",
            *_class_table(facts["live"]["objects"]),
            "",
            f"![per-ROI accuracy per class]({ROI_ACCURACY_PNG})",
            f"![latency histogram]({LATENCY_PNG})",
            "",
            timing_line(facts),
            "",
        ]
    )


def _crop_line(facts: dict[str, Any]) -> str:
    policy = facts.get("crop_policy") or {}
    return (
        f"- Crops: one per true box of `/detections/truth` plus {facts['background_images']} "
        f"background crops (`--negatives`); crop policy (dataset.json -> bundle.json -> node): "
        f"context {policy.get('context')}, square {policy.get('square')}, "
        f"fill {policy.get('fill')}, min box {policy.get('min_box')} px"
    )


def _live_lines(facts: dict[str, Any]) -> list[str]:
    live, diag, heldout = facts["live"], facts["diagnostics"], facts["heldout"]
    objects, fps = live["objects"], live["false_positives"]
    chance = 1.0 / max(len(objects["per_class"]), 1)
    noise = heldout["settings"]["noise"]
    return [
        "## Live: classifier_node (`roi_source:=detections`) on the held-out drive",
        "",
        f"- Held-out drive: `{facts['heldout_bag']}` (another seed): {heldout['truth_boxes']} "
        f"true boxes in {heldout['tracks']} tracks; the detector found {heldout['detected']}, "
        f"missed {heldout['missed']} and added {heldout['false_positives']} false positives "
        f"(miss {noise['miss']:g}, {noise['false_positives']:g} false positives a frame, "
        f"jitter {noise['jitter']:g}); images and noisy `/detections` played at "
        f"{facts['rate']:g} Hz to `classifier_node` (a separate process)",
        f"- Per-ROI accuracy: **{objects['accuracy']:.3f}** on {objects['scored']} detected "
        f"objects, matched to the truth by track id (chance {chance:.3f}); "
        f"{objects['called_background']} of them called background",
        f"- False positives rejected as background: **{fps['rejected']} of {fps['scored']}** "
        f"({fps['rejection_rate']:.3f})",
        f"- Not answered: {objects['unanswered']} object and {fps['unanswered']} false-positive "
        "detections (dropped frames, boxes the crop policy refuses, beyond max_rois)",
        f"- Images published: {facts['images_seen']}; classified_detections messages: "
        f"{live['messages']}; frames with detections answered: "
        f"{live['answered_frames_with_detections']} of {live['frames_with_detections']}; "
        f"dropped by the node: {diag.get('dropped_frames', 'n/a')}",
        f"- Processed: **{fmt(facts['processed_fps'])} fps** of {fmt(facts['input_fps'])} fps "
        "offered",
        "- Latency, image and its detections both arrived -> classified_detections (p50 / p95): "
        f"**{fmt(live['latency_ms_p50'])} / {fmt(live['latency_ms_p95'])} ms**; from the image "
        f"alone (the detector answers 20 ms after the camera): "
        f"{fmt(live['image_latency_ms_p50'])} / {fmt(live['image_latency_ms_p95'])} ms",
        inference_line(diag),
        *_diagnostics_line(diag),
    ]


def _diagnostics_line(diag: Mapping[str, str]) -> list[str]:
    """The node's ROI counters (pairing, ROIs dropped), whatever /diagnostics names them."""
    keys = [k for k in sorted(diag) if any(w in k for w in ("unpaired", "roi", "pair"))]
    if not keys:
        return []
    return ["- ROI counters from /diagnostics: " + ", ".join(f"{k} {diag[k]}" for k in keys)]


def _class_table(objects: dict[str, Any]) -> list[str]:
    lines = ["| class | per-ROI accuracy | ROIs | most frequent mistake |", "|---|---:|---:|---|"]
    for name, acc in objects["per_class"].items():
        mistake = objects["top_mistake"].get(name)
        said = f"{mistake[0]} ({mistake[1]})" if mistake else "-"
        lines.append(f"| {name} | {acc:.3f} | {objects['per_class_rois'][name]} | {said} |")
    return lines


def write_roi_report(workdir: Path, facts: dict[str, Any]) -> Path:
    """report.md and its two plots in `workdir`."""
    _accuracy_plot(workdir / ROI_ACCURACY_PNG, facts["live"])
    plot_latency(
        workdir / LATENCY_PNG,
        facts["live"]["latencies_ms"],
        "image + detections arrival -> classified_detections",
    )
    return atomic_write_text(workdir / REPORT_MD, roi_report_markdown(facts))


def _accuracy_plot(path: Path, live: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objects, fps = live["objects"], live["false_positives"]
    names = [*objects["per_class"], "false positives\n-> background"]
    values = [*objects["per_class"].values(), fps["rejection_rate"]]
    colours = ["tab:blue"] * len(objects["per_class"]) + ["tab:orange"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.bar(names, values, color=colours)
    ax.axhline(objects["accuracy"], color="tab:red", linestyle="--", label="per-ROI accuracy")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy on the held-out drive")
    ax.tick_params(axis="x", rotation=35)
    ax.legend(loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
