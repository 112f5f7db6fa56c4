"""`read_dataset`: the dataset contract the trainer, evaluator and demo read through."""

from __future__ import annotations

from pathlib import Path

import pytest
from bagutil import frames, pattern, write_bag

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.dataset import read_dataset, safe_class_dir
from tl_perception.errors import DatasetError


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
    assert index.has_manifest and index.class_names == ("Stop",)
    assert {s.sequence for s in index.samples} == {"b:Stop:0"}
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
    ("label", "slug"),
    [("../../x", "x"), ("a/b", "a_b"), ("", "unnamed"), ("..", "unnamed"), ("red\x00\n", "red")],
)
def test_safe_class_dir_never_escapes(label, slug):
    assert safe_class_dir(label) == slug


def test_real_gtsrb_split_tree_reads(shared_dir):
    index = read_dataset(shared_dir / "data" / "gtsrb")
    assert len(index.class_names) == 43 and index.splits() == ("train", "test")
