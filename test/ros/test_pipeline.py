"""The node's pipeline without a graph (pipeline_harness.py): what a cycle classifies, refuses,
counts, smooths and publishes, with real cameras fed through their own callbacks, real messages
and the real tiny colour model. Each rule is proven exactly and fast here; the DDS tests
(test_node*.py) prove the node end to end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tl_perception.loop.capture import CaptureConfig
from tl_perception.ros.hard_frames import HardFrames
from tl_perception.ros.labels import UNKNOWN_LABEL

from support.helpers import color_image
from support.node_bundles import PATCHES, ROI_SIZE, Det, box_of, patch_frame
from support.node_harness import RAW_LABELS, detection_array, raw_image
from support.pipeline_harness import Logs, RecordingCamera, Rig, rig

pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs (make venv builds it)")

BOXES = [box_of("r", "r"), box_of("b", "b"), box_of("g", "g")]


def feed(camera: RecordingCamera, sec: int, boxes: list[Det], **frame_ids: str) -> None:
    """An image of the patches and its detections, through the camera's callbacks."""
    image_frame, det_frame = frame_ids.get("image", "camera"), frame_ids.get("dets", "camera")
    frame = patch_frame(ROI_SIZE, list(PATCHES.values()), seed=sec)
    camera.on_image(raw_image(frame, "rgb8", sec, frame_id=image_frame))
    camera.on_detections(detection_array(sec, boxes, frame_id=det_frame))


def classes(body: dict[str, Any] | None) -> list[str]:
    assert body is not None, "nothing published for this frame"
    return [d["results"][0]["class_id"] for d in body["detections"]]


def ids(body: dict[str, Any] | None) -> list[str]:
    assert body is not None, "nothing published for this frame"
    return [d["id"] for d in body["detections"]]


@pytest.fixture(scope="module")
def classifier(color_bundle: Path) -> Any:
    from tl_perception.inference import Classifier

    return Classifier(color_bundle)


def roi_rig(classifier: Any, **values: Any) -> Rig:
    return rig(classifier, **{**RAW_LABELS, "roi_source": "detections", **values})


