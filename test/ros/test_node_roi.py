"""The node in ROI mode over real DDS with real vision_msgs and real tiny bundles.

Pairing images with Detection2DArray by stamp (either order, exact and approximate), unpaired
messages counted, fixed ROIs, ids and boxes preserved, the JSON twin, and crop parity with
`tl-perception extract`. What a cycle does with the boxes (max_rois, background left out or
kept, bad boxes and bad frames counted by reason) is proven without a graph in
test_pipeline.py.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rclpy.parameter import Parameter

from tl_perception.crop import Box, CropPolicy, crop_batch, crop_roi
from tl_perception.images import read_image_file

from support.node_bundles import make_pixel_bundle, patch_frame
from support.node_harness import (
    RAW_LABELS,
    Probe,
    detection_array,
    node_in_process,
    probe,
    raw_image,
    roi_node_and_probe,
    wait_for_outputs,
    wait_until,
)

pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs (make venv builds it)")

SIZE = (120, 160)  # height, width
FRAME = patch_frame(
    SIZE, [("red", 10, 10, 40, 40), ("green", 60, 10, 40, 40), ("blue", 110, 60, 40, 40)]
)
# (id, center x, center y, size x, size y): exactly the patches (fractional centres on purpose)
BOXES = [
    ("r", 30.0, 30.0, 40.0, 40.0),
    ("g", 80.0, 30.0, 40.0, 40.0),
    ("b", 130.0, 80.0, 38.5, 39.5),
]
COLOURS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def roi_node(color_bundle: Path) -> Iterator[tuple[Any, Probe]]:
    """One node with roi_source detections (exact stamps) and its probe; reliable QoS, so a
    single message is delivered once the publisher sees the node."""
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "roi_source": "detections",
        "qos": "reliable",
    }
    with roi_node_and_probe(overrides, "/roi") as (node, p):
        yield node, p


def _image(sec: int, frame: np.ndarray = FRAME, nanosec: int = 1234) -> Any:
    msg = raw_image(frame, "bgr8", sec, frame_id="cam_roi")
    msg.header.stamp.nanosec = nanosec
    return msg


Boxes = list[tuple[str, float, float, float, float]]


def _send_pair(p: Probe, sec: int, boxes: Boxes = BOXES) -> None:
    p.image_pub.publish(_image(sec))
    p.detections_pub.publish(detection_array(sec, boxes, frame_id="cam_roi"))


def _diag(p: Probe, predicate: Any, timeout: float = 5.0) -> dict[str, str]:
    return wait_until(lambda: (d := p.latest_diagnostics()) and predicate(d) and d, timeout)


def _check_answer(p: Probe, sec: int, boxes: Boxes = BOXES, colours: list[str] = COLOURS) -> None:
    """Ids, boxes and header preserved; results best first, the patch's colour on top."""
    body = wait_until(lambda: p.detections_for(sec), 10.0)
    assert body["header"] == {"stamp": {"sec": sec, "nanosec": 1234}, "frame_id": "cam_roi"}
    assert [d["id"] for d in body["detections"]] == [b[0] for b in boxes]
    assert [d["results"][0]["class_id"] for d in body["detections"]] == colours
    msg = p.default.detection_message_for(sec)
    for det, (det_id, cx, cy, sx, sy) in zip(msg.detections, boxes, strict=True):
        assert (det.id, det.bbox.center.position.x, det.bbox.center.position.y) == (det_id, cx, cy)
        assert (det.bbox.size_x, det.bbox.size_y) == (sx, sy)
        assert det.header.stamp == msg.header.stamp and det.header.frame_id == "cam_roi"
        scores = [r.hypothesis.score for r in det.results]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_image_first_then_detections_pair_by_exact_stamp(roi_node: tuple[Any, Probe]) -> None:
    _, p = roi_node
    received = int(p.next_diagnostics()["received_frames"])
    p.image_pub.publish(_image(100))
    p.next_diagnostics(lambda d: int(d["received_frames"]) > received)
    assert p.detections_for(100) is None
    p.detections_pub.publish(detection_array(100, BOXES, frame_id="cam_roi"))
    _check_answer(p, 100)


def test_detections_first_then_image_pair_too(roi_node: tuple[Any, Probe]) -> None:
    _, p = roi_node
    before = int(p.next_diagnostics()["received_detections"])
    p.detections_pub.publish(detection_array(101, BOXES, frame_id="cam_roi"))
    p.next_diagnostics(lambda d: int(d["received_detections"]) > before)
    assert p.detections_for(101) is None
    p.image_pub.publish(_image(101))
    _check_answer(p, 101)


