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
from tl_perception.errors import RoiConfigError
from tl_perception.ros.budget import share_budget
from tl_perception.ros.handoff import LatestFrames
from tl_perception.ros.labels import stream_keys
from tl_perception.ros.messages import RoiResult, detections_json
from tl_perception.ros.pairing import StampPairer
from tl_perception.ros.rois import EXACT_POLICY, Roi, fixed_rois, policy_for
from tl_perception.ros.throttle import Throttle

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


@pytest.mark.parametrize(("tolerance_ms", "offset_ms"), [(0, 0), (10, 3)])
def test_pairing_goes_on_after_the_clock_jumps_back(tolerance_ms: int, offset_ms: int) -> None:
    """The issue's repro: ten images at 1000-1009 s wait unpaired (the detector had stopped),
    then the clock restarts at 0 (a looped bag, a reset simulator): every new pair must form,
    in exact and approximate mode alike, and the old images leave counted."""
    pairer: StampPairer[int, int] = StampPairer(tolerance_ns=tolerance_ms * MS, queue_size=10)
    for sec in range(1000, 1010):
        assert pairer.add_image(sec * 10**9, sec) is None
    pairs = []
    for sec in range(300):
        assert pairer.add_image(sec * 10**9, sec) is None
        pairs.append(pairer.add_detections(sec * 10**9 + offset_ms * MS, sec))
    assert all(pair is not None and pair.image == pair.detections for pair in pairs)
    counts = pairer.counts()
    assert (counts.paired, counts.unpaired_images, counts.waiting_images) == (300, 10, 0)
    assert counts.unpaired_detections == counts.waiting_detections == 0


def test_after_a_jump_a_lagging_detector_pairs_again_at_once_and_old_messages_leave() -> None:
    """A bag loop while the detector lags one frame behind the camera: the pair in flight at
    the jump is lost (counted), nothing from before the jump lingers, and the new timeline
    pairs from its first frame on."""
    pairer: StampPairer[str, str] = StampPairer(queue_size=10)
    made: list[str] = []

    def add(side: str, loop: int, frame: int, name: str = "") -> None:
        add_one = pairer.add_image if side == "image" else pairer.add_detections
        pair = add_one(frame * 100 * MS, name or f"{loop}:{frame}")
        made.extend([f"{pair.image}={pair.detections}"] if pair else [])

    frames = [(loop, frame) for loop in (0, 1) for frame in range(10)]
    for i, (loop, frame) in enumerate(frames):
        add("image", loop, frame)
        if i:
            add("detections", *frames[i - 1])  # the detector is one frame late
        if (loop, frame) == (0, 8):
            add("detections", 0, 95, "stray")  # a stamp no image of this drive has
    add("detections", *frames[-1])
    assert made == [f"{loop}:{f}={loop}:{f}" for loop in (0, 1) for f in range(10) if loop or f < 9]
    counts = pairer.counts()
    assert (counts.unpaired_images, counts.unpaired_detections) == (1, 2)  # 0:9; stray, 0:9
    assert counts.waiting_images == counts.waiting_detections == 0


def test_the_frame_period_is_measured_and_a_tolerance_of_half_of_it_is_a_risk() -> None:
    for tolerance_ms, risky in ((40, False), (51, True), (0, False)):
        pairer: StampPairer[int, int] = StampPairer(tolerance_ns=tolerance_ms * MS)
        assert pairer.counts().image_period_ns is None and not pairer.crossing_risk()
        for frame in range(8):
            pairer.add_image(frame * 100 * MS + (frame % 2) * MS, frame)  # 10 Hz with jitter
        assert pairer.counts().image_period_ns in (99 * MS, 101 * MS)
        assert pairer.crossing_risk() is risky, tolerance_ms
    pairer.add_image(0, 0)  # the clock jumps back: the period is measured afresh
    assert pairer.counts().image_period_ns is None


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


def test_the_cycle_budget_is_shared_round_robin_so_a_flood_takes_only_what_is_left() -> None:
    # camera 0 floods (100 boxes), camera 1 has 3, camera 2 none; 8 crops per cycle
    flood, few = [100] * 100, [100] * 3
    shares = share_budget([flood, few, []], max_rois=8, max_pixels=10**9)
    assert [len(s.kept) for s in shares] == [5, 3, 0]
    assert [s.over_max for s in shares] == [95, 0, 0]
    assert shares[1].kept == [0, 1, 2] and shares[0].kept == [0, 1, 2, 3, 4]
    # alone, a camera gets the whole budget
    assert len(share_budget([flood], 8, 10**9)[0].kept) == 8
    # pixels: camera 0's huge crops do not starve camera 1's small ones; a box that does not
    # fit is refused and the next, smaller one of the same camera is still tried
    huge = [600, 600, 600, 50]
    shares = share_budget([huge, [100] * 4], max_rois=100, max_pixels=1000)
    assert (shares[0].kept, shares[0].over_budget) == ([0, 3], 2)
    assert (shares[1].kept, shares[1].over_budget) == ([0, 1, 2], 1)
    assert share_budget([], 8, 10) == []


def test_an_id_repeated_in_one_frame_is_no_stream_key() -> None:
    keys, repeated = stream_keys(["7", "7", "a", "", "b", "7"])
    assert keys == [None, None, "a", None, "b", None] and repeated == {"7"}
    assert stream_keys(["a", "b"]) == (["a", "b"], set())
