"""`synth` writes real, reproducible bags whose label topic describes exactly the frames that show
an object (read back with rosbags and with our own extractor); road drives carry ground-truth
boxes that match the rendered pixels and a simulated detector's noisy boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from tl_perception.cli import main
from tl_perception.crop import Box
from tl_perception.errors import TlPerceptionError
from tl_perception.images import message_to_rgb
from tl_perception.msgdefs import VISION_MSGS
from tl_perception.synth.detector import DetectorNoise, SimulatedDetector
from tl_perception.synth.drive import plan_drive
from tl_perception.synth.road import (
    ROAD_CLASSES,
    TruthObject,
    plan_road,
    render_road_frame,
    road_frames,
)
from tl_perception.synth.signs import SIGN_CLASSES, draw_sign
from tl_perception.synth.writer import (
    COMPRESSED_TOPIC,
    DETECTIONS_TOPIC,
    DETECTOR_LATENCY_NS,
    IMAGE_TOPIC,
    LABEL_LEAD_NS,
    LABEL_TOPIC,
    TRUTH_TOPIC,
    DriveSpec,
    SynthSummary,
    write_synthetic_bag,
)

from support import REPO


def read_back(path: Path) -> dict[str, list[tuple[int, object]]]:
    """topic -> [(log time, deserialised message)] in log-time order."""
    out: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns, reader.deserialize(raw, conn.msgtype)))
    return out


def test_mcap_bag_has_camera_and_label_topics_with_labels_exactly_on_object_runs(
    tmp_path: Path,
) -> None:
    summary = write_synthetic_bag(tmp_path / "drive", DriveSpec(frames=60, seed=3, size=(96, 72)))
    assert (tmp_path / "drive" / "metadata.yaml").is_file()
    assert list((tmp_path / "drive").glob("*.mcap"))
    topics = read_back(tmp_path / "drive")
    assert set(topics) == {IMAGE_TOPIC, LABEL_TOPIC}

    images = topics[IMAGE_TOPIC]
    assert len(images) == 60
    for t_ns, msg in images:
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t_ns
        assert msg.header.frame_id == "camera"
        assert msg.encoding == "bgr8"
        assert message_to_rgb(msg).shape == (72, 96, 3)
    periods = np.diff([t for t, _ in images])
    assert set(periods.tolist()) == {100_000_000}  # 10 Hz

    # One label 1 ms before each frame with an object; none for empty road.
    frame_labels = {t - LABEL_LEAD_NS: None for t, _ in images}
    for t_ns, msg in topics[LABEL_TOPIC]:
        assert t_ns in frame_labels, "label not aligned to a frame"
        frame_labels[t_ns] = msg.data
    expected = [None] * 60
    for run in summary.runs:
        expected[run.start : run.start + run.length] = [run.label] * run.length
    assert list(frame_labels.values()) == expected
    # A drive alternates empty road and objects, each object in view for a run of frames.
    assert summary.runs[0].label is None
    assert all(r.length >= 2 for r in summary.runs[:-1])
    labelled = [r for r in summary.runs if r.label is not None]
    assert len(labelled) >= 3 and all(r.label in SIGN_CLASSES for r in labelled)
    assert summary.labelled_frames == sum(v is not None for v in expected)


def test_same_seed_gives_identical_drive_and_another_seed_a_different_one(tmp_path: Path) -> None:
    def contents(path: Path) -> list[tuple[str, int, bytes]]:
        return [
            (topic, t, bytes(msg.data) if topic == IMAGE_TOPIC else msg.data.encode())
            for topic, msgs in read_back(path).items()
            for t, msg in msgs
        ]

    write_synthetic_bag(tmp_path / "a", DriveSpec(frames=40, seed=7, size=(64, 48)))
    write_synthetic_bag(tmp_path / "b", DriveSpec(frames=40, seed=7, size=(64, 48)))
    write_synthetic_bag(tmp_path / "c", DriveSpec(frames=40, seed=8, size=(64, 48)))
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a") != contents(tmp_path / "c")


@pytest.mark.parametrize(
    ("storage", "name", "compressed", "suffix"),
    [("sqlite3", "drive", True, "*.db3"), ("ros1", "drive.bag", False, None)],
)
def test_other_storages_and_compressed_images_are_readable(
    tmp_path: Path, storage: str, name: str, compressed: bool, suffix: str | None
) -> None:
    spec = DriveSpec(
        kind="vehicles", frames=30, size=(64, 64), storage=storage, compressed=compressed
    )
    summary = write_synthetic_bag(tmp_path / name, spec)
    if suffix:
        assert list((tmp_path / name).glob(suffix))
    topics = read_back(tmp_path / name)
    camera = COMPRESSED_TOPIC if compressed else IMAGE_TOPIC
    assert set(topics) == {camera, LABEL_TOPIC}
    assert len(topics[camera]) == 30
    _t, first = topics[camera][0]
    assert message_to_rgb(first).shape == (64, 64, 3)
    if compressed:
        assert first.format == "jpeg"
    assert {m.data for _t, m in topics[LABEL_TOPIC]} <= {"vehicle", "non_vehicle"}
    assert len(topics[LABEL_TOPIC]) == summary.labelled_frames


def test_classes_option_restricts_the_drive_and_every_class_gets_runs() -> None:
    runs = plan_drive(("stop", "yield", "no_entry"), 400, seed=0)
    counts = {c: sum(1 for r in runs if r.label == c) for c in ("stop", "yield", "no_entry")}
    assert {r.label for r in runs} == {None, "stop", "yield", "no_entry"}
    assert max(counts.values()) - min(counts.values()) <= 1  # shuffled rounds keep it balanced
    assert sum(r.length for r in runs) == 400


def test_sign_templates_are_distinct_and_keep_left_mirrors_keep_right() -> None:
    drawn = {name: draw_sign(name, 64, np.random.default_rng(0)) for name in SIGN_CLASSES}
    assert len(SIGN_CLASSES) >= 8
    rgbs = [drawn[n][0].astype(int) for n in SIGN_CLASSES]
    for i in range(len(rgbs)):
        for j in range(i + 1, len(rgbs)):
            differing = (np.abs(rgbs[i] - rgbs[j]).max(axis=2) > 80).mean()
            assert differing > 0.005, (SIGN_CLASSES[i], SIGN_CLASSES[j])
    np.testing.assert_array_equal(drawn["keep_left"][0], drawn["keep_right"][0][:, ::-1])


def test_bad_options_fail_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(TlPerceptionError, match="unknown signs class 'speed_limit_90'"):
        write_synthetic_bag(tmp_path / "x", DriveSpec(classes=["stop", "speed_limit_90"]))
    with pytest.raises(TlPerceptionError, match=r"ending in \.bag"):
        write_synthetic_bag(tmp_path / "x", DriveSpec(storage="ros1"))
    write_synthetic_bag(tmp_path / "x", DriveSpec(frames=5, size=(32, 32)))
    with pytest.raises(TlPerceptionError, match="already exists"):
        write_synthetic_bag(tmp_path / "x", DriveSpec(frames=5, size=(32, 32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging debris


def test_cli_synth_then_extract_recovers_the_label_runs(tmp_path: Path, capsys) -> None:
    bag = tmp_path / "drive"
    assert main(["synth", str(bag), "--frames", "80", "--size", "64x48", "--seed", "2"]) == 0
    assert "labelled on /label" in capsys.readouterr().out
    summary = write_synthetic_bag(tmp_path / "same", DriveSpec(frames=80, size=(64, 48), seed=2))
    out = tmp_path / "dataset"
    # The label is valid for one frame: a tolerance under the 100 ms period keeps gaps unlabelled.
    args = ["extract", str(bag), "--topic", IMAGE_TOPIC, "--out", str(out)]
    args += ["--label-topic", LABEL_TOPIC, "--label-tolerance", "0.05", "--workers", "1"]
    assert main([*args, "--no-progress"]) == 0
    counts = {d.name: len(list(d.glob("*.png"))) for d in (out / "train").iterdir()}
    assert counts == summary.frames_per_class()


# --- road scenes: several objects per frame, ground-truth boxes and a simulated detector ---

ROAD_SIZE_SMALL = (320, 240)


def raw_messages(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(log time, serialised bytes)]: what two bags must share to be identical."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.LATEST)) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns, bytes(raw)))
    return out


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def as_box(detection) -> Box:
    return Box.from_bbox(detection.bbox)


def nominal_truth(plan, frame: int) -> list[TruthObject]:
    """Truth boxes from the plan's geometry, without rendering (fast, for rate statistics)."""
    vp = plan.segment_of(frame).vanishing_point
    out = []
    for track in plan.tracks_in(frame):
        x0, y0, x1, y1 = track.extent(frame, vp)
        out.append(
            TruthObject(
                track.id, track.label, track.category, Box.from_xywh(x0, y0, x1 - x0, y1 - y0)
            )
        )
    return out


