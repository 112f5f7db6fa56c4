"""The classifier node over real DDS: a real tiny bundle, real publishers, real results."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import color_image, make_color_bundle
from node_harness import (
    Probe,
    compressed_image,
    node_in_process,
    probe,
    raw_image,
    wait_until,
)
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from tl_perception.images import image_fields


@pytest.fixture(scope="module")
def raw_node(color_bundle: Path) -> Iterator[tuple[Any, Probe]]:
    """One node on raw images plus a probe, shared by the read-only tests of this module."""
    with (
        node_in_process({"model_path": str(color_bundle)}, namespace="/raw") as node,
        probe(namespace="/raw") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        yield node, p


@pytest.mark.parametrize(
    ("encoding", "color"),
    [
        ("rgb8", "red"),
        ("bgr8", "blue"),
        ("rgba8", "green"),
        ("bgra8", "red"),
        ("bayer_rggb8", "blue"),
        ("yuv422", "green"),
        ("yuyv", "red"),
    ],
)
def test_raw_frames_are_classified_with_the_image_header(
    raw_node: tuple[Any, Probe], encoding: str, color: str
) -> None:
    _, p = raw_node
    sec = 1000 + len(p.results)
    rgb = color_image(color, (48, 64), seed=3)
    result = p.publish_until_result(
        lambda s: raw_image(rgb, encoding, s, frame_id=f"cam_{encoding}"), p.image_pub, sec
    )
    assert result["header"] == {
        "stamp": {"sec": sec, "nanosec": 1234},
        "frame_id": f"cam_{encoding}",
    }
    assert result["results"][0]["class_id"] == color
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_mono_frames_are_classified_too(raw_node: tuple[Any, Probe]) -> None:
    _, p = raw_node
    for encoding, sec in (("mono8", 2001), ("mono16", 2002)):
        result = p.publish_until_result(
            lambda s, e=encoding: raw_image(color_image("green"), e, s), p.image_pub, sec
        )
        assert len(result["results"]) == 3


def test_bad_frames_are_counted_and_the_next_good_frame_is_classified(
    raw_node: tuple[Any, Probe],
) -> None:
    _, p = raw_node
    before = int(wait_until(p.latest_diagnostics, 5.0)["bad_frames"])
    good = raw_image(color_image("red"), "rgb8", 3000)
    wrong_step = raw_image(color_image("red"), "rgb8", 3001)
    wrong_step.step = 10
    truncated = raw_image(color_image("red"), "rgb8", 3002)
    truncated.data = truncated.data[:100]
    unknown = raw_image(color_image("red"), "rgb8", 3003)
    unknown.encoding = "rgb42"
    empty = raw_image(color_image("red"), "rgb8", 3004)
    empty.height = empty.width = empty.step = 0
    empty.data = []
    for bad in (wrong_step, truncated, unknown, empty):
        p.image_pub.publish(bad)
        time.sleep(0.1)  # one at a time, so latest-frame-wins drops none of them
    result = p.publish_until_result(lambda s: good, p.image_pub, 3000)
    assert result["results"][0]["class_id"] == "red"
    assert all(p.result_for(sec) is None for sec in range(3001, 3005))
    diag = wait_until(
        lambda: (d := p.latest_diagnostics()) and int(d["bad_frames"]) >= before + 4 and d, 5.0
    )
    assert int(diag["bad_frames"]) == before + 4


def test_a_flood_of_frames_ends_with_the_last_frame_classified(
    raw_node: tuple[Any, Probe],
) -> None:
    _, p = raw_node
    frames = [raw_image(color_image("blue", seed=i), "bgr8", 5000 + i) for i in range(200)]
    start = len(p.results)
    for frame in frames:
        p.image_pub.publish(frame)
    wait_until(lambda: p.result_for(5199), 10.0)
    time.sleep(0.5)
    stamps = [r["header"]["stamp"]["sec"] for r in p.results[start:]]
    assert stamps[-1] == 5199
    assert stamps == sorted(stamps), "results must never go back in time"
    count = len(p.diagnostics)
    diag = wait_until(lambda: len(p.diagnostics) > count + 1 and p.latest_diagnostics(), 5.0)
    assert int(diag["processed_frames"]) + int(diag["dropped_frames"]) + int(
        diag["bad_frames"]
    ) == int(diag["received_frames"])


def test_diagnostics_report_rates_latency_backend_and_model(
    raw_node: tuple[Any, Probe], color_bundle: Path
) -> None:
    _, p = raw_node
    p.publish_until_result(lambda s: raw_image(color_image("red"), "rgb8", s), p.image_pub, 6000)
    diag = wait_until(
        lambda: (d := p.latest_diagnostics()) and d["inference_latency_p50_ms"] != "n/a" and d, 5.0
    )
    assert diag["backend"] in ("litert", "keras")
    assert diag["model"] == str(color_bundle)
    assert float(diag["inference_latency_p95_ms"]) >= float(diag["inference_latency_p50_ms"]) > 0
    assert "stamp_to_publish_latency_p50_ms" in diag and "input_rate_hz" in diag


def test_compressed_jpeg_and_png_are_classified(color_bundle: Path) -> None:
    overrides = {"model_path": str(color_bundle), "image_transport": "compressed"}
    with node_in_process(overrides, namespace="/jpg") as node, probe(namespace="/jpg") as p:
        assert node.input_topic == "/jpg/image/compressed"
        p.wait_for_subscriber(p.compressed_pub)
        for fmt, color, sec in (("jpeg", "green", 10), ("png", "blue", 11)):
            rgb = color_image(color, (48, 64), seed=5)
            result = p.publish_until_result(
                lambda s, f=fmt, c=rgb: compressed_image(c, f, s), p.compressed_pub, sec
            )
            assert result["results"][0]["class_id"] == color
            assert result["header"]["frame_id"] == "camera"
        corrupt = compressed_image(color_image("red"), "jpeg", 12)
        corrupt.data = corrupt.data[:40]
        p.compressed_pub.publish(corrupt)
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and int(d["bad_frames"]) >= 1 and d, 5.0
        )
        assert int(diag["bad_frames"]) == 1 and diag["_level"] == "1"


def test_run_time_parameters_change_the_output(color_bundle: Path) -> None:
    with (
        node_in_process({"model_path": str(color_bundle)}, namespace="/rt") as node,
        probe(namespace="/rt") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
        assert len(p.publish_until_result(red, p.image_pub, 1)["results"]) == 3
        assert node.set_parameters([Parameter("top_k", value=1)])[0].successful
        assert len(p.publish_until_result(red, p.image_pub, 2)["results"]) == 1
        node.set_parameters([Parameter("top_k", value=3), Parameter("score_threshold", value=0.5)])
        assert [r["class_id"] for r in p.publish_until_result(red, p.image_pub, 3)["results"]] == [
            "red"
        ]
        assert not node.set_parameters([Parameter("top_k", value=0)])[0].successful
        assert not node.set_parameters([Parameter("backend", value="keras")])[0].successful
        assert not node.set_parameters([Parameter("class_names", value=["x"])])[0].successful

        node.set_parameters([Parameter("max_rate_hz", value=2.0)])
        first = len(p.results)
        deadline = time.monotonic() + 2.0
        sec = 100
        while time.monotonic() < deadline:
            p.image_pub.publish(red(sec))
            sec += 1
            time.sleep(0.02)
        time.sleep(0.3)
        limited = len(p.results) - first
        assert 2 <= limited <= 7, f"{limited} results in 2 s at max_rate_hz 2 from {sec - 100}"


def test_overlay_is_published_when_enabled_and_subscribed(color_bundle: Path) -> None:
    overrides = {"model_path": str(color_bundle), "publish_overlay": True}
    with node_in_process(overrides, namespace="/ov"), probe(namespace="/ov") as p:
        p.wait_for_subscriber(p.image_pub)
        p.publish_until_result(
            lambda s: raw_image(color_image("red"), "bgr8", s), p.image_pub, 7, timeout=15.0
        )
        wait_until(lambda: p.overlays, 5.0)
        overlay = p.overlays[-1]
        assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", 48, 64)
        assert overlay.header.frame_id == "camera"


@pytest.fixture(scope="module")
def reordered_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_color_bundle(
        tmp_path_factory.mktemp("bundles") / "reordered", classes=("blue", "green", "red"), seed=1
    )


def test_hot_reload_swaps_to_a_good_bundle_and_refuses_broken_ones(
    color_bundle: Path, reordered_bundle: Path, tmp_path: Path
) -> None:
    with (
        node_in_process({"model_path": str(color_bundle)}, namespace="/hot") as node,
        probe(namespace="/hot") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731

        missing = node.set_parameters([Parameter("model_path", value=str(tmp_path / "nope"))])[0]
        assert not missing.successful and "does not exist" in missing.reason
        assert node.get_parameter("model_path").value == str(color_bundle)

        # Valid metadata, unloadable network: accepted, fails in the background, rolled back.
        corrupt = tmp_path / "corrupt"
        shutil.copytree(color_bundle, corrupt)
        for name in ("model.tflite", "model.tflite.json"):
            (corrupt / name).unlink(missing_ok=True)
        with __import__("zipfile").ZipFile(corrupt / "model.keras", "w") as archive:
            archive.writestr("config.json", "{not json")
        assert node.set_parameters([Parameter("model_path", value=str(corrupt))])[0].successful
        wait_until(lambda: node.get_parameter("model_path").value == str(color_bundle), 30.0)
        assert p.publish_until_result(red, p.image_pub, 1)["results"][0]["class_id"] == "red"

        swap = node.set_parameters([Parameter("model_path", value=str(reordered_bundle))])[0]
        assert swap.successful
        wait_until(
            lambda: node.get_parameter("class_names").value == ["blue", "green", "red"], 30.0
        )
        assert p.publish_until_result(red, p.image_pub, 2)["results"][0]["class_id"] == "red"
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["model"] == str(reordered_bundle) and d,
            5.0,
        )
        assert diag["model"] == str(reordered_bundle)


def test_qos_auto_hears_a_best_effort_camera(color_bundle: Path) -> None:
    with (
        node_in_process({"model_path": str(color_bundle)}, namespace="/be"),
        probe(namespace="/be", reliability=ReliabilityPolicy.BEST_EFFORT) as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        time.sleep(1.2)  # let the auto re-match run with the publisher known
        result = p.publish_until_result(
            lambda s: raw_image(color_image("green"), "rgb8", s), p.image_pub, 1
        )
        assert result["results"][0]["class_id"] == "green"


def test_reliable_qos_against_a_best_effort_camera_is_reported(color_bundle: Path) -> None:
    overrides = {"model_path": str(color_bundle), "qos": "reliable"}
    with (
        node_in_process(overrides, namespace="/rel") as node,
        probe(namespace="/rel", reliability=ReliabilityPolicy.BEST_EFFORT) as p,
    ):
        wait_until(lambda: node._incompatible_qos_events > 0, 10.0)
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["incompatible_qos_events"] != "0" and d,
            5.0,
        )
        assert diag["_level"] == "1"


def test_large_vga_frame_is_classified(raw_node: tuple[Any, Probe]) -> None:
    _, p = raw_node
    fields = image_fields(color_image("blue", (480, 640)), "bgr8")
    assert fields["step"] * 480 == 921_600
    result = p.publish_until_result(
        lambda s: raw_image(color_image("blue", (480, 640)), "bgr8", s), p.image_pub, 8000
    )
    assert result["results"][0]["class_id"] == "blue"
