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

from tl_perception.fsutil import atomic_write_text

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


def _fmt(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or value == "n/a":
        return "n/a"
    return f"{float(value):.{digits}f}{unit}"


def report_markdown(facts: dict[str, Any]) -> str:
    """report.md from the facts the pipeline gathered (see `pipeline.run_demo`)."""
    live, diag, train = facts["live"], facts["diagnostics"], facts["training"]
    chance = 1.0 / max(len(facts["classes"]), 1)
    lines = [
        "# tl_perception demo report",
        "",
        "Synthetic traffic-sign drives (`tl-perception synth`): a demo of the pipeline, not a "
        "claim about real-world accuracy.",
        "",
        "## Training",
        "",
        f"- Dataset: `{facts['dataset']}` ({facts['train_images']} train / "
        f"{facts['val_images']} val / {facts['test_images']} test images, "
        f"{len(facts['classes'])} classes)",
        f"- Backbone: {train['backbone']} (alpha {train['alpha']}) at {train['input_size']} px, "
        f"weights {train['weights']}",
        f"- Strategy chosen by `auto`: **{train['strategy']}**",
        f"- Why: {train['reason']}",
        f"- Validation accuracy: **{_fmt(train['val_accuracy'], 3)}**; test split accuracy: "
        f"{_fmt(facts['test_accuracy'], 3)}; training took {_fmt(train['train_seconds'], 0, ' s')}",
        "",
        "## Live: classifier_node on the held-out drive",
        "",
        f"- Held-out drive: `{facts['heldout_bag']}` (another seed), played at "
        f"{facts['rate']:g} Hz to `classifier_node` (a separate process)",
        f"- Live accuracy: **{live['accuracy']:.3f}** on {live['labelled']} labelled frames "
        f"(chance {chance:.3f}); {live['classified']} classifications in all",
        f"- Images published: {facts['published']}; classified: {live['classified']}; "
        f"dropped by the node: {diag.get('dropped_frames', 'n/a')}",
        f"- Processed: **{_fmt(facts['processed_fps'])} fps** of {_fmt(facts['input_fps'])} fps "
        "offered",
        f"- Latency, image arrival -> classification (p50 / p95): "
        f"**{_fmt(live['latency_ms_p50'])} / {_fmt(live['latency_ms_p95'])} ms**",
        f"- Inference latency from /diagnostics (p50 / p95): "
        f"{diag.get('inference_latency_p50_ms', 'n/a')} / "
        f"{diag.get('inference_latency_p95_ms', 'n/a')} ms (backend {diag.get('backend', 'n/a')})",
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
        f"This run took {facts['wall_seconds']:.0f} s (finished steps are reused). "
        "Each step's time when it ran: "
        + ", ".join(
            f"{step} {_fmt(seconds, 0, ' s')}" for step, seconds in facts["step_seconds"].items()
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


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
    _save(fig, workdir / LIVE_ACCURACY_PNG)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(live["latencies_ms"] or [0.0], bins=30, color="tab:green")
    ax.set_xlabel("image arrival -> classification (ms)")
    ax.set_ylabel("frames")
    fig.tight_layout()
    _save(fig, workdir / LATENCY_PNG)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