@pytest.fixture(scope="module")
def road_bag(tmp_path_factory) -> tuple[Path, SynthSummary]:
    path = tmp_path_factory.mktemp("road") / "road"
    spec = DriveSpec(
        kind="road",
        frames=40,
        seed=5,
        size=ROAD_SIZE_SMALL,
        detector_noise=DetectorNoise(miss=0.2, false_positives=0.5, jitter=0.05),
    )
    summary = write_synthetic_bag(path, spec)
    return path, summary


def test_road_bag_has_camera_truth_and_detections_with_the_images_headers(road_bag) -> None:
    path, summary = road_bag
    topics = read_back(path)
    assert set(topics) == {IMAGE_TOPIC, TRUTH_TOPIC, DETECTIONS_TOPIC}
    assert summary.label_topic is None and summary.road is not None
    images, truths, dets = topics[IMAGE_TOPIC], topics[TRUTH_TOPIC], topics[DETECTIONS_TOPIC]
    assert len(images) == len(truths) == len(dets) == 40
    for (t_img, img), (t_truth, truth), (t_det, det) in zip(images, truths, dets, strict=True):
        assert message_to_rgb(img).shape == (240, 320, 3)
        assert t_truth == t_img and t_det == t_img + DETECTOR_LATENCY_NS
        for array in (truth, det):
            assert array.header == img.header  # stamp and frame_id exactly
            assert all(d.header == img.header for d in array.detections)
        for d in truth.detections:
            assert len(d.results) == 1 and d.results[0].hypothesis.score == 1.0
            assert d.results[0].hypothesis.class_id in ROAD_CLASSES and d.id.startswith("obj-")
        for d in det.detections:
            assert d.results[0].hypothesis.class_id in ("sign", "vehicle")
            assert 0.3 <= d.results[0].hypothesis.score < 1.0
    boxes = sum(len(m.detections) for _t, m in truths)
    assert boxes == summary.road.truth_boxes > 20
    found = sum(len(m.detections) for _t, m in dets)
    assert found == summary.road.detected + summary.road.false_positives