# ------------------------------------------------------------------ the cycle's budget
def test_a_camera_flooding_boxes_takes_only_what_the_others_leave(classifier: Any) -> None:
    """Two cameras in one cycle, max_rois 8: camera a sends 40 boxes, camera b 3. b gets all
    of its 3, a the 5 left (and 35 counted over max); alone, a gets all 8; one inference."""
    r = roi_rig(classifier, cameras=["a", "b"], max_rois=8)
    a, b = r.cameras
    flood = [(f"f{i}", 8.0 + 16 * (i % 10), 8.0 + 16 * (i // 10), 12.0, 12.0) for i in range(40)]
    feed(a, 10, flood)
    assert r.cycle() == 1 and len(ids(a.body_for(10))) == 8  # the budget is all camera a's
    feed(a, 11, flood)
    feed(b, 11, BOXES)
    assert r.cycle() == 2  # both cameras' frames in one cycle
    assert classes(b.body_for(11)) == ["red", "blue", "green"]
    assert len(ids(a.body_for(11))) == 5
    assert r.pipeline.batches.snapshot().size_max == 8  # one inference for both
    assert a.rois is not None and b.rois is not None
    seen_a, seen_b = a.rois.snapshot(), b.rois.snapshot()
    assert (seen_a.over_max, seen_a.classified, seen_a.boxes) == (32 + 35, 13, 80)
    assert (seen_b.over_max, seen_b.classified) == (0, 3)


def test_max_rois_classifies_the_first_ones_and_counts_the_rest(classifier: Any) -> None:
    r = roi_rig(classifier, max_rois=2)
    feed(r.camera, 300, BOXES)
    r.cycle()
    assert ids(r.camera.body_for(300)) == ["r", "b"] and classes(r.camera.body_for(300)) == [
        "red",
        "blue",
    ]
    assert r.camera.rois is not None and r.camera.rois.snapshot().over_max == 1
    assert r.logs.having("3 ROIs in one frame, classified 2")
    r.set(max_rois=32)  # a run-time set applies to the next cycle
    feed(r.camera, 301, BOXES)
    r.cycle()
    assert ids(r.camera.body_for(301)) == ["r", "b", "g"]


def test_a_cycle_s_pixel_budget_refuses_huge_crops_and_counts_them(classifier: Any) -> None:
    """A box whose crop does not fit in max_roi_pixels is refused (rois_rejected_over_budget);
    the others of the frame are classified."""
    r = roi_rig(classifier, max_roi_pixels=5000)
    boxes = [("huge", 80.0, 60.0, 150.0, 110.0), box_of("r", "r"), box_of("b", "b")]
    feed(r.camera, 300, boxes)  # huge: 16500 px; each patch's box is 1600
    r.cycle()
    assert ids(r.camera.body_for(300)) == ["r", "b"]
    assert classes(r.camera.body_for(300)) == ["red", "blue"]
    assert r.camera.rois is not None
    assert r.camera.rois.snapshot().rejected["over_budget"] == 1
    assert r.logs.having("max_roi_pixels (5000) not classified")
    r.set(max_roi_pixels=16 * 1024 * 1024)
    feed(r.camera, 301, boxes)
    r.cycle()
    assert ids(r.camera.body_for(301)) == ["huge", "r", "b"]


# ------------------------------------------------------------------ what is published
def test_background_is_left_out_unless_publish_background(classifier: Any) -> None:
    r = roi_rig(classifier, background_label="blue")
    feed(r.camera, 400, BOXES)
    r.cycle()
    assert ids(r.camera.body_for(400)) == ["r", "g"]  # blue is "no object here"
    assert r.camera.rois is not None
    counts = r.camera.rois.snapshot()
    assert (counts.background, counts.published, counts.classified) == (1, 2, 3)
    r.set(publish_background=True)
    feed(r.camera, 401, BOXES)
    r.cycle()
    assert classes(r.camera.body_for(401)) == ["red", "blue", "green"]


def test_bad_boxes_and_bad_frames_are_counted_and_the_pipeline_goes_on(classifier: Any) -> None:
    r = roi_rig(classifier)
    bad: list[Det] = [
        ("nan", np.nan, 30.0, 20.0, 20.0),
        ("zero", 30.0, 30.0, 0.0, 20.0),
        ("negative", 30.0, 30.0, -5.0, 20.0),
        ("outside", 500.0, 30.0, 20.0, 20.0),
        ("tiny", 30.0, 30.0, 0.5, 0.5),
        ("huge", 30.0, 30.0, 1e9, 1e9),
        ("inf", np.inf, 30.0, 20.0, 20.0),
    ]
    feed(r.camera, 500, [*bad, BOXES[0]])
    r.cycle()
    assert ids(r.camera.body_for(500)) == ["r"] and classes(r.camera.body_for(500)) == ["red"]
    assert r.camera.rois is not None
    rejected = r.camera.rois.snapshot().rejected
    assert [rejected[k] for k in ("invalid", "too_small", "outside", "too_large")] == [4, 1, 1, 1]

    broken = raw_image(patch_frame(ROI_SIZE, [], seed=1), "rgb8", 501)  # good detections with it
    broken.data = broken.data[:100]
    r.camera.on_image(broken)
    r.camera.on_detections(detection_array(501, BOXES))
    r.cycle()
    assert r.camera.body_for(501) is None and r.camera.stats.snapshot().bad == 1
    assert r.logs.having("bad frame on image (stamp 501.000001234)")
    feed(r.camera, 502, [])  # no boxes: an empty array, still answered
    r.cycle()
    assert ids(r.camera.body_for(502)) == []
    feed(r.camera, 503, BOXES)
    r.cycle()
    assert classes(r.camera.body_for(503)) == ["red", "blue", "green"]
    assert r.pipeline.errors == 0


def test_fixed_rois_are_cut_from_every_frame(classifier: Any) -> None:
    r = rig(classifier, **RAW_LABELS, roi_source="fixed", rois=[10, 10, 40, 40, 60, 10, 40, 40])
    r.camera.on_image(raw_image(patch_frame(ROI_SIZE, list(PATCHES.values())), "rgb8", 1))
    r.cycle()
    body = r.camera.body_for(1)
    assert ids(body) == ["roi0", "roi1"] and classes(body) == ["red", "blue"]
    assert body is not None and body["detections"][0]["bbox"]["center"] == {
        "x": 30.0,
        "y": 30.0,
        "theta": 0.0,
    }


def test_detections_of_another_frame_id_are_refused_before_they_reach_the_worker(
    classifier: Any,
) -> None:
    """The camera's callback refuses the pair, so it can never replace a good pair waiting for
    the worker; counted either way, warned once."""
    r = roi_rig(classifier)
    feed(r.camera, 10, BOXES)  # a good pair waits for the worker ...
    feed(r.camera, 11, BOXES, image="rear", dets="front")  # ... and a miswired one comes
    r.cycle()
    assert classes(r.camera.body_for(10)) == ["red", "blue", "green"]
    assert r.camera.body_for(11) is None
    r.set(frame_id_must_match=False)
    feed(r.camera, 12, BOXES, image="rear", dets="front")
    r.cycle()
    assert classes(r.camera.body_for(12)) == ["red", "blue", "green"]
    assert r.camera.rois is not None
    counts = r.camera.rois.snapshot()
    assert (counts.frame_id_mismatches, counts.frame_id_refused) == (2, 1)
    assert len(r.logs.having("detections with frame_id 'front'")) == 1
    assert r.camera.stats.snapshot().dropped == 0


# ------------------------------------------------------------------ labels through the cycle
def test_an_id_repeated_in_one_frame_never_mixes_two_signs(classifier: Any) -> None:
    """Two boxes with id "7" (a red and a blue sign) in five frames, with the node's default
    smoothing: each is published with its own class, unsmoothed and counted; the unique id "u"
    is still smoothed; warned once."""
    r = rig(classifier, roi_source="detections")
    boxes = [box_of("7", "r"), box_of("7", "b"), box_of("u", "g")]
    for sec in range(100, 105):
        feed(r.camera, sec, boxes)
        r.cycle()
        assert classes(r.camera.body_for(sec)) == ["red", "blue", "green"]
    assert r.camera.rois is not None and r.camera.rois.snapshot().duplicate_ids == 10
    assert r.pipeline.report().values["smoothed_tracks"] == "1"  # "u" only
    assert len(r.logs.having("repeated within one frame")) == 1


def test_a_blip_is_held_and_a_new_model_forgets_every_stream(
    classifier: Any, color_bundle: Path
) -> None:
    """switch_frames 2 holds a one-frame blip; a hot swap (another classifier object) forgets
    the state, so a green right after reds is published at once; a settings change does too."""
    from tl_perception.inference import Classifier

    r = rig(classifier, smoothing="none", switch_frames=2)
    colours = ["red"] * 3 + ["green"] + ["red"] * 2

    def show(colour: str, sec: int) -> str:  # frames 1 s of stamp apart: the timeout is 1 s
        r.camera.on_image(raw_image(color_image(colour, seed=sec), "rgb8", sec))
        r.cycle()
        body = r.camera.body_for(sec)
        assert body is not None
        return str(body["results"][0]["class_id"])

    assert [show(c, 100 + i) for i, c in enumerate(colours)] == ["red"] * 6
    assert show("green", 106) == "red"  # the first frame of a run is held too
    r.classifier = Classifier(color_bundle)  # what a hot reload swaps in
    assert show("red", 107) == "red" and show("green", 108) == "red"
    r.classifier = Classifier(color_bundle)
    assert show("green", 109) == "green"  # nothing held across the swap
    assert show("red", 110) == "green"  # held again: a new stream under the new model
    r.set(switch_frames=1)
    assert show("red", 111) == "red"  # new settings: forgotten, and no hysteresis


def test_unknown_is_judged_on_the_frame_s_own_score(classifier: Any) -> None:
    """With smoothing on (the defaults), an unsure frame after sure ones is unknown although
    the smoothed score is high."""
    unsure = np.concatenate(
        [color_image("red", (48, 32), 3), color_image("green", (48, 32), 4)], axis=1
    )
    own = float(classifier.predict_proba([unsure])[0].max())
    threshold = min(own + 0.05, 0.99)
    r = rig(classifier, unknown_threshold=threshold)
    for sec in range(3):
        r.camera.on_image(raw_image(color_image("red", seed=5), "rgb8", 10 + sec))
        r.cycle()
    r.camera.on_image(raw_image(unsure, "rgb8", 13))
    r.cycle()
    body = r.camera.body_for(13)
    assert body is not None and body["results"][0]["class_id"] == UNKNOWN_LABEL
    assert body["results"][0]["score"] == pytest.approx(1.0 - own, abs=2e-6)
    assert body["results"][1]["class_id"] == "red" and body["results"][1]["score"] > threshold
    assert r.pipeline.report().values["unknown_published"] == "1"


# ------------------------------------------------------------------ capture offers
def test_hard_frames_are_offered_with_the_model_s_own_score(
    classifier: Any, tmp_path: Path
) -> None:
    """Only frames whose own best score is under capture_below are captured, whole (full
    frames), with the stamp and encoding of their message and the model's top class."""
    from tl_perception.dataset import read_manifest

    capture = HardFrames(CaptureConfig(tmp_path / "cap", 0.9), False, Logs())
    r = Rig(classifier, capture=capture)
    capture.open(lambda: classifier.bundle)
    unsure = np.concatenate(
        [color_image("red", (48, 32), 3), color_image("green", (48, 32), 4)], axis=1
    )
    try:
        for sec, frame in ((1, color_image("red", seed=1)), (2, unsure)):
            r.camera.on_image(raw_image(frame, "bgr8", sec))
            r.cycle()
    finally:
        capture.close()
    rows = read_manifest(tmp_path / "cap")
    assert [(row["stamp_ns"], row["encoding"], row["predicted"]) for row in rows] == [
        (str(2 * 10**9 + 1234), "bgr8", "red")
    ]
