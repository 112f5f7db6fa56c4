"""The dataset directory: the one place that knows its layout, manifest and summary.

A dataset is an image tree that `keras.utils.image_dataset_from_directory` reads as is:

    DIR/{train,val,test}/<class_dir>/<file>.png     (extraction output, or any split tree)
    DIR/<class_dir>/<file>.png                      (a plain class-per-folder tree)

Extraction adds `manifest.csv` (one row per image, columns `MANIFEST_COLUMNS`) and `dataset.json`
(format, version, counts, sources, options). Readers never decode images here: `read_dataset` only
lists files, so it stays cheap on large trees; decoding (and corrupt-image handling) is the
trainer's job.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tl_perception.errors import DatasetError

FORMAT = "tl_perception.dataset"
VERSION = 1
MANIFEST_FILE = "manifest.csv"
SUMMARY_FILE = "dataset.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: `path` is relative to the dataset root, posix separators; `label` is the original label,
#: `class_dir` its safe directory name; `sha256` hashes the decoded RGB pixels.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "split",
    "label",
    "class_dir",
    "bag",
    "topic",
    "stamp_ns",
    "width",
    "height",
    "encoding",
    "sha256",
    "sequence",
)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_SLUG = 80


@dataclass(frozen=True)
class Sample:
    """One image of a dataset."""

    path: Path
    class_name: str
    split: str | None
    sequence: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetIndex:
    """All images of a dataset, in a deterministic order (split, class, path)."""

    root: Path
    samples: tuple[Sample, ...]
    class_names: tuple[str, ...]
    has_manifest: bool

    def split(self, name: str) -> tuple[Sample, ...]:
        """Samples of split `name` (empty when the split is absent)."""
        return tuple(s for s in self.samples if s.split == name)

    def splits(self) -> tuple[str, ...]:
        """Splits present, in `SPLITS` order; empty for a plain class-per-folder tree."""
        present = {s.split for s in self.samples}
        return tuple(name for name in SPLITS if name in present)


def safe_class_dir(label: str) -> str:
    """A directory name for `label` that cannot escape the dataset or hide itself.

    Letters, digits, `.`, `_` and `-` are kept; runs of anything else become `_`. Leading dots
    are stripped (no `..`, no hidden dirs); an empty result becomes `unnamed`. Labels that slug
    alike share a directory; the manifest keeps the original label.
    """
    text = unicodedata.normalize("NFKD", str(label)).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("_", text).lstrip("._")[:_MAX_SLUG].rstrip("_")
    return slug or "unnamed"


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """Rows of `root/manifest.csv` as dicts; [] when there is none."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("path", "split", "class_dir") if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetError(
                f"{str(path)!r} lacks columns {missing}; it was not written by "
                "`tl-perception extract`"
            )
        return [dict(row) for row in reader]


def manifest_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text for manifest rows (columns in `MANIFEST_COLUMNS` order, rows sorted by path)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: str(r["path"])):
        writer.writerow({c: row.get(c, "") for c in MANIFEST_COLUMNS})
    return out.getvalue()


def is_image_file(path: Path) -> bool:
    """An image the trainer may read (hidden files, e.g. temp files of a write, are not)."""
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def read_dataset(root: str | Path) -> DatasetIndex:
    """Index a dataset directory: extraction output, split tree, or class-per-folder tree.

    Raises:
        DatasetError: `root` is missing, holds no images, or its manifest names missing files.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset directory {str(root)!r} does not exist or is not a directory")
    rows = read_manifest(root)
    if rows:
        samples = _samples_from_manifest(root, rows)
        has_manifest = True
    else:
        has_manifest = False
        split_dirs = [root / name for name in SPLITS if (root / name).is_dir()]
        if split_dirs:
            samples = [s for d in split_dirs for s in _scan_class_tree(d, d.name)]
        else:
            samples = list(_scan_class_tree(root, None))
    if not samples:
        raise DatasetError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}; expected "
            "<class>/<image> or {train,val,test}/<class>/<image>"
        )
    order = {name: i for i, name in enumerate(SPLITS)}
    samples.sort(key=lambda s: (order.get(s.split or "", -1), s.class_name, str(s.path)))
    class_names = tuple(sorted({s.class_name for s in samples}))
    return DatasetIndex(root, tuple(samples), class_names, has_manifest)


def _scan_class_tree(directory: Path, split: str | None) -> Iterable[Sample]:
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        if class_dir.name.startswith(".") or (split is None and class_dir.name in SPLITS):
            continue
        for path in sorted(class_dir.iterdir()):
            if is_image_file(path):
                yield Sample(path=path, class_name=class_dir.name, split=split)


def _samples_from_manifest(root: Path, rows: list[dict[str, str]]) -> list[Sample]:
    samples = []
    missing = []
    for row in rows:
        rel = Path(row["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise DatasetError(f"manifest path {row['path']!r} leaves the dataset directory")
        path = root / rel
        if not path.is_file():
            missing.append(row["path"])
            continue
        samples.append(
            Sample(
                path=path,
                class_name=row["class_dir"],
                split=row.get("split") or None,
                sequence=row.get("sequence") or None,
                sha256=row.get("sha256") or None,
            )
        )
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) listed in {MANIFEST_FILE} are missing, e.g. {missing[0]!r}; "
            "re-run the same `tl-perception extract` command to repair the dataset"
        )
    return samples