def test_truth_boxes_are_tight_around_the_rendered_objects(road_bag) -> None:
    """The bag's pixels and boxes are the renderer's; each box holds its object's pixels and
    little of it spills out (the empty road under the same noise isolates the objects)."""
    path, summary = road_bag
    topics = read_back(path)
    plan = plan_road(ROAD_CLASSES, 40, 5, ROAD_SIZE_SMALL)
    assert plan.tracks == summary.road.tracks
    checked = 0
    for index in (3, 12, 21, 30, 39):
        full = render_road_frame(plan, index)
        empty = render_road_frame(plan, index, draw_objects=False)
        np.testing.assert_array_equal(message_to_rgb(topics[IMAGE_TOPIC][index][1]), full.rgb)
        written = topics[TRUTH_TOPIC][index][1].detections
        assert [(d.id, as_box(d)) for d in written] == [(t.id, t.box) for t in full.truth]
        assert empty.truth == []
        changed = np.abs(full.rgb.astype(int) - empty.rgb.astype(int)).max(axis=2) > 25
        for obj in full.truth:
            x0, y0, w, h = (int(v) for v in obj.box.to_xywh())
            assert x0 >= 0 and y0 >= 0 and x0 + w <= 320 and y0 + h <= 240
            assert changed[y0 : y0 + h, x0 : x0 + w].mean() > 0.4, obj
            # 2 px bands left, right and above the box, one pixel off it (anti-aliased, blurred
            # edges); a sign's pole leaves it downwards.
            bands = [
                changed[y0 : y0 + h, max(x0 - 3, 0) : max(x0 - 1, 0)],
                changed[y0 : y0 + h, x0 + w + 1 : x0 + w + 3],
                changed[max(y0 - 3, 0) : max(y0 - 1, 0), x0 : x0 + w],
            ]
            outside = np.concatenate([b.ravel() for b in bands])
            assert outside.size == 0 or outside.mean() < 0.15, obj
            checked += 1
    assert checked >= 5


