"""The classifier node over real DDS: a real tiny bundle, real publishers, real results."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from tl_perception.images import image_fields

from support.helpers import color_image, make_color_bundle
from support.node_harness import (
    RAW_LABELS,
    Probe,
    compressed_image,
    node_in_process,
    probe,
    raw_image,
    wait_until,
)


@pytest.fixture(scope="module")
def raw_node(color_bundle: Path) -> Iterator[tuple[Any, Probe]]:
    """One node on raw images plus a probe, shared by the read-only tests of this module."""
    with (
        node_in_process({**RAW_LABELS, "model_path": str(color_bundle)}, namespace="/raw") as node,
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
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "image_transport": "compressed"}
    with node_in_process(overrides, namespace="/jpg"), probe(namespace="/jpg") as p:
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
        assert diag["input_topic"] == "/jpg/image/compressed"


def test_run_time_parameters_change_the_output(color_bundle: Path) -> None:
    with (
        node_in_process({**RAW_LABELS, "model_path": str(color_bundle)}, namespace="/rt") as node,
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
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "publish_overlay": True}
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
        node_in_process({**RAW_LABELS, "model_path": str(color_bundle)}, namespace="/hot") as node,
        probe(namespace="/hot") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731

        missing = node.set_parameters([Parameter("model_path", value=str(tmp_path / "nope"))])[0]
        assert not missing.successful and "does not exist" in missing.reason
        assert node.get_parameter("model_path").value == str(color_bundle)

        # Valid metadata, unloadable network: accepted, fails in the background; the old model
        # keeps serving, model_path keeps the request and /diagnostics says it failed.
        corrupt = _broken_network(color_bundle, tmp_path / "corrupt")
        assert node.set_parameters([Parameter("model_path", value=str(corrupt))])[0].successful
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["model_reload"].startswith("failed") and d,
            30.0,
        )
        assert diag["_level"] == "1" and str(corrupt) in diag["model_reload"]
        assert diag["model"] == str(color_bundle)
        assert node.get_parameter("serving_model_path").value == str(color_bundle)
        assert node.get_parameter("model_path").value == str(corrupt)
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
        node_in_process({**RAW_LABELS, "model_path": str(color_bundle)}, namespace="/be"),
        probe(namespace="/be", reliability=ReliabilityPolicy.BEST_EFFORT) as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        time.sleep(1.2)  # let the auto re-match run with the publisher known
        result = p.publish_until_result(
            lambda s: raw_image(color_image("green"), "rgb8", s), p.image_pub, 1
        )
        assert result["results"][0]["class_id"] == "green"


def test_reliable_qos_against_a_best_effort_camera_is_reported(color_bundle: Path) -> None:
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "qos": "reliable"}
    with (
        node_in_process(overrides, namespace="/rel"),
        probe(namespace="/rel", reliability=ReliabilityPolicy.BEST_EFFORT) as p,
    ):
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["incompatible_qos_events"] != "0" and d,
            15.0,
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


def test_unstamped_frames_do_not_ruin_the_latency_statistic(color_bundle: Path) -> None:
    """Stamp 0 (a driver that never sets it) would add ~1.7e12 ms to stamp-to-publish latency."""
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json"}
    with (
        node_in_process(overrides, namespace="/st0"),
        probe(namespace="/st0", output_format="json") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        clock = p.node.get_clock()
        sent_stamped: list[tuple[int, int]] = []
        for i in range(10):
            frame = raw_image(color_image("red", seed=i), "rgb8", 0)
            if i % 2:
                frame.header.stamp = clock.now().to_msg()
                sent_stamped.append((frame.header.stamp.sec, frame.header.stamp.nanosec))
            else:
                frame.header.stamp.sec = frame.header.stamp.nanosec = 0
            p.image_pub.publish(frame)
            time.sleep(0.2)  # one at a time: latest-frame-wins drops none
        wait_until(lambda: len(p.results) >= 10, 10.0)
        stamps = [(r["header"]["stamp"]["sec"], r["header"]["stamp"]["nanosec"]) for r in p.results]
        assert stamps.count((0, 0)) == 5 and sorted(s for s in stamps if s != (0, 0)) == sorted(
            sent_stamped
        )
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["processed_frames"] == "10" and d, 5.0
        )
        assert 0.0 <= float(diag["stamp_to_publish_latency_p95_ms"]) < 5_000.0, diag
        assert diag["unstamped_frames"] == "5"


def test_incompatible_qos_warns_only_while_the_publisher_is_there(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "qos": "reliable",
        "output_format": "json",
    }
    with (
        node_in_process(overrides, namespace="/qw"),
        probe(
            namespace="/qw", output_format="json", reliability=ReliabilityPolicy.BEST_EFFORT
        ) as p,
    ):
        warned = wait_until(
            lambda: (
                (d := p.latest_diagnostics())
                and d["incompatible_qos_events"] != "0"
                and d["_level"] == "1"
                and d
            ),
            15.0,
        )
        p.node.destroy_publisher(p.image_pub)
        diag = wait_until(lambda: (d := p.latest_diagnostics()) and d["_level"] == "0" and d, 5.0)
        assert diag["incompatible_qos_events"] != "0"  # the history is still counted
        assert (warned["incompatible_qos_publishers"], diag["incompatible_qos_publishers"]) == (
            "1",
            "0",
        )


def test_incompatible_qos_warning_ends_once_qos_auto_rematched(color_bundle: Path) -> None:
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json"}
    with (
        node_in_process(overrides, namespace="/qa"),
        probe(namespace="/qa", output_format="json") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        p.diagnostics_where(lambda d: d["input_qos"].startswith("reliable"))
        camera = p.node.create_publisher(
            Image, "/qa/image", QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        )
        diag = p.diagnostics_where(lambda d: d["input_qos"].startswith("best_effort"))
        if diag["incompatible_qos_events"] == "0":
            pytest.skip("the re-match won the race with DDS's incompatible-QoS event this time")
        count = len(p.diagnostics)
        diag = wait_until(lambda: len(p.diagnostics) > count and p.latest_diagnostics(), 5.0)
        assert diag["_level"] == "0", diag
        result = p.publish_until_result(
            lambda s: raw_image(color_image("green"), "rgb8", s), camera, 1
        )
        assert result["results"][0]["class_id"] == "green"


# ------------------------------------------------------------------ hot reload races (public API)
def _param_client(p: Probe, node_name: str) -> Any:
    """A client of the node's parameter services, as `ros2 param` uses them (real DDS)."""
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(p.node, node_name)
    assert client.wait_for_services(timeout_sec=15.0), f"no parameter services on {node_name}"
    return client


