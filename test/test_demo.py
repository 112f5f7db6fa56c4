"""The demo end to end, for real: synth -> extract -> finetune (ImageNet weights, offline) ->
classifier_node in its own process over DDS -> report; then a second run that reuses it all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tl_perception.cli import main
from tl_perception.demo.pipeline import LIVE_FILE, STATE_FILE, run_demo
from tl_perception.demo.report import LATENCY_PNG, LIVE_ACCURACY_PNG, REPORT_MD

STRATEGIES = ("feature_extraction", "truncate", "fine_tune", "from_scratch")


@pytest.fixture(scope="module")
def demo_run(keras_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One full demo run through the CLI (the README's command), with its printed output."""
    import contextlib
    import io

    workdir = tmp_path_factory.mktemp("demo") / "tl_perception_demo"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--workdir", str(workdir)])
    assert code == 0, out.getvalue()[-3000:]
    return workdir, out.getvalue()


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in report:\n{text}"
    return float(match.group(1))


@pytest.mark.slow
def test_demo_report_has_sane_numbers(demo_run: tuple[Path, str]) -> None:
    workdir, printed = demo_run
    for step in range(1, 6):
        assert f"[{step}/5]" in printed  # progress for every step
    report = (workdir / REPORT_MD).read_text(encoding="utf-8")
    strategy = re.search(r"Strategy chosen by `auto`: \*\*(\w+)\*\*", report)
    assert strategy and strategy.group(1) in STRATEGIES
    assert re.search(r"- Why: \w+: .+\[", report)  # auto's reason with its measurements
    classes = 10
    assert number(r"Validation accuracy: \*\*([0-9.]+)\*\*", report) > 0.5
    live = number(r"Live accuracy: \*\*([0-9.]+)\*\*", report)
    assert live > 3.0 / classes, "live accuracy should be well above chance (0.1)"
    labelled = number(r"on (\d+) labelled frames", report)
    assert labelled >= 100
    assert number(r"\*\*([0-9.]+) fps\*\*", report) > 1.0  # 10 offered; CI cores may be busy
    p50 = number(r"\(p50 / p95\): \*\*([0-9.]+) / ", report)
    p95 = number(r"\(p50 / p95\): \*\*[0-9.]+ / ([0-9.]+) ms\*\*", report)
    assert 0 < p50 <= p95 < 5000
    dropped = number(r"dropped by the node: (\d+)", report)
    published = number(r"Images published: (\d+)", report)
    classified = number(r"classified: (\d+);", report)
    assert published == 400 and 0 <= dropped < published and classified >= published / 4
    for png in (LIVE_ACCURACY_PNG, LATENCY_PNG):
        assert (workdir / png).read_bytes().startswith(b"\x89PNG")
    # The node ran as its own process and said what it loaded.
    node_log = (workdir / "logs" / "classifier_node.log").read_text(encoding="utf-8")
    assert "loaded" in node_log and str(workdir / "model") in node_log


@pytest.mark.slow
def test_second_demo_run_reuses_every_finished_step(demo_run: tuple[Path, str]) -> None:
    workdir, _printed = demo_run
    bundle_meta = workdir / "model" / "bundle.json"
    before = {
        "bundle": bundle_meta.stat().st_mtime_ns,
        "live": (workdir / LIVE_FILE).stat().st_mtime_ns,
        "dataset": (workdir / "dataset" / "dataset.json").stat().st_mtime_ns,
    }
    lines: list[str] = []
    facts = run_demo(workdir, log=lines.append)
    assert sum("done before, reused" in line for line in lines) == 4  # 2 bags, dataset, bundle
    assert any("reusing the recorded live run" in line for line in lines)
    after = {
        "bundle": bundle_meta.stat().st_mtime_ns,
        "live": (workdir / LIVE_FILE).stat().st_mtime_ns,
        "dataset": (workdir / "dataset" / "dataset.json").stat().st_mtime_ns,
    }
    assert after == before
    state = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
    assert set(state["steps"]) == {"synth_train", "synth_heldout", "extract", "finetune", "live"}
    assert facts["live"]["accuracy"] > 0.3


def test_live_scoring_matches_each_stamp_to_its_frames_label_and_skips_empty_road(
    tmp_path: Path,
) -> None:
    from tl_perception.demo.report import read_labels, score_live
    from tl_perception.synth.writer import LABEL_TOPIC, START_NS, write_synthetic_bag

    summary = write_synthetic_bag(tmp_path / "drive", frames=60, size=(32, 24), seed=4)
    labels = read_labels(tmp_path / "drive", LABEL_TOPIC)
    truth = {}
    for run in summary.runs:
        for i in range(run.start, run.start + run.length):
            truth[START_NS + i * 100_000_000] = run.label
    # Right on every labelled frame but one; empty road (answered "stop") must not count.
    records = [
        {"stamp_ns": t, "top1": label or "stop", "latency_ms": 1.0 + i}
        for i, (t, label) in enumerate(truth.items())
    ]
    wrong_first = dict(records[summary.runs[1].start], top1="no_such_class")
    records[summary.runs[1].start] = wrong_first
    scored = score_live(records, labels, tolerance_ns=50_000_000)
    assert scored["labelled"] == summary.labelled_frames
    assert scored["accuracy"] == pytest.approx(1 - 1 / summary.labelled_frames)
    assert set(scored["per_class"]) == set(summary.frames_per_class())
    assert scored["per_class_frames"] == summary.frames_per_class()
    assert scored["latency_ms_p50"] == pytest.approx(1.0 + 59 / 2)


def test_collector_reads_the_nodes_json_classification() -> None:
    from std_msgs.msg import String

    from tl_perception.ros.collect import parse_classification
    from tl_perception.ros.results import classification_json

    msg = String(data=classification_json(12, 5, "camera", [("yield", 0.2), ("stop", 0.7)]))
    assert parse_classification(msg) == (12_000_000_005, "stop", pytest.approx(0.7))
    empty = String(data=classification_json(1, 0, "camera", []))
    assert parse_classification(empty) == (1_000_000_000, "", 0.0)
