"""`extract` on real bags written with rosbags writers (ROS 2 MCAP, ROS 2 sqlite3, ROS 1)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from bagutil import SEC, T0, Msg, frames, label, pattern, solid, write_bag

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import FrameFilter, LabelSpec
from tl_perception.cli import main
from tl_perception.dataset import MANIFEST_FILE, read_dataset, read_manifest
from tl_perception.errors import BagError, DatasetError
from tl_perception.images import compressed_to_rgb

RED, GREEN = (220, 20, 20), (20, 200, 20)


def run(bags: list[Path], out: Path, labels: LabelSpec, **kw) -> object:
    return extract(ExtractOptions(tuple(bags), kw.pop("topic", "/cam"), out, labels, **kw))


def labelled_bag(path: Path, storage: str, encoding: str = "rgb8", kind: str = "image") -> Path:
    """10 red frames then 10 green frames at 10 Hz, labels on /label."""
    imgs = [pattern(i) for i in range(20)]
    msgs = frames("/cam", imgs, kind=kind, encoding=encoding)
    msgs += [label("/label", 0.0, "red"), label("/label", 0.95, "green")]
    return write_bag(path, storage, sorted(msgs, key=lambda m: m.t_ns))


@pytest.mark.parametrize(
    ("storage", "name", "encoding", "kind"),
    [
        ("mcap", "b_mcap", "bgr8", "image"),
        ("sqlite3", "b_sqlite", "mono8", "image"),
        ("ros1", "b1.bag", "bayer_rggb8", "image"),
        ("mcap", "b_jpeg", "jpeg", "compressed"),
    ],
)
def test_label_topic_labels_every_frame_from_each_bag_kind(tmp_path, storage, name, encoding, kind):
    bag = labelled_bag(tmp_path / name, storage, encoding, kind)
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/label"))
    assert report.kept == Counter({("red", "train"): 10, ("green", "train"): 10})
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 20
    assert {r["encoding"] for r in rows} == {encoding if kind == "image" else "compressed:jpeg"}
    assert {(r["width"], r["height"]) for r in rows} == {("32", "24")}
    first = min(rows, key=lambda r: int(r["stamp_ns"]))
    assert first["stamp_ns"] == str(T0) and first["label"] == "red"
    assert first["path"] == f"train/red/{Path(name).stem}_cam_{T0}.png"
    index = read_dataset(tmp_path / "out")
    assert index.class_names == ("green", "red") and index.has_manifest


def test_rgb8_pixels_survive_extraction_exactly(tmp_path):
    img = pattern(7)
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [img], encoding="rgb8"))
    run([bag], tmp_path / "out", LabelSpec("fixed", name="x"))
    (row,) = read_manifest(tmp_path / "out")
    written = compressed_to_rgb((tmp_path / "out" / row["path"]).read_bytes())
    np.testing.assert_array_equal(written, img)


def test_bare_mcap_file_is_a_bag(tmp_path):
    bag = labelled_bag(tmp_path / "dirbag", "mcap")
    bare = tmp_path / "bare.mcap"
    bare.write_bytes((bag / "dirbag.mcap").read_bytes())
    report = run([bare], tmp_path / "out", LabelSpec("fixed", name="sign"))
    assert report.kept == Counter({("sign", "train"): 20})


def test_label_tolerance_skips_frames_with_stale_labels(tmp_path):
    msgs = frames("/cam", [pattern(i) for i in range(10)], period_s=0.5)  # 0 .. 4.5 s
    bag = write_bag(
        tmp_path / "b", "mcap", sorted([*msgs, label("/l", 0.0, "a")], key=lambda m: m.t_ns)
    )
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/l", tolerance_s=1.0))
    assert report.kept[("a", "train")] == 3  # frames at 0.0, 0.5, 1.0 s
    assert report.skipped["no_label"] == 7


def test_csv_labels_time_window_every_and_crop(tmp_path):
    bag = labelled_bag(tmp_path / "b", "mcap")
    table = tmp_path / "labels.csv"
    table.write_text("start,end,label\n0,1.0,stop\n1.0,1.5,go\n")
    report = run(
        [bag],
        tmp_path / "out",
        LabelSpec("csv", ranges=((0.0, 1.0, "stop"), (1.0, 1.5, "go"))),
        selection=FrameFilter(every=2, start_s=0.2, end_s=1.75),
        crop=(4, 2, 10, 8),
    )
    # window keeps frames 2..17 (0.2..1.7 s); every 2nd: 2,4,..,16; CSV covers up to 1.5 s
    assert report.kept == Counter({("stop", "train"): 4, ("go", "train"): 3})
    assert report.skipped == Counter(outside_time_window=4, every_nth=8, no_label=1)
    rows = read_manifest(tmp_path / "out")
    assert {(r["width"], r["height"]) for r in rows} == {("10", "8")}


def test_dedup_drops_near_identical_frames_of_a_sequence(tmp_path):
    imgs = [pattern(1)] * 5 + [pattern(2)] * 5  # two scenes, each held for 5 frames
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", imgs))
    report = run([bag], tmp_path / "out", LabelSpec("fixed", name="a"), dedup=4)
    assert report.kept[("a", "train")] == 2
    assert report.skipped["near_duplicate"] == 8


def test_splits_keep_sequences_together_and_reach_every_split(tmp_path):
    msgs: list[Msg] = []
    for run_i in range(12):  # 12 sequences of 3 frames, alternating labels, 1 s apart
        name = "red" if run_i % 2 == 0 else "green"
        start = run_i * 1.0
        msgs += frames("/cam", [pattern(100 * run_i + k) for k in range(3)], start_s=start)
        msgs.append(label("/label", start, name))
    bag = write_bag(tmp_path / "b", "sqlite3", sorted(msgs, key=lambda m: (m.t_ns, m.topic)))
    out = tmp_path / "out"
    run([bag], out, LabelSpec("topic", topic="/label"), split=(0.6, 0.2, 0.2), seed=3)
    rows = read_manifest(out)
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["sequence"], set()).add(row["split"])
    assert len(split_of) == 12 and all(len(s) == 1 for s in split_of.values())
    for cls in ("red", "green"):
        per_split = Counter(r["split"] for r in rows if r["class_dir"] == cls)
        assert per_split == Counter(train=12, val=3, test=3)
    index = read_dataset(out)
    assert index.splits() == ("train", "val", "test")
    assert len(index.split("val")) == 6


def test_unsafe_labels_become_safe_directories_inside_out(tmp_path):
    out = tmp_path / "nested" / "out"
    for i, name in enumerate(["../../x", "a/b", "", "bad\x07\n"]):
        bag = write_bag(tmp_path / f"b{i}", "mcap", frames("/cam", [pattern(i)]))
        run([bag], out, LabelSpec("fixed", name=name), append=True)
    rows = read_manifest(out)
    assert sorted(r["class_dir"] for r in rows) == ["a_b", "bad", "unnamed", "x"]
    assert sorted(r["label"] for r in rows) == sorted(["../../x", "a/b", "", "bad\x07\n"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "nested" / "x").exists()
    assert all((out / r["path"]).resolve().is_relative_to(out.resolve()) for r in rows)


def test_corrupt_frames_are_skipped_and_counted(tmp_path):
    good = frames("/cam", [pattern(1), pattern(2)], kind="compressed", encoding="jpeg")
    bad_jpeg = Msg("/cam", T0 + 5 * SEC, "compressed", b"\xff\xd8not a jpeg")
    bag = write_bag(tmp_path / "b", "mcap", [*good, bad_jpeg])
    report = run([bag], tmp_path / "out", LabelSpec("fixed", name="a"))
    assert report.kept[("a", "train")] == 2 and report.skipped["decode_error"] == 1


def test_rerun_adds_nothing_and_append_keeps_splits(tmp_path):
    out = tmp_path / "out"
    bag1 = labelled_bag(tmp_path / "one", "mcap")
    spec = LabelSpec("topic", topic="/label")
    run([bag1], out, spec, split=(0.5, 0.5, 0.0), dedup=4)
    before = (out / MANIFEST_FILE).read_text()
    again = run([bag1], out, spec, split=(0.5, 0.5, 0.0), dedup=4)
    assert again.written == 0 and (out / MANIFEST_FILE).read_text() == before
    with pytest.raises(DatasetError, match="--append"):
        run([bag1], out, LabelSpec("fixed", name="other"))
    bag2 = labelled_bag(tmp_path / "two.bag", "ros1")
    run([bag2], out, spec, split=(0.5, 0.5, 0.0), dedup=4, append=True)
    rows = read_manifest(out)
    assert len(rows) == 40
    old = {r["path"]: r["split"] for r in csv.DictReader(before.splitlines())}
    assert all(old[r["path"]] == r["split"] for r in rows if r["path"] in old)


def test_interrupted_run_leftovers_are_cleaned_and_redone(tmp_path):
    out = tmp_path / "out"
    bag = labelled_bag(tmp_path / "b", "mcap")
    run([bag], out, LabelSpec("fixed", name="a"))
    manifest = (out / MANIFEST_FILE).read_text()
    (out / MANIFEST_FILE).write_text(manifest.splitlines()[0] + "\n")  # as if killed mid-run
    (out / "train" / "a" / ".b_cam_1.png.x.tmp").write_bytes(b"partial")
    run([bag], out, LabelSpec("fixed", name="a"))
    assert (out / MANIFEST_FILE).read_text() == manifest
    assert not list(out.rglob(".*.tmp"))


def test_workers_do_not_change_the_result(tmp_path):
    bag = labelled_bag(tmp_path / "b", "mcap", "jpeg", "compressed")
    spec = LabelSpec("topic", topic="/label")
    for workers in (1, 2):
        run([bag], tmp_path / f"w{workers}", spec, workers=workers, dedup=10, split=(0.5, 0.5, 0))
    assert (tmp_path / "w1" / MANIFEST_FILE).read_text() == (
        tmp_path / "w2" / MANIFEST_FILE
    ).read_text()


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    bag = labelled_bag(tmp_path / "b", "mcap")
    out = tmp_path / "out"
    not_a_bag = tmp_path / "notes.txt"
    not_a_bag.write_text("hello")
    truncated = tmp_path / "trunc.mcap"
    data = (bag / "b.mcap").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("0,1\n")
    cases = [
        ([str(not_a_bag), "--label", "a"], "not a bag"),
        ([str(truncated), "--label", "a"], "trunc.mcap"),
        ([str(bag), "--label", "a", "--topic", "/nope"], "image topics there: /cam"),
        ([str(bag), "--label", "a", "--topic", "/label"], "std_msgs/msg/String"),
        ([str(bag), "--label-csv", str(bad_csv)], "expected 3 fields"),
        ([str(bag), "--label-topic", "/cam"], "label topics must be"),
    ]
    for args, message in cases:
        argv = ["extract", *args, "--out", str(out), "--workers", "1"]
        if "--topic" not in argv:
            argv += ["--topic", "/cam"]
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
        assert not out.exists()
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["extract", str(bag), "--topic", "/cam", "--label", "a", "--out", str(out)]) == 2
    assert "holds no dataset.json" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_corrupt_bag_raises_bag_error(tmp_path):
    bag = tmp_path / "broken.bag"
    bag.write_bytes(b"#ROSBAG V2.0\n" + bytes(range(256)) * 4)
    with pytest.raises(BagError, match=r"broken\.bag"):
        run([bag], tmp_path / "out", LabelSpec("fixed", name="a"))
    assert not (tmp_path / "out").exists()


def test_cli_extract_prints_summary(tmp_path, capsys):
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [solid(RED), solid(GREEN)]))
    argv = ["extract", str(bag), "--topic", "/cam", "--out", str(tmp_path / "o"), "--unlabeled"]
    assert main([*argv, "--workers", "1", "--format", "jpg"]) == 0
    out = capsys.readouterr().out
    assert "unlabeled" in out and "wrote 2 images" in out
    assert (
        sorted(p.suffix for p in (tmp_path / "o" / "train" / "unlabeled").iterdir()) == [".jpg"] * 2
    )


VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/Classification": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesis[] results\n"
    ),
}


def test_label_topic_of_vision_msgs_classification_takes_the_best_result(tmp_path):
    """A classifier's recorded output labels frames by its top-scoring class."""
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as Writer2
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from tl_perception.images import image_fields

    store = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in VISION_MSGS.items():
        store.register(get_types_from_msg(text, name))
    types = store.types
    bag = tmp_path / "vision"
    with Writer2(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection("/cam", "sensor_msgs/msg/Image", typestore=store)
        cls = writer.add_connection("/cls", "vision_msgs/msg/Classification", typestore=store)
        for i in range(6):
            t_ns = T0 + i * SEC // 10
            stamp = types["builtin_interfaces/msg/Time"](sec=t_ns // SEC, nanosec=t_ns % SEC)
            header = types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera")
            best = "stop" if i < 3 else "yield"
            results = [
                types["vision_msgs/msg/ObjectHypothesis"](class_id="other", score=0.1),
                types["vision_msgs/msg/ObjectHypothesis"](class_id=best, score=0.9),
            ]
            label_msg = types["vision_msgs/msg/Classification"](header=header, results=results)
            writer.write(cls, t_ns - 1000, store.serialize_cdr(label_msg, cls.msgtype))
            fields = image_fields(pattern(i), "rgb8")
            fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
            image = types["sensor_msgs/msg/Image"](header=header, **fields)
            writer.write(cam, t_ns, store.serialize_cdr(image, cam.msgtype))
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/cls"))
    assert report.kept == Counter({("stop", "train"): 3, ("yield", "train"): 3})