def _set_remote(client: Any, **values: Any) -> list[Any]:
    future = client.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    wait_until(future.done, 10.0)
    return list(future.result().results)


def _get_remote(client: Any, *names: str) -> list[Any]:
    from rclpy.parameter import parameter_value_to_python

    future = client.get_parameters(list(names))
    wait_until(future.done, 10.0)
    return [parameter_value_to_python(v) for v in future.result().values]


def _broken_network(color_bundle: Path, dst: Path) -> Path:
    """Valid metadata (accepted at once) but a model.keras that fails to load in the background."""
    shutil.copytree(color_bundle, dst, ignore=shutil.ignore_patterns("model.tflite*"))
    with __import__("zipfile").ZipFile(dst / "model.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
    return dst


def test_a_failing_reload_never_overwrites_a_later_request(
    color_bundle: Path, reordered_bundle: Path, tmp_path: Path
) -> None:
    corrupt = _broken_network(color_bundle, tmp_path / "corrupt")
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json"}
    with (
        node_in_process(overrides, namespace="/race"),
        probe(namespace="/race", output_format="json") as p,
    ):
        params = _param_client(p, "/race/classifier")
        assert _set_remote(params, model_path=str(corrupt))[0].successful
        assert _set_remote(params, model_path=str(reordered_bundle))[0].successful
        wait_until(lambda: _get_remote(params, "class_names") == [["blue", "green", "red"]], 30.0)
        time.sleep(2.5)  # the failed reload used to write the old path back after 2 s
        assert _get_remote(params, "model_path") == [str(reordered_bundle)]
        assert _get_remote(params, "serving_model_path") == [str(reordered_bundle)]
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["model"] == str(reordered_bundle) and d,
            5.0,
        )
        assert (diag["model_reload"], diag["_level"]) == ("idle", "0")
        refused = _set_remote(params, class_names=["x"], serving_model_path=str(color_bundle))
        assert [r.successful for r in refused] == [False, False]
        assert all("set by the node" in r.reason for r in refused), refused
        assert _get_remote(params, "class_names") == [["blue", "green", "red"]]


