"""The classifier node's ROS-free logic and message builders, without a running graph."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from tl_perception.errors import NodeConfigError
from tl_perception.ros import qos as qos_rules
from tl_perception.ros.config import PARAMETERS
from tl_perception.ros.handoff import LatestFrameSlot
from tl_perception.ros.messages import classification_json, resolve_output_format
from tl_perception.ros.overlay import draw_overlay
from tl_perception.ros.params import descriptor
from tl_perception.ros.stats import FrameStats, percentile

from support import REPO
from support.helpers import color_image


def test_classification_json_mirrors_vision_msgs_field_names() -> None:
    body = json.loads(classification_json(12, 34, "cam", [("stop", 0.97)]))
    assert body == {
        "header": {"stamp": {"sec": 12, "nanosec": 34}, "frame_id": "cam"},
        "results": [{"class_id": "stop", "score": 0.97}],
    }


def test_percentile_interpolates_and_is_nan_without_samples() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))


def test_latest_frame_slot_keeps_newest_and_reports_replacements() -> None:
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.take(timeout=0.01) == 2
    assert slot.take(timeout=0.01) is None


def test_frame_stats_rates_and_percentiles_over_a_period() -> None:
    now = [100.0]
    stats = FrameStats(monotonic=lambda: now[0])
    for dropped in (False, True, False, False):
        stats.count_received(dropped_one=dropped)
    for ms in (1.0, 2.0, 3.0):
        stats.count_processed(inference_ms=ms, latency_ms=ms * 10)
    stats.count_bad()
    now[0] = 102.0
    snap = stats.snapshot()
    assert (snap.received, snap.dropped, snap.processed, snap.bad) == (4, 1, 3, 1)
    assert snap.input_rate_hz == pytest.approx(2.0)
    assert snap.processed_rate_hz == pytest.approx(1.5)
    assert snap.inference_ms_p50 == 2.0
    assert snap.latency_ms_p50 == 20.0
    now[0] = 103.0
    assert stats.snapshot().bad_in_period == 0


def _offer(reliability: ReliabilityPolicy, durability: DurabilityPolicy) -> QoSProfile:
    return QoSProfile(depth=1, reliability=reliability, durability=durability)


def test_auto_qos_is_reliable_only_when_every_publisher_is() -> None:
    reliable = _offer(ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)
    best_effort = _offer(ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE)
    assert qos_rules.match_publishers([reliable]).reliability == ReliabilityPolicy.RELIABLE
    mixed = qos_rules.match_publishers([reliable, best_effort])
    assert mixed.reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos_rules.match_publishers([]) is None


def test_auto_qos_is_transient_local_only_when_every_publisher_is() -> None:
    latched = _offer(ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL)
    volatile = _offer(ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE)
    assert qos_rules.match_publishers([latched]).durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert qos_rules.match_publishers([latched, volatile]).durability == DurabilityPolicy.VOLATILE


def test_qos_presets_and_unknown_mode() -> None:
    assert qos_rules.preset_profile("auto").reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos_rules.preset_profile("reliable").reliability == ReliabilityPolicy.RELIABLE
    assert qos_rules.describe(qos_rules.preset_profile("reliable")).startswith("reliable")
    with pytest.raises(ValueError, match="unknown qos mode 'fast'"):
        qos_rules.preset_profile("fast")


def test_output_format_auto_falls_back_to_json_and_explicit_vision_msgs_names_the_package() -> None:
    try:
        import vision_msgs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vision_msgs is installed here; the fallback cannot be observed")
    assert resolve_output_format("auto") == "json"
    assert resolve_output_format("json") == "json"
    with pytest.raises(NodeConfigError, match="vision_msgs package"):
        resolve_output_format("vision_msgs")
    with pytest.raises(NodeConfigError, match="'xml' is not one of"):
        resolve_output_format("xml")


def test_overlay_draws_the_label_on_a_copy() -> None:
    rgb = color_image("red", (120, 160))
    out = draw_overlay(rgb, [("red", 0.97)])
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not np.array_equal(out, rgb)
    assert np.array_equal(rgb, color_image("red", (120, 160)))


def test_parameter_descriptors_carry_ranges_and_read_only_flags() -> None:
    top_k = descriptor("top_k", PARAMETERS["top_k"])
    assert (top_k.integer_range[0].from_value, top_k.read_only) == (1, False)
    threshold = descriptor("score_threshold", PARAMETERS["score_threshold"])
    assert threshold.floating_point_range[0].to_value == 1.0
    assert descriptor("backend", PARAMETERS["backend"]).read_only is True
    assert "litert" in descriptor("backend", PARAMETERS["backend"]).description


def test_unstamped_frames_are_counted_and_left_out_of_the_latency_statistic() -> None:
    stats = FrameStats()
    stats.count_processed(inference_ms=1.0, latency_ms=12.0)
    stats.count_processed(inference_ms=2.0, latency_ms=None)  # stamp 0: no capture time
    stats.count_processed(inference_ms=3.0, latency_ms=14.0)
    snap = stats.snapshot()
    assert (snap.processed, snap.unstamped) == (3, 1)
    assert (snap.latency_ms_p50, snap.inference_ms_p50) == (13.0, 2.0)


def test_is_unstamped_means_a_zero_stamp_and_ns_round_trips() -> None:
    from builtin_interfaces.msg import Time

    from tl_perception.stamps import is_unstamped, ns_to_sec_nanosec, stamp_to_ns

    assert is_unstamped(Time(sec=0, nanosec=0))
    assert not is_unstamped(Time(sec=0, nanosec=1)) and not is_unstamped(Time(sec=5))
    ns = 1_700_000_000_250_000_001
    assert stamp_to_ns(Time(sec=1_700_000_000, nanosec=250_000_001)) == ns
    assert ns_to_sec_nanosec(ns) == (1_700_000_000, 250_000_001)


def test_ros_code_uses_only_public_rclpy_node_api() -> None:
    """No reads or writes of rclpy.Node internals (they differ between distributions).

    The private names are those a real Node and a real LifecycleNode have (class and instance;
    the classifier is a LifecycleNode), so a subclass attribute that merely shares the
    underscore style (e.g. `self._worker`) is not flagged.
    """
    import ast

    import rclpy
    from rclpy.context import Context
    from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin
    from rclpy.node import Node

    context = Context()
    rclpy.init(context=context)
    try:
        node = Node("api_probe", context=context)
        managed = LifecycleNode("api_probe_managed", context=context)
        names = (
            set(vars(Node)) | set(vars(node)) | set(vars(LifecycleNodeMixin)) | set(vars(managed))
        )
        node.destroy_node()
        managed.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    private = {n for n in names if n.startswith("_") and not n.startswith("__")}
    assert "_parameters" in private  # what the old node wrote
    assert "_state_machine" in private  # where rclpy keeps the lifecycle state
    offenders = []
    for path in sorted((REPO / "tl_perception" / "ros").glob("*.py")):
        for node_ in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node_, ast.Attribute)
                and isinstance(node_.value, ast.Name)
                and node_.value.id == "self"
                and node_.attr in private
            ):
                offenders.append(f"{path.name}:{node_.lineno} self.{node_.attr}")
    assert not offenders, offenders


def test_node_name_and_backend_list_have_one_source() -> None:
    """The launch file, the node and the parameter table read these from one definition."""
    import ast

    from tl_perception.inference import BACKENDS
    from tl_perception.ros import names
    from tl_perception.ros.diagnostics import build_diagnostics  # noqa: F401 (imports cleanly)

    launch = ast.parse((REPO / "launch" / "classify.launch.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(launch)
        if isinstance(node, ast.ImportFrom) and node.module == "tl_perception.ros.names"
        for alias in node.names
    }
    assigned = {
        target.id
        for node in ast.walk(launch)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert "NODE_NAME" in imported and "NODE_NAME" not in assigned
    assert names.diagnostics_status_name("/front/classifier") == (
        "/front/classifier: image classification"
    )
    assert PARAMETERS["backend"].choices is BACKENDS


def test_a_worker_whose_cycle_outlives_stop_is_resumed_never_doubled() -> None:
    """stop() gives up waiting for a cycle that does not end; the next start() must not run a
    second classification thread beside it: the first goes on instead."""
    import logging

    from tl_perception.ros.config import NodeConfig
    from tl_perception.ros.handoff import LatestFrames
    from tl_perception.ros.pipeline import Pipeline, PipelineContext, Worker

    gate, inside = threading.Event(), threading.Event()

    def config() -> NodeConfig:  # the worker's first read of the config takes long
        inside.set()
        gate.wait(10.0)
        return NodeConfig()

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "classify" and t not in before]

    before = set(threading.enumerate())
    context = PipelineContext(lambda: None, config, lambda: 0, logging.getLogger("worker"))
    worker = Worker(Pipeline([], LatestFrames(1), context))
    worker.start()
    assert inside.wait(10.0)
    assert not worker.stop(timeout=0.05)  # still in its cycle
    worker.start()  # an activate right after
    assert len(workers()) == 1
    inside.clear()
    gate.set()
    assert inside.wait(10.0)  # the same thread came round again: it was resumed
    assert len(workers()) == 1 and worker.is_alive()
    assert worker.stop(timeout=5.0) and not worker.is_alive()
    assert workers() == []


def test_roi_and_pairing_counters_have_their_documented_diagnostics_keys() -> None:
    """The counters test_pipeline.py proves per camera are published under these names."""
    from tl_perception.ros.diagnostics import CameraReport, PairingPeriod, camera_values
    from tl_perception.ros.pairing import PairCounts
    from tl_perception.ros.stats import FrameStats, RoiSnapshot

    rois = RoiSnapshot(
        boxes=9,
        classified=5,
        published=4,
        background=1,
        over_max=3,
        rejected={"invalid": 1, "over_budget": 2},
        duplicate_ids=2,
        frame_id_mismatches=2,
        frame_id_refused=1,
    )
    report = CameraReport(
        "a",
        FrameStats().snapshot(),
        "/a/image",
        "reliable",
        0,
        rois=rois,
        pairing=PairingPeriod(PairCounts(paired=7)),
    )
    values = camera_values(report)
    assert {k: values[k] for k in values if k.startswith(("rois_", "frame_id_"))} == {
        "rois_received": "9",
        "rois_classified": "5",
        "rois_published": "4",
        "rois_background": "1",
        "rois_over_max": "3",
        "rois_duplicate_ids": "2",
        "rois_rejected_invalid": "1",
        "rois_rejected_over_budget": "2",
        "frame_id_mismatches": "2",
        "frame_id_refused": "1",
    }
    assert values["paired_frames"] == "7"