def test_unpaired_messages_are_dropped_counted_and_warned(roi_node: tuple[Any, Probe]) -> None:
    _node, p = roi_node
    base = _diag(p, lambda d: "unpaired_detections" in d)
    for sec in range(200, 205):  # stamps that never meet: the detector's differ by 1 us
        p.image_pub.publish(_image(sec))
        p.detections_pub.publish(detection_array(sec, BOXES, nanosec=2234, frame_id="cam_roi"))
        time.sleep(0.05)  # paced: the node's input queues are keep-last 5
    _send_pair(p, 205)  # a later pair: everything older can no longer pair
    wait_until(lambda: p.detections_for(205), 10.0)
    assert all(p.detections_for(sec) is None for sec in range(200, 205))
    diag = _diag(p, lambda d: int(d["unpaired_detections"]) >= int(base["unpaired_detections"]) + 5)
    assert int(diag["unpaired_images"]) == int(base["unpaired_images"]) + 5
    assert int(diag["unpaired_detections"]) == int(base["unpaired_detections"]) + 5
    warned = [d for d in p.diagnostics if "found no image" in d["_message"]]
    assert warned and warned[-1]["_level"] == "1"
    # The WARN is about the present: a clean period brings the level back to OK.
    count = len(p.diagnostics)
    wait_until(lambda: len(p.diagnostics) > count + 1, 5.0)
    assert p.latest_diagnostics()["_level"] == "0"


def test_approximate_pairing_within_sync_tolerance(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "roi_source": "detections",
        "qos": "reliable",
        "sync_tolerance_s": 0.01,
    }
    with roi_node_and_probe(overrides, "/approx") as (_node, p):
        p.image_pub.publish(_image(10))  # the detector's stamp is 3 ms late: within 10 ms
        p.detections_pub.publish(detection_array(10, BOXES, nanosec=3_001_234, frame_id="cam_roi"))
        _check_answer(p, 10)  # answered with the image's header
        p.detections_pub.publish(detection_array(11, BOXES, nanosec=50_001_234, frame_id="cam_roi"))
        p.image_pub.publish(_image(11))  # 50 ms apart: never paired
        _send_pair(p, 12)
        wait_until(lambda: p.detections_for(12), 10.0)
        assert p.detections_for(11) is None
        diag = _diag(p, lambda d: d["unpaired_detections"] == "1")
        assert (diag["unpaired_images"], diag["paired_frames"]) == ("1", "2")


def test_fixed_rois_with_the_json_twin(color_bundle: Path) -> None:
    overrides = {
        **RAW_LABELS,
        "model_path": str(color_bundle),
        "roi_source": "fixed",
        "rois": [10, 10, 40, 40, 60, 10, 40, 40],
        "output_format": "json",
        "top_k": 2,
        "publish_overlay": True,
    }
    with (
        node_in_process(overrides, namespace="/fixed") as node,
        probe(namespace="/fixed", output_format="json") as p,
    ):
        p.wait_for_subscriber(p.image_pub)
        body = p.default.publish_until_detections(lambda s: p.image_pub.publish(_image(s)), 1)
        assert body["header"] == {"stamp": {"sec": 1, "nanosec": 1234}, "frame_id": "cam_roi"}
        assert [d["id"] for d in body["detections"]] == ["roi0", "roi1"]
        first = body["detections"][0]
        assert set(first) == {"id", "bbox", "results"}
        assert first["bbox"] == {
            "center": {"x": 30.0, "y": 30.0, "theta": 0.0},
            "size_x": 40.0,
            "size_y": 40.0,
        }
        assert first["results"][0]["class_id"] == "red"
        assert len(first["results"]) == 2 and set(first["results"][0]) == {"class_id", "score"}
        assert body["detections"][1]["results"][0]["class_id"] == "green"
        overlay = wait_until(lambda: p.overlays and p.overlays[-1], 5.0)  # boxes drawn on it
        drawn = np.frombuffer(overlay.data, np.uint8).reshape(SIZE[0], SIZE[1], 3)
        assert not np.array_equal(drawn, FRAME) and (overlay.height, overlay.width) == SIZE

        refused = node.set_parameters([Parameter("rois", value=[1.0, 2.0, 3.0])])[0]
        assert not refused.successful and "multiple of 4" in refused.reason
        assert node.set_parameters([Parameter("rois", value=[110, 60, 40, 40])])[0].successful
        body = p.default.publish_until_detections(lambda s: p.image_pub.publish(_image(s)), 2)
        assert [d["results"][0]["class_id"] for d in body["detections"]] == ["blue"]


# ------------------------------------------------------------------ crop parity with extract
PARITY_POLICY = CropPolicy(context=0.25, square=True, fill="reflect", fill_value=0, min_box=4.0)
PARITY_SIZE = (96, 128)
# Fractional boxes; one reaches outside the frame (the fill matters), one is tall (square).
PARITY_BOXES = [
    ("p0", 40.3, 30.7, 20.5, 14.2),
    ("p1", 5.2, 8.9, 18.0, 22.0),
    ("p2", 100.6, 60.1, 9.7, 30.3),
]


def _parity_bag(path: Path, frame: np.ndarray, stamp_ns: int) -> Path:
    from tl_perception.bag.writer import BagWriter, Det
    from tl_perception.images import image_fields

    dets = [
        Det(Box(cx, cy, sx, sy), (("a", 0.9),), det_id) for det_id, cx, cy, sx, sy in PARITY_BOXES
    ]
    with BagWriter(path, "mcap") as writer:
        writer.image("/cam", stamp_ns, image_fields(frame, "rgb8"), stamp_ns)
        writer.detections("/boxes", stamp_ns + 1000, dets, stamp_ns=stamp_ns)
    return path


