"""Several cameras in one node over real DDS: own topics, own results with own headers, one
batched inference for the newest frames of all of them, /diagnostics per camera."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tl_perception.errors import TlPerceptionError

from support.helpers import color_image
from support.node_bundles import patch_frame
from support.node_harness import (
    RAW_LABELS,
    compressed_image,
    detection_array,
    node_in_process,
    probe,
    raw_image,
    wait_for_outputs,
    wait_until,
)


def test_two_cameras_publishing_at_once_get_their_own_results(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "cameras": ["front", "rear"],
        "qos": "reliable",
    }
    with (
        node_in_process(overrides, namespace="/two") as node,
        probe(namespace="/two", cameras=["front", "rear"]) as p,
    ):
        front, rear = p.cameras["front"], p.cameras["rear"]
        p.wait_for_subscriber(front.image_pub)
        p.wait_for_subscriber(rear.image_pub)
        wait_for_outputs(node)
        red = [
            raw_image(color_image("red", seed=i), "rgb8", 100 + i, "front_cam") for i in range(20)
        ]
        blue = [
            raw_image(color_image("blue", seed=i), "bgr8", 100 + i, "rear_cam") for i in range(20)
        ]
        for a, b in zip(red, blue, strict=True):  # both cameras at once, the same stamps
            front.image_pub.publish(a)
            rear.image_pub.publish(b)
            time.sleep(1 / 30)
        wait_until(lambda: front.result_for(119) and rear.result_for(119), 10.0)
        for results, frame_id, colour in (
            (front.results, "front_cam", "red"),
            (rear.results, "rear_cam", "blue"),
        ):
            assert results and all(r["header"]["frame_id"] == frame_id for r in results)
            assert all(r["results"][0]["class_id"] == colour for r in results)
            stamps = [r["header"]["stamp"]["sec"] for r in results]
            assert stamps == sorted(stamps) and set(stamps) <= set(range(100, 120))
        assert p.results == []  # nothing on the default camera's topic
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["processed_frames"] != "0" and d, 5.0
        )
        assert diag["cameras"] == "front, rear" and diag["_level"] == "0"
        for name in ("front", "rear"):  # a status after the last frames: all 20 accounted for

            def done(n: str = name) -> dict[str, str] | None:
                cam = p.latest_camera_diagnostics(n)
                dealt = cam and int(cam["processed_frames"]) + int(cam["dropped_frames"])
                return cam if dealt == 20 else None

            assert wait_until(done, 5.0)["input_topic"] == f"/two/{name}/image"


def test_rois_of_all_cameras_go_through_one_batched_inference(color_bundle: Path) -> None:
    """Two cameras with the same stamps in ROI mode: each pairs with its own detections; with
    max_rate_hz 2 the worker finds both cameras' pairs waiting and classifies their 5 crops in
    one inference (the node's batch_size_max shows it)."""
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "cameras": ["left", "right"],
        "roi_source": "detections",
        "qos": "reliable",
        "max_rate_hz": 2.0,
    }
    frame = patch_frame(
        (120, 160), [("red", 10, 10, 40, 40), ("green", 60, 10, 40, 40), ("blue", 110, 60, 40, 40)]
    )
    left_boxes = [
        ("l0", 30.0, 30.0, 40.0, 40.0),
        ("l1", 80.0, 30.0, 40.0, 40.0),
        ("l2", 130.0, 80.0, 40.0, 40.0),
    ]
    right_boxes = [("r0", 130.0, 80.0, 40.0, 40.0), ("r1", 30.0, 30.0, 40.0, 40.0)]
    with (
        node_in_process(overrides, namespace="/batch") as node,
        probe(namespace="/batch", cameras=["left", "right"]) as p,
    ):
        left, right = p.cameras["left"], p.cameras["right"]
        for pub in (left.image_pub, right.image_pub, left.detections_pub, right.detections_pub):
            p.wait_for_subscriber(pub)
        wait_for_outputs(node)
        left.image_pub.publish(raw_image(frame, "rgb8", 1, "left_cam"))  # the first cycle: alone
        left.detections_pub.publish(detection_array(1, left_boxes, frame_id="left_cam"))
        wait_until(lambda: left.detections_for(1), 10.0)
        for cam, boxes, frame_id in (
            (left, left_boxes, "left_cam"),
            (right, right_boxes, "right_cam"),
        ):
            cam.image_pub.publish(raw_image(frame, "rgb8", 2, frame_id))
            cam.detections_pub.publish(detection_array(2, boxes, frame_id=frame_id))
        got_left = wait_until(lambda: left.detections_for(2), 10.0)
        got_right = wait_until(lambda: right.detections_for(2), 10.0)
        assert got_left["header"]["frame_id"] == "left_cam"
        assert got_right["header"]["frame_id"] == "right_cam"
        assert [d["id"] for d in got_left["detections"]] == ["l0", "l1", "l2"]
        assert [d["id"] for d in got_right["detections"]] == ["r0", "r1"]
        assert [d["results"][0]["class_id"] for d in got_right["detections"]] == ["blue", "red"]
        diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and d["batch_size_max"] == "5" and d, 5.0
        )
        assert diag["roi_source"] == "detections"
        for name in ("left", "right"):
            cam = wait_until(
                lambda n=name: (
                    (d := p.latest_camera_diagnostics(n)) and d["paired_frames"] != "0" and d
                ),
                5.0,
            )
            assert (
                cam["unpaired_detections"] == "0"
                and cam["detections_topic"] == f"/batch/{name}/detections"
            )


def test_a_bad_frame_warns_only_its_own_camera(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "cameras": ["a", "b"],
        "image_transport": "compressed",
        "output_format": "json",
    }
    with (
        node_in_process(overrides, namespace="/bad"),
        probe(namespace="/bad", cameras=["a", "b"], output_format="json") as p,
    ):
        a, b = p.cameras["a"], p.cameras["b"]
        p.wait_for_subscriber(a.compressed_pub)
        p.wait_for_subscriber(b.compressed_pub)
        green = lambda s: compressed_image(color_image("green"), "png", s, "cam_a")  # noqa: E731
        assert a.publish_until_result(green, a.compressed_pub, 1)["header"]["frame_id"] == "cam_a"
        corrupt = compressed_image(color_image("red"), "jpeg", 2, "cam_b")
        corrupt.data = corrupt.data[:40]
        b.compressed_pub.publish(corrupt)
        warned = wait_until(
            lambda: (d := p.latest_camera_diagnostics("b")) and d["_level"] == "1" and d, 10.0
        )
        assert warned["bad_frames"] == "1" and warned["input_topic"] == "/bad/b/image/compressed"
        a_diag = p.latest_camera_diagnostics("a")
        assert a_diag is not None and (a_diag["_level"], a_diag["bad_frames"]) == ("0", "0")
        node_diag = wait_until(
            lambda: (d := p.latest_diagnostics()) and "camera(s) warn: b" in d["_message"] and d,
            5.0,
        )
        assert node_diag["bad_frames"] == "1" and node_diag["_level"] == "1"
        red = lambda s: compressed_image(color_image("red"), "jpeg", s, "cam_b")  # noqa: E731
        assert b.publish_until_result(red, b.compressed_pub, 3)["results"][0]["class_id"] == "red"


@pytest.mark.parametrize("cameras", [["front", "front"], ["front", "/abs"], ["bad name"]])
def test_unusable_camera_names_refuse_start_up(color_bundle: Path, cameras: list[str]) -> None:
    with (
        pytest.raises(TlPerceptionError, match="parameter cameras"),
        node_in_process({"model_path": str(color_bundle), "cameras": cameras}),
    ):
        pass
