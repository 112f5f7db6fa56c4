"""The ROI mode's ROS-free parts: stamp pairing, the latest-frame board, ROI lists, the JSON
twin of classified_detections."""

from __future__ import annotations

import json
import math
import threading
import time
from types import SimpleNamespace

import pytest

from tl_perception.crop import Box, CropPolicy
from tl_perception.ros.pairing import StampPairer
from tl_perception.ros.results import RoiResult, detections_json
from tl_perception.ros.rois import EXACT_POLICY, Roi, RoiConfigError, fixed_rois, policy_for
from tl_perception.ros.stats import LatestFrames, Throttle

MS = 1_000_000


def test_exact_pairing_in_either_order() -> None:
    pairer: StampPairer[str, str] = StampPairer()
    assert pairer.add_image(10, "img10") is None
    pair = pairer.add_detections(10, "det10")
    assert pair is not None and (pair.stamp_ns, pair.image, pair.detections) == (
        10,
        "img10",
        "det10",
    )
    assert pairer.add_detections(20, "det20") is None
    pair = pairer.add_image(20, "img20")
    assert pair is not None and (pair.image, pair.detections) == ("img20", "det20")
    assert pairer.add_image(30, "img30") is None
    assert pairer.add_detections(31, "det31") is None  # 1 ns apart is not the same stamp
    counts = pairer.counts()
    assert (counts.paired, counts.waiting_images, counts.waiting_detections) == (2, 1, 1)


def test_approximate_pairing_takes_the_nearest_within_tolerance() -> None:
    pairer: StampPairer[str, str] = StampPairer(tolerance_ns=10 * MS)
    pairer.add_detections(100 * MS, "far")
    pairer.add_detections(133 * MS, "near")
    pair = pairer.add_image(131 * MS, "img")
    assert pair is not None and pair.detections == "near" and pair.stamp_ns == 131 * MS
    assert pairer.counts().unpaired_detections == 1  # "far" is older than the pair: dropped
    assert pairer.add_image(200 * MS, "alone") is None  # nothing within 10 ms
    assert pairer.add_detections(211 * MS, "late") is None


def test_a_pair_drops_every_older_message_and_counts_it() -> None:
    """Streams arrive in stamp order, so a message older than a completed pair can never pair
    (message_filters' ExactTime rule); it is counted at once rather than after the queue."""
    pairer: StampPairer[int, int] = StampPairer(queue_size=10)
    for stamp in (1, 2, 3):
        pairer.add_image(stamp, stamp)
    pairer.add_detections(2, 2)  # pairs image 2; image 1 dropped, image 3 keeps waiting
    counts = pairer.counts()
    assert (counts.paired, counts.unpaired_images, counts.waiting_images) == (1, 1, 1)
    assert pairer.add_detections(3, 3) is not None


def test_the_queue_bounds_what_waits_and_counts_what_falls_out() -> None:
    pairer: StampPairer[int, int] = StampPairer(queue_size=3)
    for stamp in range(5):
        pairer.add_detections(stamp, stamp)
    counts = pairer.counts()
    assert (counts.unpaired_detections, counts.waiting_detections) == (2, 3)
    assert pairer.add_image(0, 0) is None  # the oldest went first
    assert pairer.add_image(4, 4) is not None
    pairer.clear()
    assert pairer.counts().waiting_images == pairer.counts().waiting_detections == 0


def test_pairer_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        StampPairer(tolerance_ns=-1)
    with pytest.raises(ValueError, match="queue_size"):
        StampPairer(queue_size=0)


def test_latest_frames_hands_over_the_newest_of_every_camera() -> None:
    board: LatestFrames[str] = LatestFrames(3)
    assert board.put(0, "a1") is False
    assert board.put(0, "a2") is True  # replaced before it was taken: a drop
    board.put(2, "c1")
    assert board.take_all(timeout=0.01) == [(0, "a2"), (2, "c1")]
    assert board.take_all(timeout=0.01) == []
    woke: list[list[tuple[int, str]]] = []
    waiter = threading.Thread(target=lambda: woke.append(board.take_all(timeout=5.0)))
    waiter.start()
    time.sleep(0.05)
    board.put(1, "b1")
    waiter.join(2.0)
    assert woke == [[(1, "b1")]]


def test_throttle_lets_one_through_per_key_and_period() -> None:
    now = [0.0]
    throttle = Throttle(5.0, monotonic=lambda: now[0])
    assert throttle.ready("a") and throttle.ready("b") and not throttle.ready("a")
    now[0] = 5.0
    assert throttle.ready("a")


def test_fixed_rois_parse_and_refuse() -> None:
    rois = fixed_rois([10, 20, 30, 40, 0.5, 1.5, 2.0, 3.0])
    assert [r.id for r in rois] == ["roi0", "roi1"]
    assert rois[0].box == Box(25.0, 40.0, 30.0, 40.0)
    assert fixed_rois([]) == () and fixed_rois(None) == ()
    with pytest.raises(RoiConfigError, match="multiple of 4"):
        fixed_rois([1, 2, 3])
    with pytest.raises(RoiConfigError, match="box 1"):
        fixed_rois([0, 0, 5, 5, 0, 0, 0, 5])
    with pytest.raises(RoiConfigError, match="finite"):
        fixed_rois([math.nan, 0, 5, 5])


def test_policy_for_a_bundle_without_one_cuts_boxes_exactly() -> None:
    policy = CropPolicy(context=0.2)
    assert policy_for(SimpleNamespace(crop_policy=policy)) is policy
    assert policy_for(SimpleNamespace(crop_policy=None)) == EXACT_POLICY
    assert (EXACT_POLICY.context, EXACT_POLICY.square) == (0.0, False)


def test_detections_json_uses_the_message_field_names() -> None:
    roi = Roi("sign_7", Box(12.5, 30.25, 8.0, 9.0), theta=0.1)
    body = json.loads(detections_json(5, 6, "cam", [RoiResult(roi, [("stop", 0.97)])]))
    assert body == {
        "header": {"stamp": {"sec": 5, "nanosec": 6}, "frame_id": "cam"},
        "detections": [
            {
                "id": "sign_7",
                "bbox": {
                    "center": {"x": 12.5, "y": 30.25, "theta": 0.1},
                    "size_x": 8.0,
                    "size_y": 9.0,
                },
                "results": [{"class_id": "stop", "score": 0.97}],
            }
        ],
    }


def _take_in_thread(board: LatestFrames[str], gather_s: float) -> tuple[threading.Thread, list]:
    got: list[list[tuple[int, str]]] = []
    thread = threading.Thread(target=lambda: got.append(board.take_all(2.0, gather_s=gather_s)))
    thread.start()
    return thread, got


def test_latest_frames_waits_briefly_for_cameras_in_step_only() -> None:
    board: LatestFrames[str] = LatestFrames(2)
    board.put(0, "a1")  # period 1: both cameras within a millisecond
    board.put(1, "b1")
    assert len(board.take_all(0.01)) == 2
    board.put(0, "a2")  # period 2: camera 1 is late by 20 ms, within the 100 ms window
    thread, got = _take_in_thread(board, gather_s=0.1)
    time.sleep(0.02)
    board.put(1, "b2")
    thread.join(2.0)
    assert got == [[(0, "a2"), (1, "b2")]]

    board.put(0, "a3")  # camera 1's previous frame came 20+ ms after camera 0's: not in step
    time.sleep(0.05)
    started = time.monotonic()
    assert board.take_all(0.01, gather_s=0.015) == [(0, "a3")]
    assert time.monotonic() - started < 0.01  # no wait at all
