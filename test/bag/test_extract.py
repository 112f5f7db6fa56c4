"""`extract` on real bags written with rosbags writers (ROS 2 MCAP, ROS 2 sqlite3, ROS 1)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import FrameFilter, LabelSpec
from tl_perception.bag.writer import BagWriter, Msg, write_bag
from tl_perception.cli import main
from tl_perception.dataset import MANIFEST_FILE, read_dataset, read_manifest
from tl_perception.errors import BagError, DatasetError
from tl_perception.images import compressed_to_rgb, image_fields
from tl_perception.stamps import SEC

from support.bagutil import T0, frames, label, pattern, solid

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
    bag_id = first["bag"]  # the bag's name plus a hash of its content
    assert bag_id.startswith(f"{Path(name).stem}-") and len(bag_id) == len(Path(name).stem) + 9
    assert first["path"] == f"train/red/{bag_id}_cam_{T0}.png"
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
    names = ["../../x", "a/b", "bad\x07\n"]
    for i, name in enumerate(names):
        bag = write_bag(tmp_path / f"b{i}", "mcap", frames("/cam", [pattern(i)]))
        run([bag], out, LabelSpec("fixed", name=name), append=True)
    rows = read_manifest(out)
    dirs = sorted(r["class_dir"] for r in rows)
    assert [d.split("~")[0] for d in dirs] == ["a_b", "bad", "x"]
    assert sorted(r["label"] for r in rows) == sorted(names)
    assert not (tmp_path / "x").exists() and not (tmp_path / "nested" / "x").exists()
    assert all((out / r["path"]).resolve().is_relative_to(out.resolve()) for r in rows)
    with pytest.raises(DatasetError, match="empty label"):
        run([bag], out, LabelSpec("fixed", name=""), append=True)


def label_bag(path: Path, labels: list[str], per_label: int = 3) -> Path:
    """`per_label` frames per label at 10 Hz, each run announced by a String on /label."""
    msgs: list[Msg] = []
    for i, text in enumerate(labels):
        start = i * per_label * 0.1
        msgs += frames("/cam", [pattern(10 * i + k) for k in range(per_label)], start_s=start)
        msgs.append(label("/label", start - 0.01 if i else 0.0, text))
    return write_bag(path, "mcap", sorted(msgs, key=lambda m: m.t_ns))


def test_labels_that_differ_outside_ascii_or_in_case_stay_distinct_classes(tmp_path):
    """Issue 9 defect 1: "стоп", "停" and "" were all written into one class `unnamed`."""
    labels = ["стоп", "停", "stop", "Stop"]
    bag = label_bag(tmp_path / "b", [*labels, ""])
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/label"))
    rows = read_manifest(tmp_path / "out")
    by_label: dict[str, set[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], set()).add(row["class_dir"])
    assert sorted(by_label) == sorted(labels)  # the manifest keeps the original labels
    dirs = [next(iter(v)) for v in by_label.values() if len(v) == 1]
    assert len({d.casefold() for d in dirs}) == 4, by_label  # also on macOS / Windows
    assert by_label["停"] == {"停"} and next(iter(by_label["стоп"])) == "стоп"
    assert sorted(report.kept.values()) == [3, 3, 3, 3] and report.skipped["no_label"] == 3
    summary = json.loads((tmp_path / "out" / "dataset.json").read_text(encoding="utf-8"))
    assert sorted(summary["class_labels"].values()) == sorted([x] for x in labels)
    assert read_dataset(tmp_path / "out").class_names == tuple(sorted(dirs))


def test_empty_string_label_is_no_label_not_a_class(tmp_path):
    """Issue 9 defect 2: an empty String became a training class."""
    bag = label_bag(tmp_path / "b", ["red", "", "green", " "])
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/label"))
    assert report.kept == Counter({("red", "train"): 3, ("green", "train"): 3})
    assert report.skipped["no_label"] == 6
    assert {r["class_dir"] for r in read_manifest(tmp_path / "out")} == {"red", "green"}


def test_classification_without_results_is_no_label(tmp_path):
    """Issue 9 defect 2: a vision_msgs/Classification with no results carries no label."""
    bag = tmp_path / "vision"
    with BagWriter(bag, "mcap") as writer:
        types = writer.types
        for i in range(6):
            t_ns = T0 + i * SEC // 10
            best = "stop" if i < 3 else None
            results = [types["vision_msgs/msg/ObjectHypothesis"](class_id=best, score=0.9)]
            msg = types["vision_msgs/msg/Classification"](
                header=writer.header(t_ns), results=results if best else []
            )
            writer.write("/cls", "vision_msgs/msg/Classification", t_ns - 1000, msg)
            writer.image("/cam", t_ns, image_fields(pattern(i), "rgb8"))
    report = run([bag], tmp_path / "out", LabelSpec("topic", topic="/cls"))
    assert report.kept == Counter({("stop", "train"): 3}) and report.skipped["no_label"] == 3


def test_demo_scoring_reads_labels_as_extraction_does(tmp_path):
    """Issue 9 defect 2: the demo had its own label lookup that kept a label past an empty one."""
    from tl_perception.demo.report import read_labels, score_live

    bag = label_bag(tmp_path / "b", ["red", "", "green"])
    run([bag], tmp_path / "out", LabelSpec("topic", topic="/label"))
    extracted = {int(r["stamp_ns"]): r["label"] for r in read_manifest(tmp_path / "out")}
    stamps = [T0 + i * SEC // 10 for i in range(9)]
    # The node answers "red" where the road is empty: those answers must not count.
    records = [{"stamp_ns": s, "top1": extracted.get(s, "red"), "latency_ms": 1.0} for s in stamps]
    scored = score_live(records, read_labels(bag, "/label"), tolerance_ns=SEC)
    assert scored["labelled"] == len(extracted) == 6 and scored["accuracy"] == 1.0
    assert scored["per_class_frames"] == {"green": 3, "red": 3}


def same_stem_bags(tmp_path: Path) -> tuple[Path, Path]:
    """day1/drive.mcap and day2/drive.mcap: same file name and stamps, different frames."""
    bags = []
    for day, seed in (("day1", 0), ("day2", 100)):
        made = write_bag(
            tmp_path / day / "tmp", "mcap", frames("/cam", [pattern(seed + i) for i in range(4)])
        )
        bare = tmp_path / day / "drive.mcap"
        bare.write_bytes((made / "tmp.mcap").read_bytes())
        bags.append(bare)
    return bags[0], bags[1]


def test_bags_with_one_file_name_in_two_folders_are_two_bags(tmp_path):
    """Issue 9 defect 3: bags were identified by file stem, so day2 was taken for day1."""
    day1, day2 = same_stem_bags(tmp_path)
    out = tmp_path / "out"
    spec = LabelSpec("fixed", name="a")
    run([day1], out, spec, split=(0.5, 0.5, 0.0))
    with pytest.raises(DatasetError, match="--append"):
        run([day2], out, spec, split=(0.5, 0.5, 0.0))
    report = run([day2], out, spec, split=(0.5, 0.5, 0.0), append=True)
    assert report.written == 4 and report.skipped["already_in_dataset"] == 0
    rows = read_manifest(out)
    assert len(rows) == 8 and len({r["bag"] for r in rows}) == 2
    assert len({r["path"] for r in rows}) == 8
    seq = {b: {r["sequence"] for r in rows if r["bag"] == b} for b in {r["bag"] for r in rows}}
    first, second = seq.values()
    assert not first & second  # sequence ids never collide, so no split is inherited
    summary = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert sorted(s["path"] for s in summary["sources"]) == sorted(map(str, (day1, day2)))
    assert len({s["sha256"] for s in summary["sources"]}) == 2
    both = run([day1, day2], tmp_path / "both", spec)  # also in one command
    assert both.written == 8


def test_one_bag_given_twice_is_refused(tmp_path):
    day1, _ = same_stem_bags(tmp_path)
    copy = tmp_path / "copy.mcap"
    copy.write_bytes(day1.read_bytes())
    with pytest.raises(DatasetError, match="identical content"):
        run([day1, copy], tmp_path / "out", LabelSpec("fixed", name="a"))
    assert not (tmp_path / "out").exists()


def test_raw_frame_with_empty_encoding_is_a_counted_decode_error(tmp_path):
    """Issue 9 defect 4: an empty `encoding` fell through to `msg.format` and killed extract."""
    fields = image_fields(pattern(3), "bgr8")
    empty = Msg("/cam", T0 + SEC, "image", {**fields, "encoding": ""})
    bag = write_bag(tmp_path / "b", "mcap", [*frames("/cam", [pattern(1), pattern(2)]), empty])
    report = run([bag], tmp_path / "out", LabelSpec("fixed", name="a"))
    assert report.kept == Counter({("a", "train"): 2}) and report.skipped["decode_error"] == 1


def test_raw_frame_with_more_data_than_step_times_height_is_a_decode_error(tmp_path):
    """Issue 9 defect 5: a bgr8 frame labelled mono16 (1.5x the bytes) was classified."""
    fields = image_fields(pattern(3), "bgr8")
    mislabelled = Msg("/cam", T0 + SEC, "image", {**fields, "encoding": "mono16", "step": 64})
    bag = write_bag(tmp_path / "b", "mcap", [*frames("/cam", [pattern(1)]), mislabelled])
    report = run([bag], tmp_path / "out", LabelSpec("fixed", name="a"))
    assert report.kept == Counter({("a", "train"): 1}) and report.skipped["decode_error"] == 1


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
