"""Score a live run against the held-out drive's label topic and write the demo's report.

A classification answers the image whose stamp it carries; that image's label is the last
`/label` message at most `tolerance` before the stamp (synth publishes it 1 ms before the frame
and nothing while the road is empty), so frames without a label are left out of the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_perception.fsutil import atomic_save_figure, atomic_write_text

if TYPE_CHECKING:
    from tl_perception.bag.labels import LabelTrack

REPORT_MD = "report.md"
LIVE_ACCURACY_PNG = "live_accuracy.png"
LATENCY_PNG = "latency.png"


def read_labels(bag: Path, topic: str) -> LabelTrack:
    """The label topic's track: the same lookup extraction labels its frames with (no ROS)."""
    from tl_perception.bag.labels import read_label_track

    return read_label_track(bag, topic)


def score_live(
    records: Sequence[dict[str, Any]],
    labels: LabelTrack,
    tolerance_ns: int,
) -> dict[str, Any]:
    """Live accuracy overall and per class, with latency percentiles, from collected records.

    A record is scored against `labels.at(stamp)`, the label extraction would give its frame;
    frames without one (empty road, a stale or empty label) are left out.
    """
    per_class: dict[str, list[int]] = {}
    for rec in records:
        truth = labels.at(int(rec["stamp_ns"]), tolerance_ns)
        if truth is None:
            continue
        per_class.setdefault(truth, []).append(int(rec["top1"] == truth))
    hits = [h for v in per_class.values() for h in v]
    latencies = [r["latency_ms"] for r in records if r.get("latency_ms") is not None]
    return {
        "classified": len(records),
        "labelled": len(hits),
        "accuracy": float(np.mean(hits)) if hits else 0.0,
        "per_class": {c: float(np.mean(v)) for c, v in sorted(per_class.items())},
        "per_class_frames": {c: len(v) for c, v in sorted(per_class.items())},
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "latencies_ms": latencies,
    }


def fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or value == "n/a":
        return "n/a"
    return f"{float(value):.{digits}f}{unit}"


def training_lines(facts: dict[str, Any]) -> list[str]:
    """The report's "Training" section: dataset, backbone, auto's choice and why, accuracies."""
    from tl_perception.train.race import summary_lines

    train = facts["training"]
    race = summary_lines(train)
    return [
        "## Training",
        "",
        f"- Dataset: `{facts['dataset']}` ({facts['train_images']} train / "
        f"{facts['val_images']} val / {facts['test_images']} test images, "
        f"{len(facts['classes'])} classes)",
        f"- Backbone: {train['backbone']} (alpha {train['alpha']}) at {train['input_size']} px, "
        f"weights {train['weights']}",
        f"- Strategy chosen by `auto`: **{train['strategy']}**",
        f"- Why: {train['reason']}",
        *(["", "How `auto` raced the candidates on the val split:", "", *race, ""] if race else []),
        f"- Validation accuracy: **{fmt(train['val_accuracy'], 3)}**; test split accuracy: "
        f"{fmt(facts['test_accuracy'], 3)}; training took {fmt(train['train_seconds'], 0, ' s')}",
    ]


def timing_line(facts: dict[str, Any]) -> str:
    """How long this run took, and each step when it ran."""
    return (
        f"This run took {facts['wall_seconds']:.0f} s (finished steps are reused). "
        "Each step's time when it ran: "
        + ", ".join(
            f"{step} {fmt(seconds, 0, ' s')}" for step, seconds in facts["step_seconds"].items()
        )
        + "."
    )


def report_markdown(facts: dict[str, Any]) -> str:
    """report.md from the facts the pipeline gathered (see `pipeline.run_demo`)."""
    live, diag = facts["live"], facts["diagnostics"]
    chance = 1.0 / max(len(facts["classes"]), 1)
    lines = [
        "# tl_perception demo report",
        "",
        "Synthetic traffic-sign drives (`tl-perception synth`): a demo of the pipeline, not a "
        "claim about real-world accuracy.",
        "",
        *training_lines(facts),
        "",
        "## Live: classifier_node on the held-out drive",
        "",
        f"- Held-out drive: `{facts['heldout_bag']}` (another seed), played at "
        f"{facts['rate']:g} Hz to `classifier_node` (a separate process)",
        f"- Live accuracy: **{live['accuracy']:.3f}** on {live['labelled']} labelled frames "
        f"(chance {chance:.3f}); {live['classified']} classifications in all",
        f"- Images published: {facts['published']}; classified: {live['classified']}; "
        f"dropped by the node: {diag.get('dropped_frames', 'n/a')}",
        f"- Processed: **{fmt(facts['processed_fps'])} fps** of {fmt(facts['input_fps'])} fps "
        "offered",
        f"- Latency, image arrival -> classification (p50 / p95): "
        f"**{fmt(live['latency_ms_p50'])} / {fmt(live['latency_ms_p95'])} ms**",
        inference_line(diag),
        "",
        "| class | live accuracy | frames |",
        "|---|---:|---:|",
    ]
    for name, acc in live["per_class"].items():
        lines.append(f"| {name} | {acc:.3f} | {live['per_class_frames'][name]} |")
    lines += [
        "",
        f"![live accuracy per class]({LIVE_ACCURACY_PNG})",
        f"![latency histogram]({LATENCY_PNG})",
        "",
        timing_line(facts),
        "",
    ]
    return "\n".join(lines)


def inference_line(diag: dict[str, Any]) -> str:
    """The node's own inference latency, from its last /diagnostics status."""
    return (
        f"- Inference latency from /diagnostics (p50 / p95): "
        f"{diag.get('inference_latency_p50_ms', 'n/a')} / "
        f"{diag.get('inference_latency_p95_ms', 'n/a')} ms (backend {diag.get('backend', 'n/a')})"
    )


def write_report(workdir: Path, facts: dict[str, Any]) -> Path:
    """report.md and its two plots in `workdir`."""
    _plots(workdir, facts["live"])
    return atomic_write_text(workdir / REPORT_MD, report_markdown(facts))


def _plots(workdir: Path, live: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(live["per_class"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(names, [live["per_class"][n] for n in names], color="tab:blue")
    ax.axhline(live["accuracy"], color="tab:red", linestyle="--", label="overall")
    ax.set_ylim(0, 1)
    ax.set_ylabel("live accuracy")
    ax.tick_params(axis="x", rotation=35)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, workdir / LIVE_ACCURACY_PNG)

    plot_latency(workdir / LATENCY_PNG, live["latencies_ms"], "image arrival -> classification")


def plot_latency(path: Path, latencies_ms: Sequence[float], what: str) -> None:
    """A histogram of latencies in ms, `what` naming the interval measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(latencies_ms) or [0.0], bins=30, color="tab:green")
    ax.set_xlabel(f"{what} (ms)")
    ax.set_ylabel("frames")
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure atomically (a reader never sees half a PNG) and close it."""
    atomic_save_figure(fig, path, dpi=100)
