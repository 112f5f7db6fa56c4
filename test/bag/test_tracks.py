"""The overlap linker (bag/tracks.py), background boxes (bag/negatives.py) and box pairing and
CSV parsing (bag/boxes.py): units, no bags."""

from __future__ import annotations

import math

import pytest

from tl_perception.bag.boxes import pair, read_boxes_csv
from tl_perception.bag.negatives import negative_boxes, negative_seed
from tl_perception.bag.tracks import LINK_IOU, LinkFrame, iou, link_tracks
from tl_perception.crop import Box, CropPolicy, box_rect, crop_rect
from tl_perception.errors import DatasetError

SEC = 1_000_000_000


def box(x: float, y: float, w: float = 10, h: float = 10) -> Box:
    return Box.from_xywh(x, y, w, h)


def frame(i: int, *boxes: tuple[str, Box], period_ns: int = SEC // 10) -> LinkFrame:
    return LinkFrame(i * period_ns, tuple(boxes))


def test_iou_of_boxes():
    assert iou(box(0, 0), box(0, 0)) == 1.0
    assert iou(box(0, 0), box(5, 0)) == pytest.approx(50 / 150)
    assert iou(box(0, 0), box(10, 0)) == 0.0  # touching edges share no pixel
    assert iou(box(0, 0), Box(math.nan, 0, 10, 10)) == 0.0
    assert iou(box(0, 0), Box(5, 5, 0, 10)) == 0.0


def test_moving_boxes_of_one_label_are_one_track_and_labels_never_mix():
    frames = [frame(i, ("stop", box(2 * i, 0)), ("yield", box(2 * i, 0))) for i in range(5)]
    assert link_tracks(frames) == [[0, 1]] * 5


def test_a_jump_below_the_threshold_starts_a_new_track():
    shift = 10 * (1 - LINK_IOU) + 1  # IoU just under the threshold
    frames = [frame(0, ("a", box(0, 0))), frame(1, ("a", box(shift, 0)))]
    assert link_tracks(frames) == [[0], [1]]


def test_a_box_missed_for_a_frame_continues_its_track_but_not_after_the_gap():
    frames = [frame(0, ("a", box(0, 0))), frame(1), frame(2, ("a", box(1, 0)))]
    assert link_tracks(frames) == [[0], [], [0]]
    late = [frame(0, ("a", box(0, 0))), frame(25, ("a", box(0, 0)))]  # 2.5 s later
    assert link_tracks(late) == [[0], [1]]


def test_greedy_matching_takes_the_best_overlap_first():
    # Two tracks side by side; the next frame's boxes each overlap both, one much better.
    frames = [
        frame(0, ("a", box(0, 0)), ("a", box(12, 0))),
        frame(1, ("a", box(11, 0)), ("a", box(1, 0))),
    ]
    assert link_tracks(frames) == [[0, 1], [1, 0]]


def test_a_track_takes_one_box_per_frame():
    frames = [frame(0, ("a", box(0, 0))), frame(1, ("a", box(0, 0)), ("a", box(1, 0)))]
    assert link_tracks(frames) == [[0], [0, 1]]


def test_negatives_keep_clear_of_every_box_and_its_context():
    policy = CropPolicy(context=0.25, square=True, min_box=4)
    boxes = [box(10, 10, 12, 8), box(40, 20, 10, 14), Box(math.nan, 1, 2, 3)]
    found = negative_boxes((60, 80), boxes, policy, 6, negative_seed(0, "bag", 3))
    assert 1 <= len(found) <= 6
    taken = [r for b in boxes[:2] for r in (box_rect(b), crop_rect(b, policy))]
    for neg in found:
        x0, y0, w, h = crop_rect(neg, policy)
        assert min(x0, y0) >= 0 and x0 + w <= 80 and y0 + h <= 60  # no fill in negatives
        assert (neg.size_x, neg.size_y) in [(12, 8), (10, 14)]  # sized like the frame's boxes
        for ox, oy, ow, oh in taken:
            assert x0 + w <= ox or ox + ow <= x0 or y0 + h <= oy or oy + oh <= y0
        taken.append((x0, y0, w, h))
    again = negative_boxes((60, 80), boxes, policy, 6, negative_seed(0, "bag", 3))
    assert again == found  # deterministic per frame


def test_negatives_of_a_frame_without_boxes_use_the_default_sizes_and_may_run_out():
    policy = CropPolicy(min_box=4)
    found = negative_boxes((48, 64), [], policy, 3, 7)
    assert len(found) == 3 and all(2.4 <= b.size_x == b.size_y <= 12 for b in found)
    full = [box(0, 0, 64, 48)]  # one box covering the frame: no room anywhere
    assert negative_boxes((48, 64), full, policy, 3, 7) == []


def test_pairing_is_one_to_one_nearest_first():
    assert pair([0, 100, 200], [0, 200, 300], 0) == {0: 0, 2: 1}
    assert pair([0, 100], [3, 4, 98], 5) == {0: 0, 1: 2}  # 4 is unpaired: 3 was nearer
    assert pair([0, 2], [1], 5) == {0: 0}  # equal distance: the earlier image
    assert pair([5, 5], [5], 0) == {0: 0}


def test_box_csv_times_are_exact_nanoseconds_and_rows_group_by_time(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text(
        "\ufeffTime, x, y, w, h, label\n"
        "1700000000.123456789,1,2,3,4,stop\n"
        "1700000000.123456789,5,6,7,8,\n"
        "1700000000.2,0,0,10,10,yield\n"
    )
    spec = read_boxes_csv(path)
    assert spec.key == "time" and spec.tolerance_ns == 1000
    assert [m.t_ns for m in spec.messages] == [1_700_000_000_123_456_789, 1_700_000_000_200_000_000]
    first = spec.messages[0].boxes
    assert [b.label for b in first] == ["stop", None]
    assert first[1].box == Box.from_xywh(5, 6, 7, 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("x,y,w,h\n1,2,3,4\n", "missing time or stamp"),
        ("time,stamp,x,y,w,h\n", "both time and stamp"),
        ("time,x,y,w\n", "missing h"),
        ("time,x,y,w,h,score\n", "unknown column 'score'"),
        ("time,x,y,w,h,x\n", "given twice"),
        ("time,x,y,w,h\n1,2,3,4\n", "line 2: expected 5 fields"),
        ("time,x,y,w,h\nsoon,2,3,4,5\n", "time must be seconds"),
        ("time,x,y,w,h\n-1,2,3,4,5\n", "time must be seconds"),
        ("time,x,y,w,h\n1,2,3,0,5\n", "w and h must be > 0"),
        ("time,x,y,w,h\n1,nan,3,4,5\n", "x must be finite"),
        ("time,x,y,w,h\n1,2,three,4,5\n", "y must be a number"),
        ("time,x,y,w,h\n", "has no rows"),
        ('time,x,y,w,h\n1,2,3,4,"5\n', "malformed CSV"),
    ],
)
def test_malformed_box_csv_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "b.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as err:
        read_boxes_csv(path)
    assert "b.csv" in str(err.value) and "\n" not in str(err.value)


def test_box_csv_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"time,x,y,w,h\n\xff\xfe\n")
    with pytest.raises(DatasetError, match="cannot read box CSV"):
        read_boxes_csv(path)


def test_best_class_reads_ros2_and_ros1_vision_msgs_layouts():
    from types import SimpleNamespace as Ns

    from tl_perception.bag.boxes import best_class, source_box

    ros2 = [Ns(hypothesis=Ns(class_id="a", score=0.2)), Ns(hypothesis=Ns(class_id="b", score=0.7))]
    assert best_class(ros2) == "b"
    assert best_class([Ns(id=3, score=0.5)]) == "3"  # ROS 1: ObjectHypothesisWithPose.id
    assert best_class([Ns(hypothesis=Ns(class_id=" ", score=1.0))]) is None
    assert best_class([Ns(hypothesis=Ns(class_id="x", score=math.nan))]) == "x"
    assert best_class([]) is None
    ros1_box = Ns(center=Ns(x=10.0, y=20.0, theta=0.0), size_x=4.0, size_y=6.0)
    found = source_box(Ns(bbox=ros1_box, results=[]))  # no `id` field in ROS 1
    assert found.box == Box(10.0, 20.0, 4.0, 6.0) and found.label is None and found.track_id == ""