def test_road_tracks_are_contiguous_runs_of_one_class_that_grow() -> None:
    plan = plan_road(ROAD_CLASSES, 120, seed=2, size=(320, 240))
    seen: dict[str, list[tuple[int, TruthObject]]] = {}
    signs_in_view = []
    for frame in road_frames(plan):
        signs_in_view.append(sum(1 for t in frame.truth if t.category == "sign"))
        for obj in frame.truth:
            seen.setdefault(obj.id, []).append((frame.index, obj))
    assert set(signs_in_view) <= {0, 1, 2, 3, 4} and 0 in signs_in_view
    assert max(signs_in_view) >= 2
    assert {t.id for t in plan.tracks} == set(seen)
    for track in plan.tracks:
        frames = [i for i, _obj in seen[track.id]]
        assert frames == list(track.frames()), track.id  # one contiguous run, no gaps
        assert {obj.label for _i, obj in seen[track.id]} == {track.label}
        heights = [obj.box.size_y for _i, obj in seen[track.id]]
        if track.category == "sign":
            assert heights[-1] > heights[0] and min(heights) >= 12 and max(heights) <= 100
    assert "sign" in {t.category for t in plan.tracks}
    assert {t.category for t in plan_road(ROAD_CLASSES, 400, 0, (320, 240)).tracks} == {
        "sign",
        "vehicle",
    }


def test_detector_noise_gives_about_the_requested_miss_and_false_positive_rates() -> None:
    plan = plan_road(ROAD_CLASSES, 400, seed=3, size=(640, 480))
    noise = DetectorNoise(miss=0.3, false_positives=1.0, jitter=0.05)
    detector = SimulatedDetector.plan(noise, 3, (640, 480), 400)
    truth_total = missed = fps = 0
    offsets = []
    for index in range(400):
        truth = nominal_truth(plan, index)
        found = detector.detect(index, truth)
        by_id = {d.id: d for d in found}
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for obj in truth:
            truth_total += 1
            if obj.id not in by_id:
                missed += 1
                continue
            got = by_id[obj.id]
            assert got.class_id == obj.category  # the detector's category, never the class
            offsets.append(abs(got.box.to_xywh()[0] - obj.box.to_xywh()[0]) / obj.box.size_x)
        for d in found:
            if d.id.startswith("fp-"):
                fps += 1
                assert d.class_id == "sign"
                x, y, w, h = d.box.to_xywh()
                eps = 1e-9  # centre/size <-> corner arithmetic in float64
                assert x >= -eps and y >= -eps and x + w <= 640 + eps and y + h <= 480 + eps
                assert not any(_overlaps(d.box, obj.box) for obj in truth)
    assert truth_total > 500
    assert 0.25 < missed / truth_total < 0.35
    assert 0.7 < fps / 400 < 1.15  # a few firings are suppressed where an object stands
    assert 0.03 < float(np.mean(offsets)) < 0.05  # E|N(0, 0.05)| = 0.04


