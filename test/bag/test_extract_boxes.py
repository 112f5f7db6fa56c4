"""`extract` of regions of interest: one crop per box, from a Detection2DArray topic or a CSV, on
real bags written with rosbags (tl_perception.bag.writer, synthetic road drives)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tl_perception.bag.boxes import BoxSpec, read_box_topic, read_boxes_csv
from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.bag.reader import deserialize, iter_messages, open_bag
from tl_perception.bag.roiplan import RoiOptions
from tl_perception.bag.writer import BagWriter, Det
from tl_perception.cli import main
from tl_perception.crop import Box, CropPolicy, box_rect, crop_rect, crop_roi
from tl_perception.dataset import (
    MANIFEST_FILE,
    SUMMARY_FILE,
    read_crop_policy,
    read_dataset,
    read_manifest,
)
from tl_perception.errors import DatasetError
from tl_perception.images import compressed_to_rgb, message_to_rgb
from tl_perception.stamps import SEC
from tl_perception.synth.writer import IMAGE_TOPIC, DriveSpec, write_synthetic_bag

from support.bagutil import T0, pattern

CAM, BOXES = "/cam", "/boxes"
SIZE = (64, 48)
PERIOD = SEC // 10
TIGHT = CropPolicy(context=0.0, square=False, min_box=4)  # integer box -> rgb[y:y+h, x:x+w]


def det(x: float, y: float, w: float, h: float, *results: tuple[str, float], id: str = "") -> Det:
    return Det(Box.from_xywh(x, y, w, h), tuple(results), id)


def roi_bag(
    path: Path,
    boxes: list[list[Det] | None],
    *,
    box_offset_ns: int = 0,
    image_stamp_offset_ns: int = 0,
    extra: tuple[tuple[int, list[Det]], ...] = (),
    labels: tuple[tuple[int, str], ...] = (),
) -> Path:
    """Frame i at T0 + i/10 s (pattern(i)); its Detection2DArray (None: none) stamped with the
    image's stamp + `box_offset_ns`; `extra` box messages (stamp, detections) on their own;
    `labels` (log time, text) on /label."""
    with BagWriter(path, "mcap") as writer:
        for t_ns, text in labels:
            writer.string("/label", t_ns, text)
        for i, dets in enumerate(boxes):
            t_ns = T0 + i * PERIOD
            stamp = t_ns + image_stamp_offset_ns
            fields = {"height": SIZE[1], "width": SIZE[0], "encoding": "rgb8", "step": SIZE[0] * 3}
            writer.image(CAM, t_ns, {**fields, "data": pattern(i, SIZE).tobytes()}, stamp)
            if dets is not None:
                writer.detections(BOXES, t_ns + 1000, dets, stamp_ns=stamp + box_offset_ns)
        for stamp, dets in extra:
            writer.detections(BOXES, stamp, dets, stamp_ns=stamp)
    return path


def run(bags: list[Path], out: Path, rois: RoiOptions, labels: LabelSpec | None = None, **kw):
    labels = labels or LabelSpec("boxes")
    topic = kw.pop("topic", CAM)
    return extract(ExtractOptions(tuple(bags), topic, out, labels, rois=rois, **kw))


def topic_rois(policy: CropPolicy = TIGHT, **kw) -> RoiOptions:
    tolerance = kw.pop("tolerance_s", None)
    spec = BoxSpec("topic", topic=kw.pop("topic", BOXES), tolerance_s=tolerance)
    return RoiOptions(spec, policy, **kw)


def png(out: Path, row: dict[str, str]) -> np.ndarray:
    return compressed_to_rgb((out / row["path"]).read_bytes())


def moving_boxes(frames: int = 6) -> list[list[Det] | None]:
    """A "stop" box with id "a" moving right (a "yield" second-best) and a static "yield" box
    without id, in every frame."""
    return [
        [
            det(4 + i, 4, 16, 16, ("yield", 0.3), ("stop", 0.9), id="a"),
            det(36, 20, 20, 20, ("yield", 0.8)),
        ]
        for i in range(frames)
    ]


def test_boxes_topic_exact_pairing_crops_every_box_labelled_by_its_best_class(tmp_path):
    boxes = moving_boxes()
    boxes[5] = None  # frame 5 has no box message
    stray = (T0 + 77 * PERIOD, [det(0, 0, 8, 8, ("stop", 1.0))])  # a stamp no image has
    bag = roi_bag(tmp_path / "b", boxes, extra=(stray,))
    out = tmp_path / "out"
    report = run([bag], out, topic_rois())
    assert report.kept == Counter({("stop", "train"): 5, ("yield", "train"): 5})
    assert report.skipped == Counter(unpaired_image=1)
    assert report.messages == Counter(box_messages=6, unpaired_box_messages=1)
    rows = read_manifest(out)
    bag_id = rows[0]["bag"]
    for row in rows:
        i = (int(row["stamp_ns"]) - T0) // PERIOD
        x, y, w, h = (float(row[c]) for c in ("box_x", "box_y", "box_w", "box_h"))
        if row["label"] == "stop":
            assert (x, y, w, h) == (4 + i, 4, 16, 16)
            assert row["track"] == row["sequence"] == f"{bag_id}/id:a"
            assert row["path"] == f"train/stop/{bag_id}_cam_{row['stamp_ns']}_b0.png"
        else:
            assert (x, y, w, h) == (36, 20, 20, 20)
            assert row["track"] == f"{bag_id}/iou:0"  # no id: linked by overlap
        assert (row["width"], row["height"]) == (str(int(w)), str(int(h)))
        expected = pattern(i, SIZE)[int(y) : int(y + h), int(x) : int(x + w)]
        np.testing.assert_array_equal(png(out, row), expected)


def test_approximate_pairing_takes_the_nearest_box_message_once(tmp_path):
    near = (T0 + 4_000_000, [det(0, 0, 30, 30, ("far", 1.0))])  # 4 ms after frame 0
    bag = roi_bag(tmp_path / "b", moving_boxes(3), box_offset_ns=3_000_000, extra=(near,))
    with pytest.raises(DatasetError, match=r"no crop .* 3 unpaired_image") as err:
        run([bag], tmp_path / "exact", topic_rois())
    assert "4 unpaired_box_messages" in str(err.value)
    assert not (tmp_path / "exact").exists()
    report = run([bag], tmp_path / "approx", topic_rois(tolerance_s=0.005))
    assert report.kept == Counter({("stop", "train"): 3, ("yield", "train"): 3})
    assert report.messages == Counter(box_messages=4, unpaired_box_messages=1)
    assert "far" not in {r["label"] for r in read_manifest(tmp_path / "approx")}


def write_csv(path: Path, key: str, times: list[int], extra: str = "") -> Path:
    lines = [f"{key},x,y,w,h,label"]
    for i, t_ns in enumerate(times):
        sec, ns = divmod(t_ns, SEC)
        lines.append(f"{sec}.{ns:09d},{2 + i},3,12,10,stop")
        lines.append(f"{sec}.{ns:09d},40,30,10,12,")  # no label
    return _write(path, "\n".join(lines) + "\n" + extra)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_boxes_by_receive_time_or_by_header_stamp(tmp_path):
    # Header stamps 50 ms before the receive times, so the two columns differ.
    bag = roi_bag(tmp_path / "b", [None] * 4, image_stamp_offset_ns=-50_000_000)
    log = [T0 + i * PERIOD for i in (0, 2, 3)]
    stray = "1600000000.5,1,1,20,20,stop\n"  # no frame has this time
    results = {}
    for key, times in (("time", log), ("stamp", [t - 50_000_000 for t in log])):
        spec = read_boxes_csv(write_csv(tmp_path / f"{key}.csv", key, times, stray))
        out = tmp_path / key
        report = run([bag], out, RoiOptions(spec, TIGHT))
        assert report.kept == Counter({("stop", "train"): 3})
        assert report.skipped == Counter(not_in_boxes_csv=1)
        assert report.boxes_skipped == Counter(no_label=3)
        assert report.messages == Counter(csv_rows=7, unpaired_csv_rows=1)
        rows = read_manifest(out)
        for row, i in zip(sorted(rows, key=lambda r: int(r["stamp_ns"])), (0, 2, 3), strict=True):
            x = int(float(row["box_x"]))
            np.testing.assert_array_equal(png(out, row), pattern(i, SIZE)[3:13, x : x + 12])
        results[key] = [(r["stamp_ns"], r["sha256"]) for r in rows]
    assert results["time"] == results["stamp"]
    # Receive times in a `stamp` column pair with nothing.
    wrong = read_boxes_csv(write_csv(tmp_path / "wrong.csv", "stamp", log))
    with pytest.raises(DatasetError, match="4 not_in_boxes_csv"):
        run([bag], tmp_path / "wrong", RoiOptions(wrong, TIGHT))


def test_cli_refuses_a_malformed_box_csv_in_one_line_writing_nothing(tmp_path, capsys):
    bag = roi_bag(tmp_path / "b", [None] * 2)
    out = tmp_path / "out"
    cases = {
        "x,y,w,h\n": "missing time or stamp",
        "time,x,y,w,h\n1700000000,1,2,3\n": "expected 5 fields",
        "stamp,x,y,w,h\n1700000000,1,2,big,4\n": "w must be a number",
    }
    for text, message in cases.items():
        path = _write(tmp_path / "bad.csv", text)
        argv = ["extract", str(bag), "--topic", CAM, "--boxes-csv", str(path), "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "bad.csv" in err and err.count("\n") == 1
        assert not out.exists()


def test_frame_labels_win_over_class_ids_and_a_box_without_either_is_no_label(tmp_path):
    boxes: list[list[Det] | None] = [
        [det(2, 2, 16, 16, ("stop", 0.9)), det(30, 20, 16, 16)] for _ in range(3)
    ]
    bag = roi_bag(tmp_path / "b", boxes)
    own = run([bag], tmp_path / "own", topic_rois())
    assert own.kept == Counter({("stop", "train"): 3})
    assert own.boxes_skipped == Counter(no_label=3)  # the box without results
    fixed = run([bag], tmp_path / "fixed", topic_rois(), labels=LabelSpec("fixed", name="sign"))
    assert fixed.kept == Counter({("sign", "train"): 6}) and not fixed.boxes_skipped
    ranges = ((0.0, 0.15, "early"),)  # frames 0 and 1; frame 2 has no frame label
    spec = LabelSpec("csv", ranges=ranges)
    csv_labels = run([bag], tmp_path / "csv", topic_rois(), labels=spec)
    assert csv_labels.kept == Counter({("early", "train"): 4})
    assert csv_labels.boxes_skipped == Counter(no_label=2)
    unlabeled = run([bag], tmp_path / "unl", topic_rois(negatives=1), labels=LabelSpec("none"))
    assert unlabeled.kept == Counter({("unlabeled", "train"): 6, ("background", "train"): 3})
    said = ((T0 - 1000, "red"), (T0 + PERIOD + 1, ""))  # "red", then no label from frame 2 on
    topic_bag = roi_bag(tmp_path / "t", boxes, labels=said)
    from_topic = run(
        [topic_bag], tmp_path / "topic", topic_rois(), labels=LabelSpec("topic", topic="/label")
    )
    assert from_topic.kept == Counter({("red", "train"): 4})
    assert from_topic.boxes_skipped == Counter(no_label=2)


def road_bag(tmp_path: Path, frames: int = 40, seed: int = 1) -> Path:
    path = tmp_path / f"road{seed}"
    write_synthetic_bag(path, DriveSpec(kind="road", frames=frames, seed=seed, size=(128, 96)))
    return path


def bag_frames(bag: Path, topic: str) -> dict[int, tuple[np.ndarray, list[Box]]]:
    """header stamp -> (decoded frame, its boxes on `topic`), read back from the bag."""
    with open_bag(bag) as reader:
        images = {}
        for conn, _t, raw in iter_messages(reader, bag, [IMAGE_TOPIC]):
            msg = deserialize(reader, bag, raw, conn.msgtype)
            stamp = msg.header.stamp.sec * SEC + msg.header.stamp.nanosec
            images[stamp] = message_to_rgb(msg)
        boxes = {m.t_ns: [b.box for b in m.boxes] for m in read_box_topic(reader, bag, topic)}
    return {stamp: (rgb, boxes.get(stamp, [])) for stamp, rgb in images.items()}


def test_crops_equal_crop_roi_of_the_decoded_frame_with_the_recorded_policy(tmp_path):
    """The extraction half of the crop-parity test: what extract wrote for an image and a box is
    `crop_roi(frame, box, policy)` with the policy dataset.json records."""
    bag = road_bag(tmp_path, seed=2)
    out = tmp_path / "out"
    policy = CropPolicy(context=0.25, square=True, fill="replicate", min_box=12)
    run([bag], out, topic_rois(policy, topic="/detections"), topic=IMAGE_TOPIC)
    recorded = read_crop_policy(out)
    assert recorded == policy and read_dataset(out).crop_policy == policy
    frames = bag_frames(bag, "/detections")
    rows = [r for r in read_manifest(out) if r["track"]]
    assert len(rows) > 20
    reached_edge = 0
    for row in rows:
        rgb, boxes = frames[int(row["stamp_ns"])]
        xywh = tuple(float(row[c]) for c in ("box_x", "box_y", "box_w", "box_h"))
        (box,) = [b for b in boxes if b.to_xywh() == xywh]  # the message's box itself
        written = png(out, row)
        np.testing.assert_array_equal(written, crop_roi(rgb, box, recorded))
        np.testing.assert_array_equal(written, crop_roi(rgb, Box.from_xywh(*xywh), recorded))
        x0, y0, w, h = crop_rect(box, recorded)
        reached_edge += x0 < 0 or y0 < 0 or x0 + w > rgb.shape[1] or y0 + h > rgb.shape[0]
    assert reached_edge  # the fill is part of what is compared


def test_negatives_overlap_no_box_and_are_labelled_background(tmp_path):
    bag = road_bag(tmp_path)
    out = tmp_path / "out"
    policy = CropPolicy(context=0.1, square=True, min_box=12)
    rois = topic_rois(policy, topic="/detections/truth", negatives=3, background_label="nothing")
    report = run([bag], out, rois, topic=IMAGE_TOPIC)
    rows = read_manifest(out)
    negatives = [r for r in rows if r["label"] == "nothing"]
    assert len(negatives) + report.boxes_skipped["negative_no_room"] == 3 * 40
    assert len(negatives) > 60
    frames = bag_frames(bag, "/detections/truth")
    bag_id = rows[0]["bag"]
    for row in negatives:
        assert row["track"] == "" and row["class_dir"] == "nothing"
        assert row["sequence"].startswith(f"{bag_id}:nothing:")
        rgb, boxes = frames[int(row["stamp_ns"])]
        neg = Box.from_xywh(*(float(row[c]) for c in ("box_x", "box_y", "box_w", "box_h")))
        np.testing.assert_array_equal(png(out, row), crop_roi(rgb, neg, policy))
        for other in boxes:
            assert not _overlap(neg, other, policy)
    assert "background" not in {r["label"] for r in rows}


def _overlap(a: Box, b: Box, policy: CropPolicy) -> bool:
    """Whether the crops (context included) or own pixels of two boxes share a pixel."""
    rects_a = (box_rect(a), crop_rect(a, policy))
    rects_b = (box_rect(b), crop_rect(b, policy))
    return any(
        ra[0] < rb[0] + rb[2]
        and rb[0] < ra[0] + ra[2]
        and ra[1] < rb[1] + rb[3]
        and rb[1] < ra[1] + ra[3]
        for ra in rects_a
        for rb in rects_b
    )


def test_a_track_is_never_in_two_splits(tmp_path):
    bag = road_bag(tmp_path, frames=120, seed=2)
    out = tmp_path / "ids"
    run(
        [bag],
        out,
        topic_rois(topic="/detections/truth", negatives=1),
        topic=IMAGE_TOPIC,
        split=(0.5, 0.25, 0.25),
    )
    _assert_whole(read_manifest(out), "track")
    _assert_whole(read_manifest(out), "sequence")
    # Without ids: four objects one after another, each moving 1 px a frame, linked by overlap.
    boxes: list[list[Det] | None] = [
        [det(2 + i % 5, 2 + 8 * (i // 5), 14, 14, (f"c{i // 10}", 1.0))] for i in range(20)
    ]
    linked = tmp_path / "linked"
    run([roi_bag(tmp_path / "b", boxes)], linked, topic_rois(), split=(0.5, 0.5, 0.0))
    rows = read_manifest(linked)
    assert len({r["track"] for r in rows}) == 4
    assert all(r["track"].split("/")[1].startswith("iou:") for r in rows)
    _assert_whole(rows, "track")
    assert {r["split"] for r in rows} == {"train", "val"}


def _assert_whole(rows: list[dict[str, str]], key: str) -> None:
    splits: dict[str, set[str]] = {}
    for row in rows:
        if row[key]:
            splits.setdefault(row[key], set()).add(row["split"])
    assert splits and all(len(s) == 1 for s in splits.values()), splits
    assert len({next(iter(s)) for s in splits.values()}) >= 2  # tracks do reach other splits


def test_workers_1_and_2_write_identical_datasets(tmp_path):
    bag = road_bag(tmp_path, frames=40, seed=3)
    manifests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rois = topic_rois(CropPolicy(), topic="/detections", negatives=2)
        run([bag], out, rois, topic=IMAGE_TOPIC, workers=workers, dedup=2, split=(0.6, 0.2, 0.2))
        manifests.append((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert manifests[0] == manifests[1]
    assert "background" in manifests[0]


def test_policy_is_recorded_reruns_add_nothing_and_another_policy_is_refused(tmp_path, capsys):
    bag = roi_bag(tmp_path / "b", moving_boxes(4))
    out = tmp_path / "out"
    argv = ["extract", str(bag), "--topic", CAM, "--boxes-topic", BOXES, "--out", str(out)]
    argv += ["--context", "0.2", "--no-square", "--min-box", "8", "--fill", "constant"]
    argv += ["--fill-value", "7", "--negatives", "2", "--workers", "1", "--seed", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped boxes" in printed and "box_messages" in printed
    policy = CropPolicy(context=0.2, square=False, fill="constant", fill_value=7, min_box=8)
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert summary["version"] == 3 and summary["crop_policy"] == policy.to_dict()
    assert summary["options"]["rois"]["negatives"] == 2
    assert read_dataset(out).crop_policy == policy == read_crop_policy(out)
    manifest = (out / MANIFEST_FILE).read_text(encoding="utf-8")
    assert main(argv) == 0  # the same command again: nothing added
    assert "wrote 0 images" in capsys.readouterr().out
    assert (out / MANIFEST_FILE).read_text(encoding="utf-8") == manifest
    other = [a if a != "0.2" else "0.3" for a in argv]
    assert main([*other, "--append"]) == 2
    err = capsys.readouterr().err
    assert "one dataset has one policy" in err and err.count("\n") == 1
    frames_only = ["extract", str(bag), "--topic", CAM, "--label", "x", "--out", str(out)]
    assert main([*frames_only, "--append"]) == 2
    assert "holds crops of boxes" in capsys.readouterr().err
    assert (out / MANIFEST_FILE).read_text(encoding="utf-8") == manifest


def test_whole_frame_datasets_record_no_policy_and_refuse_crops(tmp_path, capsys):
    bag = roi_bag(tmp_path / "b", moving_boxes(2))
    out = tmp_path / "out"
    assert main(["extract", str(bag), "--topic", CAM, "--label", "x", "--out", str(out)]) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert summary["crop_policy"] is None and "rois" not in summary["options"]
    assert read_dataset(out).crop_policy is None
    rows = read_manifest(out)
    assert all(r["box_x"] == "" and r["track"] == "" for r in rows)
    capsys.readouterr()
    argv = ["extract", str(bag), "--topic", CAM, "--boxes-topic", BOXES, "--out", str(out)]
    assert main([*argv, "--append"]) == 2
    assert "holds whole frames" in capsys.readouterr().err
    for bad, message in (
        (["--label", "x", "--negatives", "2"], "--negatives needs --boxes-topic"),
        (["--crop", "0,0,8,8", "--boxes-topic", BOXES], "--crop cuts one fixed region"),
        (["--boxes-topic", BOXES, "--context", "5"], "context must be a number"),
        (["--boxes-topic", BOXES, "--boxes-tolerance", "3"], "--boxes-tolerance 3.0"),
        (["--boxes-topic", CAM], "boxes topics must be vision_msgs/msg/Detection2DArray"),
    ):
        new = tmp_path / "new"
        assert main(["extract", str(bag), "--topic", CAM, "--out", str(new), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not new.exists()


def test_a_version_2_dataset_is_extended_as_version_3(tmp_path, capsys):
    bag = roi_bag(tmp_path / "b", moving_boxes(2))
    out = tmp_path / "out"
    argv = ["extract", str(bag), "--topic", CAM, "--label", "x", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    del summary["crop_policy"]
    (out / SUMMARY_FILE).write_text(json.dumps({**summary, "version": 2}), encoding="utf-8")
    lines = (out / MANIFEST_FILE).read_text(encoding="utf-8").splitlines()
    v2 = [",".join(line.split(",")[:12]) for line in lines]  # without the box columns
    (out / MANIFEST_FILE).write_text("\n".join(v2) + "\n", encoding="utf-8")
    assert len(read_dataset(out).samples) == 2
    assert main(argv) == 0  # the same command: accepted, nothing added, rewritten as version 3
    assert "wrote 0 images" in capsys.readouterr().out
    assert json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))["version"] == 3
    assert (out / MANIFEST_FILE).read_text(encoding="utf-8").splitlines() == lines


def test_a_damaged_crop_policy_is_one_dataset_error(tmp_path):
    bag = roi_bag(tmp_path / "b", moving_boxes(2))
    out = tmp_path / "out"
    run([bag], out, topic_rois())
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    summary["crop_policy"]["context"] = -1
    (out / SUMMARY_FILE).write_text(json.dumps(summary), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"dataset.json: crop_policy: context must be"):
        read_dataset(out)
    with pytest.raises(DatasetError, match="crop_policy"):
        run([bag], out, topic_rois())