def test_the_node_classifies_exactly_the_crop_extract_wrote(tmp_path: Path) -> None:
    """THE crop-parity test: extract (the real CLI) cuts boxes from a bag; the node is fed the
    same frame and boxes over DDS; its published scores must be the bundle's scores of the PNGs
    extract wrote, and must differ from those of crops cut one pixel off or with another
    policy (so the comparison can tell crops apart)."""
    from tl_perception.cli import main
    from tl_perception.dataset import read_crop_policy
    from tl_perception.inference import Classifier

    frame = np.random.default_rng(7).integers(0, 256, (*PARITY_SIZE, 3), dtype=np.uint8)
    sec, nanosec = 1_700_000_123, 456_000_000
    bag = _parity_bag(tmp_path / "parity.mcap", frame, sec * 10**9 + nanosec)
    dataset = tmp_path / "dataset"
    args = [
        "extract", str(bag), "--topic", "/cam", "--boxes-topic", "/boxes", "--context", "0.25",
        "--square", "--fill", "reflect", "--min-box", "4", "--out", str(dataset),
        "--workers", "1",
    ]  # fmt: skip
    assert main(args) == 0
    assert read_crop_policy(dataset) == PARITY_POLICY
    with (dataset / "manifest.csv").open(encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["path"])
    assert len(rows) == 3 and all(int(r["stamp_ns"]) == sec * 10**9 + nanosec for r in rows)
    written = {
        r["path"].rsplit("_b", 1)[1][:-4]: read_image_file(dataset / r["path"]) for r in rows
    }
    pngs = [written[str(i)] for i in range(3)]

    # The function the node's pipeline calls, on the node's policy: the same pixels.
    bundle = make_pixel_bundle(tmp_path / "bundle", read_crop_policy(dataset))
    boxes = [Box(cx, cy, sx, sy) for _, cx, cy, sx, sy in PARITY_BOXES]
    node_crops = crop_batch(frame, boxes, PARITY_POLICY).crops
    assert all(np.array_equal(a, b) for a, b in zip(node_crops, pngs, strict=True))

    # Over DDS: what the node published is the bundle's verdict on extract's PNGs.
    classifier = Classifier(bundle)
    expected = classifier.predict_proba(pngs)
    overrides = {
        **RAW_LABELS,
        "model_path": str(bundle),
        "roi_source": "detections",
        "qos": "reliable",
        "top_k": 4,
    }
    with roi_node_and_probe(overrides, "/parity") as (_node, p):
        image = raw_image(frame, "bgr8", sec)
        image.header.stamp.nanosec = nanosec
        p.image_pub.publish(image)
        p.detections_pub.publish(detection_array(sec, PARITY_BOXES, nanosec=nanosec))
        wait_until(lambda: p.detections_for(sec), 10.0)
        msg = p.default.detection_message_for(sec)
    published = np.zeros_like(expected)
    for i, det in enumerate(msg.detections):
        assert det.id == f"p{i}"
        for result in det.results:
            published[i, classifier.class_names.index(result.hypothesis.class_id)] = (
                result.hypothesis.score
            )
    np.testing.assert_allclose(published, expected, atol=1e-6)

    # Teeth: a crop one pixel off, or cut with another policy, scores measurably differently.
    other = CropPolicy(context=0.1, square=True, fill="reflect", min_box=4.0)
    for i, box in enumerate(boxes):
        shifted = Box(box.center_x + 1.0, box.center_y, box.size_x, box.size_y)
        for wrong in (crop_roi(frame, shifted, PARITY_POLICY), crop_roi(frame, box, other)):
            assert np.abs(classifier.predict_proba([wrong])[0] - published[i]).max() > 1e-3


def test_a_bundle_without_crop_policy_crops_boxes_exactly(tmp_path: Path) -> None:
    """No `crop` in bundle.json: each box is cut as is (context 0, not squared)."""
    bundle = make_pixel_bundle(tmp_path / "plain", None)
    frame = np.random.default_rng(3).integers(0, 256, (*PARITY_SIZE, 3), dtype=np.uint8)
    from tl_perception.inference import Classifier

    exact = frame[20:50, 30:40]  # x 30, y 20, w 10, h 30
    expected = Classifier(bundle).predict_proba([exact])[0]
    overrides = {
        **RAW_LABELS,
        "model_path": str(bundle),
        "roi_source": "fixed",
        "rois": [30, 20, 10, 30],
        "top_k": 4,
        "qos": "reliable",
    }
    with node_in_process(overrides, namespace="/plain") as node, probe(namespace="/plain") as p:
        p.wait_for_subscriber(p.image_pub)
        wait_for_outputs(node)
        p.image_pub.publish(raw_image(frame, "rgb8", 5))
        wait_until(lambda: p.detections_for(5), 10.0)
        det = p.default.detection_message_for(5).detections[0]
    scores = {r.hypothesis.class_id: r.hypothesis.score for r in det.results}
    got = [scores[name] for name in ("a", "b", "c", "d")]
    np.testing.assert_allclose(got, expected, atol=1e-6)