def test_zero_noise_detects_every_true_box_exactly() -> None:
    plan = plan_road(ROAD_CLASSES, 60, seed=4, size=(640, 480))
    detector = SimulatedDetector.plan(DetectorNoise(), 4, (640, 480), 60)
    for index in range(60):
        truth = nominal_truth(plan, index)
        found = detector.detect(index, truth)
        assert sorted((d.id, d.box) for d in found) == sorted((t.id, t.box) for t in truth)


def _overlaps(a: Box, b: Box) -> bool:
    ax, ay, aw, ah = a.to_xywh()
    bx, by, bw, bh = b.to_xywh()
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def test_noise_levels_and_rates_parse() -> None:
    assert DetectorNoise.parse("1") == DetectorNoise(miss=0.2, false_positives=0.5, jitter=0.08)
    assert DetectorNoise.parse("0") == DetectorNoise()
    assert DetectorNoise.parse("miss=0.1, fp=2") == DetectorNoise(miss=0.1, false_positives=2)
    for bad, message in (
        ("loud", "expected a level"),
        ("miss=2", "miss must be in"),
        ("misses=0.1", "unknown rate 'misses'"),
        ("-1", "level must be in"),
    ):
        with pytest.raises(TlPerceptionError, match=message):
            DetectorNoise.parse(bad)


def test_road_drives_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    def make(name: str, seed: int) -> dict[str, list[tuple[int, bytes]]]:
        spec = DriveSpec(kind="road", frames=12, seed=seed, size=(128, 96))
        write_synthetic_bag(tmp_path / name, spec)
        return raw_messages(tmp_path / name)

    a, b, c = make("a", 9), make("b", 9), make("c", 10)
    assert a == b
    assert a[IMAGE_TOPIC] != c[IMAGE_TOPIC]


def test_cli_synth_road_and_its_option_errors(tmp_path: Path, capsys) -> None:
    bag = str(tmp_path / "road")
    args = ["synth", bag, "--kind", "road", "--frames", "15", "--size", "128x96"]
    assert main([*args, "--detector-noise", "miss=0.5,fp=1", "--compressed"]) == 0
    out = capsys.readouterr().out
    assert "on /detections/truth" in out and "false positives" in out
    assert set(read_back(tmp_path / "road")) == {COMPRESSED_TOPIC, TRUTH_TOPIC, DETECTIONS_TOPIC}
    assert main(["synth", str(tmp_path / "s"), "--detector-noise", "0.5"]) == 2
    assert "--kind road only" in capsys.readouterr().err
    assert main([*args[:1], str(tmp_path / "r.bag"), *args[2:], "--storage", "ros1"]) == 2
    assert "needs rosbag2" in capsys.readouterr().err
    assert main([*args[:1], str(tmp_path / "t"), *args[2:6], "--size", "40x30"]) == 2
    with pytest.raises(SystemExit):
        main([*args, "--detector-noise", "loud"])


def test_vision_msgs_text_matches_the_interfaces_package() -> None:
    """msgdefs is the rosbags copy of interfaces/vision_msgs: they must not drift apart."""
    root = REPO / "interfaces" / "vision_msgs" / "msg"
    if not root.is_dir():
        pytest.skip("interfaces/vision_msgs is not in this checkout")
    for name, text in VISION_MSGS.items():
        lines = (root / f"{name.rsplit('/', 1)[1]}.msg").read_text().splitlines()
        body = [ln.split("#", 1)[0].strip() for ln in lines]
        body = [" ".join(ln.split()) for ln in body if ln]
        assert body == text.strip().splitlines(), name
