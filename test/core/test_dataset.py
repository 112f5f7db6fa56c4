"""`read_dataset`: the dataset contract the trainer, evaluator and demo read through."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.bag.writer import write_bag
from tl_perception.dataset import class_dirs, read_dataset, read_manifest, safe_class_dir
from tl_perception.errors import DatasetError

from support.bagutil import frames, pattern


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded by the reader")


def test_plain_class_tree_has_no_splits_and_ignores_other_files(tmp_path):
    for name in ("b/1.png", "b/2.JPG", "a/1.jpeg", "a/notes.txt", "a/.hidden.png", "readme.md"):
        touch(tmp_path / name)
    index = read_dataset(tmp_path)
    assert index.class_names == ("a", "b") and index.splits() == ()
    assert [(s.class_name, s.path.name, s.split) for s in index.samples] == [
        ("a", "1.jpeg", None),
        ("b", "1.png", None),
        ("b", "2.JPG", None),
    ]


def test_split_tree_lists_splits_in_order(tmp_path):
    for name in ("test/x/1.png", "train/x/1.png", "train/y/2.png"):
        touch(tmp_path / name)
    index = read_dataset(tmp_path)
    assert index.splits() == ("train", "test") and index.class_names == ("x", "y")
    assert len(index.split("train")) == 2 and index.split("val") == ()
    assert not index.has_manifest


def test_extraction_output_carries_sequence_and_hash(tmp_path):
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [pattern(1), pattern(2)]))
    extract(ExtractOptions((bag,), "/cam", tmp_path / "out", LabelSpec("fixed", name="Stop!")))
    index = read_dataset(tmp_path / "out")
    (cls,) = index.class_names
    assert index.has_manifest and cls == safe_class_dir("Stop!") and cls.startswith("Stop~")
    (row, _) = read_manifest(tmp_path / "out")
    assert {s.sequence for s in index.samples} == {f"{row['bag']}:{cls}:0"}
    assert all(s.sha256 and len(s.sha256) == 64 and s.path.is_file() for s in index.samples)


def test_missing_and_empty_datasets_raise(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        read_dataset(tmp_path / "empty")


def test_manifest_listing_missing_files_raises(tmp_path):
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [pattern(1)]))
    out = tmp_path / "out"
    extract(ExtractOptions((bag,), "/cam", out, LabelSpec("fixed", name="a")))
    next(out.rglob("*.png")).unlink()
    with pytest.raises(DatasetError, match="missing"):
        read_dataset(out)


@pytest.mark.parametrize(
    ("label", "readable"),
    [
        ("stop", "stop"),
        ("speed_limit_30", "speed_limit_30"),
        ("стоп", "стоп"),
        ("停", "停"),
        ("../../x", "x~"),
        ("a/b", "a_b~"),
        ("..", "label~"),
        ("red\x00\n", "red~"),
        ("CON", "CON~"),
        ("nul.txt", "nul.txt~"),
        ("e\u0301", "é~"),  # not NFC: the NFC spelling "é" is a different label
    ],
)
def test_safe_class_dir_never_escapes_and_keeps_safe_labels(label, readable):
    name = safe_class_dir(label)
    if readable.endswith("~"):
        assert name.startswith(readable) and len(name) == len(readable) + 8
    else:
        assert name == readable
    assert "/" not in name and "\\" not in name and not name.startswith(".")


@pytest.mark.parametrize("label", ["", " ", "\t\n"])
def test_empty_label_names_no_class(label):
    with pytest.raises(DatasetError, match="empty label"):
        safe_class_dir(label)


LABELS = [
    "стоп", "СТОП", "停", "止", "stop", "Stop", "STOP", "stop!", "stop?", "../../x", "x", "a/b",
    "a_b", "a b", "ﬁ", "fi", "é", "e\u0301", "straße", "STRASSE", "CON", "con", "x" * 300,
    "x" * 300 + "y", "🙂", "🙃", "क्षि", "",
]  # fmt: skip


def test_class_dirs_keep_distinct_labels_distinct_on_every_filesystem():
    """Issue 9 defect 1: labels differing only outside ASCII (or in case) merged into one."""
    dirs = class_dirs(LABELS)
    assert sorted(dirs) == sorted(set(LABELS))
    folded = {unicodedata.normalize("NFKC", d.casefold()) for d in dirs.values()}
    assert len(folded) == len(LABELS), "two labels share a directory on a case-insensitive FS"
    for name in dirs.values():
        assert name and not name.startswith((".", "-")) and not name.endswith((".", " "))
        assert len(name.encode()) <= 120 and "/" not in name and "\x00" not in name
    assert dirs["стоп"].startswith("стоп") and dirs["停"] == "停" and dirs["止"] == "止"
    assert dirs["x"] == "x" and dirs[""] == "unlabeled"  # --unlabeled frames
    assert dirs["stop"] != dirs["Stop"] != dirs["STOP"]


def test_class_dirs_keep_the_directories_a_dataset_already_has():
    taken = {"Stop": "Stop", "yield": "yield"}
    dirs = class_dirs(["stop", "Stop", "yield", "stop!"], taken)
    assert dirs["Stop"] == "Stop" and dirs["yield"] == "yield"  # appending renames nothing
    assert dirs["stop"].startswith("stop~")  # "stop" and "Stop" are one directory on macOS
    with pytest.raises(DatasetError, match="share class directory"):
        class_dirs(["a"], {"a": "x", "b": "X"})


def test_real_gtsrb_split_tree_reads(shared_dir):
    index = read_dataset(shared_dir / "data" / "gtsrb")
    assert len(index.class_names) == 43 and index.splits() == ("train", "test")