def test_the_last_model_path_request_wins(
    color_bundle: Path, reordered_bundle: Path, tmp_path: Path
) -> None:
    slow = tmp_path / "slow"  # no model.tflite: loading it converts (hundreds of ms)
    shutil.copytree(reordered_bundle, slow, ignore=shutil.ignore_patterns("model.tflite*"))
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json"}
    with (
        node_in_process(overrides, namespace="/last"),
        probe(namespace="/last", output_format="json") as p,
    ):
        params = _param_client(p, "/last/classifier")
        assert _set_remote(params, model_path=str(slow))[0].successful
        assert _set_remote(params, model_path=str(color_bundle))[0].successful  # changed my mind
        wait_until((slow / "model.tflite").is_file, 30.0)  # the slow load got that far
        time.sleep(1.5)
        assert _get_remote(params, "class_names", "model_path") == [
            ["red", "green", "blue"],
            str(color_bundle),
        ]
        assert _get_remote(params, "serving_model_path") == [str(color_bundle)]
        red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
        assert p.publish_until_result(red, p.image_pub, 1)["results"][0]["class_id"] == "red"
        diag = wait_until(lambda: (d := p.latest_diagnostics()) and d, 5.0)
        assert diag["model"] == str(color_bundle) and diag["model_reload"] == "idle"


def test_hot_reload_of_every_broken_bundle_keeps_the_old_model_serving(
    color_bundle: Path, tmp_path: Path
) -> None:
    """Each bundle_breakers case, set as `ros2 param set` would: refused at once (one line) or
    accepted and failed in the background; the serving model never changes and keeps answering.
    """
    from support.bundle_breakers import broken_bundles, make_lambda_bundle, make_other_shapes

    marker = tmp_path / "foreign_code_ran"
    broken = broken_bundles(color_bundle, tmp_path / "cases", marker, make_other_shapes(tmp_path))
    broken["lambda_layer"], lambda_marker = make_lambda_bundle(tmp_path / "lambda")
    overrides = {**RAW_LABELS, "model_path": str(color_bundle), "output_format": "json"}
    with (
        node_in_process(overrides, namespace="/fuzzhot"),
        probe(namespace="/fuzzhot", output_format="json") as p,
    ):
        params = _param_client(p, "/fuzzhot/classifier")
        outcomes: dict[str, str] = {}
        for i, (name, path) in enumerate(broken.items()):
            result = _set_remote(params, model_path=str(path))[0]
            if not result.successful:
                assert "\n" not in result.reason and result.reason, (name, result.reason)
                outcomes[name] = "refused"
            else:  # the node says so at once on /rosout (and in /diagnostics, 1 Hz)
                failed = f"hot reload of {str(path)!r} failed: "
                lines = wait_until(lambda f=failed: p.log_lines(f), 30.0)
                assert len(lines) == 1 and "\n" not in lines[0], (name, lines)
                assert lines[0].endswith(f"; still serving {str(color_bundle)!r}"), lines
                outcomes[name] = "failed"
            assert _get_remote(params, "serving_model_path") == [str(color_bundle)], name
            if i % 8 == 0:
                red = lambda s: raw_image(color_image("red"), "rgb8", s)  # noqa: E731
                answer = p.publish_until_result(red, p.image_pub, 100 + i)
                assert answer["results"][0]["class_id"] == "red", name
        assert set(outcomes.values()) == {"refused", "failed"}, outcomes
        assert _get_remote(params, "class_names") == [["red", "green", "blue"]]
        green = lambda s: raw_image(color_image("green"), "rgb8", s)  # noqa: E731
        assert p.publish_until_result(green, p.image_pub, 999)["results"][0]["class_id"] == "green"
        last = next(reversed([path for name, path in broken.items() if outcomes[name] == "failed"]))
        diag = p.diagnostics_where(lambda d: d["model_reload"].startswith(f"failed {last}: "))
        assert diag["model"] == str(color_bundle) and diag["_level"] == "1"
        assert "\n" not in diag["model_reload"]
    assert not marker.exists() and not lambda_marker.exists(), "a broken bundle ran code"
