"""`synth` writes real, reproducible bags whose label topic describes exactly the frames that show
an object (read back with rosbags and with our own extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from tl_perception.cli import main
from tl_perception.errors import TlPerceptionError
from tl_perception.images import message_to_rgb
from tl_perception.synth.drive import plan_drive
from tl_perception.synth.signs import SIGN_CLASSES, draw_sign
from tl_perception.synth.writer import (
    COMPRESSED_TOPIC,
    IMAGE_TOPIC,
    LABEL_LEAD_NS,
    LABEL_TOPIC,
    write_synthetic_bag,
)


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
    summary = write_synthetic_bag(tmp_path / "drive", frames=60, seed=3, size=(96, 72))
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

    write_synthetic_bag(tmp_path / "a", frames=40, seed=7, size=(64, 48))
    write_synthetic_bag(tmp_path / "b", frames=40, seed=7, size=(64, 48))
    write_synthetic_bag(tmp_path / "c", frames=40, seed=8, size=(64, 48))
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a") != contents(tmp_path / "c")


@pytest.mark.parametrize(
    ("storage", "name", "compressed", "suffix"),
    [("sqlite3", "drive", True, "*.db3"), ("ros1", "drive.bag", False, None)],
)
def test_other_storages_and_compressed_images_are_readable(
    tmp_path: Path, storage: str, name: str, compressed: bool, suffix: str | None
) -> None:
    summary = write_synthetic_bag(
        tmp_path / name,
        kind="vehicles",
        frames=30,
        size=(64, 64),
        storage=storage,
        compressed=compressed,
    )
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
        write_synthetic_bag(tmp_path / "x", classes=["stop", "speed_limit_90"])
    with pytest.raises(TlPerceptionError, match=r"ending in \.bag"):
        write_synthetic_bag(tmp_path / "x", storage="ros1")
    write_synthetic_bag(tmp_path / "x", frames=5, size=(32, 32))
    with pytest.raises(TlPerceptionError, match="already exists"):
        write_synthetic_bag(tmp_path / "x", frames=5, size=(32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging debris


def test_cli_synth_then_extract_recovers_the_label_runs(tmp_path: Path, capsys) -> None:
    bag = tmp_path / "drive"
    assert main(["synth", str(bag), "--frames", "80", "--size", "64x48", "--seed", "2"]) == 0
    assert "labelled on /label" in capsys.readouterr().out
    summary = write_synthetic_bag(tmp_path / "same", frames=80, size=(64, 48), seed=2)
    out = tmp_path / "dataset"
    # The label is valid for one frame: a tolerance under the 100 ms period keeps gaps unlabelled.
    args = ["extract", str(bag), "--topic", IMAGE_TOPIC, "--out", str(out)]
    args += ["--label-topic", LABEL_TOPIC, "--label-tolerance", "0.05", "--workers", "1"]
    assert main([*args, "--no-progress"]) == 0
    counts = {d.name: len(list(d.glob("*.png"))) for d in (out / "train").iterdir()}
    assert counts == summary.frames_per_class()
