"""The dataset directory: the one place that knows its layout, manifest and summary.

A dataset is an image tree that `keras.utils.image_dataset_from_directory` reads as is:

    DIR/{train,val,test}/<class_dir>/<file>.png     (extraction output, or any split tree)
    DIR/<class_dir>/<file>.png                      (a plain class-per-folder tree)

Extraction adds `manifest.csv` (one row per image, columns `MANIFEST_COLUMNS`; crops of boxes
also give their box and track) and `dataset.json` (format, version, counts, sources, options, and
the `crop_policy` crops were cut with); this module is the only one that reads or writes either.
Readers never decode images here: `read_dataset` only lists files and checks the manifest against
them, so it stays cheap on large trees; decoding (and corrupt-image handling) is the
trainer's job.

Labels become class directories through `safe_class_dir` / `class_dirs`: distinct labels always
get distinct directories, also on case-insensitive file systems, and the manifest keeps the
original label.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import itertools
import json
import math
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.crop import Box, CropError, CropPolicy
from tl_perception.errors import DatasetError, DirectoryLockError, one_line
from tl_perception.fsutil import atomic_open, atomic_write_json

FORMAT = "tl_perception.dataset"
#: Version 3 may hold crops of boxes: dataset.json has `crop_policy` (null for whole frames) and
#: the manifest the box and track of each crop. Version 2 names bags by content
#: (`<stem>-<sha256 prefix>`) and maps each label to its own class directory; version 1 named
#: bags by file stem and could merge labels.
VERSION = 3
#: Versions `read_dataset` reads.
READABLE_VERSIONS: tuple[int, ...] = (1, 2, 3)
#: Versions extraction adds to (and then writes as `VERSION`): a version 2 dataset is a version
#: 3 dataset of whole frames.
EXTENDABLE_VERSIONS: tuple[int, ...] = (2, 3)
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
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    "track",
    "camera",
    "predicted",
    "score",
    "model",
)
#: Columns a crop's row fills (empty for a whole frame): its box in pixels of the source frame,
#: top-left x, y and width, height (exact float text), and its track.
BOX_COLUMNS: tuple[str, ...] = ("box_x", "box_y", "box_w", "box_h", "track")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
#: Class directory of `--unlabeled` frames (their label is empty).
UNLABELED_DIR = "unlabeled"
#: Separates a slug from the label's hash; never part of a slug, so hashed names cannot
#: collide with labels that are kept as they are.
HASH_MARK = "~"

_KEEP = frozenset("._-")
_MAX_SLUG_BYTES = 96  # UTF-8; with the hash the name stays far below 255 bytes on every FS
_HASH_CHARS = 8
# Names Windows refuses for a file or directory, with or without an extension.
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{p}{i}" for p in ("com", "lpt") for i in range(10)]
)


@dataclass(frozen=True)
class Sample:
    """One image of a dataset."""

    path: Path
    class_name: str
    split: str | None
    sequence: str | None = None
    sha256: str | None = None
    track: str | None = None  # crops of boxes: the object's track
    box: tuple[float, float, float, float] | None = None  # crops: x, y, w, h in the frame


@dataclass(frozen=True)
class DatasetIndex:
    """All images of a dataset, in a deterministic order (split, class, path)."""

    root: Path
    samples: tuple[Sample, ...]
    class_names: tuple[str, ...]
    has_manifest: bool
    #: How the images were cut from their frames (crops of boxes); None: whole frames.
    crop_policy: CropPolicy | None = None

    def split(self, name: str) -> tuple[Sample, ...]:
        """Samples of split `name` (empty when the split is absent)."""
        return tuple(s for s in self.samples if s.split == name)

    def splits(self) -> tuple[str, ...]:
        """Splits present, in `SPLITS` order; empty for a plain class-per-folder tree."""
        present = {s.split for s in self.samples}
        return tuple(name for name in SPLITS if name in present)


def is_empty_label(label: str | None) -> bool:
    """No label at all, or only whitespace: names no class, so such frames are `no_label`."""
    return label is None or not str(label).strip()


def slug(text: str) -> str:
    """A readable, safe file-name part of `text` (possibly empty; information may be lost).

    NFKC-normalised; letters, marks and digits of any script and `.`, `_`, `-` are kept, runs of
    anything else become `_`; no leading `.`/`_`/`-` (no `..`, no hidden names), no trailing
    `.`/`_`, at most 96 UTF-8 bytes.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFKC", str(text)):
        if ch in _KEEP or unicodedata.category(ch)[0] in "LMN":
            out.append(ch)
        elif not out or out[-1] != "_":
            out.append("_")
    name = "".join(out).lstrip("._-")
    encoded = name.encode("utf-8")[:_MAX_SLUG_BYTES]
    return encoded.decode("utf-8", errors="ignore").rstrip("._")


def label_hash(label: str) -> str:
    """A short hash of the label itself (stable across runs, machines and Python versions)."""
    return hashlib.sha256(label.encode("utf-8", errors="surrogatepass")).hexdigest()[:_HASH_CHARS]


def safe_class_dir(label: str) -> str:
    """The class directory of `label`, a name that cannot escape the dataset or hide itself.

    A label that is already a safe name (`slug(label) == label`, not a Windows device name such
    as `CON`) is kept as it is: `stop`, `speed_limit_30`, `стоп`, `停`. Any other label gets its
    slug plus `~` and a hash of the label (`Stop!` -> `Stop~<hash>`, `../x` -> `x~<hash>`), so
    two labels never share a directory because slugging lost what told them apart. Labels that
    differ only in case are told apart by `class_dirs`, which sees all labels of a dataset.

    Raises:
        DatasetError: an empty label: it names no class.
    """
    if is_empty_label(label):
        raise DatasetError(f"an empty label ({label!r}) cannot name a class")
    name = slug(label)
    if name == label and name.split(".")[0].casefold() not in _RESERVED:
        return name
    return hashed_class_dir(label)


def hashed_class_dir(label: str) -> str:
    """`<slug>~<hash>`: the class directory of a label that cannot be used as it is."""
    return f"{slug(label) or 'label'}{HASH_MARK}{label_hash(label)}"


def class_dirs(labels: Iterable[str], taken: Mapping[str, str] | None = None) -> dict[str, str]:
    """The class directory of every label: distinct labels get distinct directories.

    Directories are compared case-insensitively (and after Unicode normalisation), as macOS and
    Windows file systems compare them, so `Stop` and `stop` never share one there either: when
    candidates collide, each colliding new label gets its hashed name. `taken` (label ->
    class_dir, e.g. from an existing manifest) is kept as it is, so appending never renames a
    class. The empty label is `--unlabeled`'s and maps to `unlabeled`.

    Raises:
        DatasetError: `taken` maps two labels to one directory, or hashes collide.
    """
    result = dict(taken or {})
    owner: dict[str, str] = {}
    for label, directory in result.items():
        key = _fold(directory)
        if key in owner and owner[key] != label:
            raise DatasetError(
                f"labels {owner[key]!r} and {label!r} share class directory {directory!r}"
            )
        owner[key] = label
    new = sorted(set(labels) - set(result))
    candidates = {label: _candidate(label) for label in new}
    counts = Counter(_fold(c) for c in candidates.values())
    for label in new:
        directory = candidates[label]
        if counts[_fold(directory)] > 1 or _fold(directory) in owner:
            directory = hashed_class_dir(label) if label else f"{UNLABELED_DIR}{HASH_MARK}"
        if _fold(directory) in owner:
            raise DatasetError(
                f"labels {owner[_fold(directory)]!r} and {label!r} both map to class "
                f"directory {directory!r}; rename one of them"
            )
        owner[_fold(directory)] = label
        result[label] = directory
    return result


def labels_to_dirs(
    rows: Iterable[Mapping[str, str]], root: Path, advice: str | None = None
) -> dict[str, str]:
    """label -> class_dir of a dataset's manifest rows, where each label has one directory and
    each directory one label (as extraction and `label` write them).

    `advice` ends the errors (default: a label in two directories says to fix the manifest).

    Raises:
        DatasetError: a label in two directories, or two labels in one.
    """
    mapping: dict[str, str] = {}
    for row in rows:
        label = row.get("label") or ""
        if mapping.setdefault(label, row["class_dir"]) != row["class_dir"]:
            raise DatasetError(
                f"{str(root / MANIFEST_FILE)!r}: label {label!r} is in class directories "
                f"{mapping[label]!r} and {row['class_dir']!r}; "
                f"{advice or 'fix the manifest by hand'}"
            )
    try:
        return class_dirs((), mapping)
    except DatasetError as err:
        tail = f"; {advice}" if advice else ""
        raise DatasetError(f"{str(root / MANIFEST_FILE)!r}: {err}{tail}") from err


def _candidate(label: str) -> str:
    return UNLABELED_DIR if label == "" else safe_class_dir(label)


def _fold(name: str) -> str:
    """How a case-insensitive, normalising file system compares names."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def read_summary(root: str | Path) -> dict[str, Any] | None:
    """`root/dataset.json` as a dict; None when there is none.

    Raises:
        DatasetError: unreadable or corrupt JSON, another format, or a version not in
            `READABLE_VERSIONS`.
    """
    path = Path(root) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"cannot read {str(path)!r}: {one_line(err)}") from err
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        raise DatasetError(
            f"{str(path)!r} is not a {FORMAT} summary; it was not written by extract"
        )
    version = summary.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise DatasetError(
            f"{str(path)!r} has {FORMAT} version {version!r}; this tl_perception reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer tl_perception wrote it?)"
        )
    crop_policy_of(summary, str(path))
    return summary


def crop_policy_of(summary: Mapping[str, Any], where: str = SUMMARY_FILE) -> CropPolicy | None:
    """The crop policy a summary records (`crop_policy`); None when it holds whole frames.

    Raises:
        DatasetError: `crop_policy` is not a valid crop object (one line naming the field).
    """
    data = summary.get("crop_policy")
    if data is None:
        return None
    try:
        return CropPolicy.from_dict(data, where=f"{where}: crop_policy")
    except CropError as err:
        raise DatasetError(str(err)) from err


def read_crop_policy(root: str | Path) -> CropPolicy | None:
    """The crop policy of the dataset at `root` (what `finetune` copies into bundle.json as
    `crop`); None for whole frames, a dataset without dataset.json, or an older version."""
    summary = read_summary(root)
    return None if summary is None else crop_policy_of(summary, str(Path(root) / SUMMARY_FILE))


def begin_summary(root: str | Path) -> None:
    """Mark a new dataset as being written (`status: incomplete`) before any image lands."""
    atomic_write_json(
        Path(root) / SUMMARY_FILE, {"format": FORMAT, "version": VERSION, "status": "incomplete"}
    )


def write_dataset(
    root: str | Path,
    rows: Iterable[Mapping[str, Any]],
    sources: Iterable[Mapping[str, Any]],
    options: Mapping[str, Any],
    last_run: Mapping[str, Any],
    crop_policy: Mapping[str, Any] | None = None,
) -> None:
    """Write `manifest.csv` and a complete `dataset.json` (counts and labels from `rows`).

    `sources` are `{name, path, sha256, bytes}` of every bag in the dataset; `options` are those
    that define the content; `last_run` what this run did; `crop_policy` the
    `CropPolicy.to_dict()` the crops were cut with (None: whole frames). Both files are replaced
    atomically, the manifest first. Rows are sorted here; `write_sorted_manifest` takes rows
    that arrive sorted without holding them.
    """
    ordered = sorted(rows, key=lambda r: str(r["path"]))
    counts = write_sorted_manifest(root, map(manifest_line, ordered))
    write_summary(root, counts, SummaryFields(sources, options, last_run, crop_policy))


@dataclass(frozen=True)
class SummaryFields:
    """What dataset.json says beyond the counts (see `write_dataset`)."""

    sources: Iterable[Mapping[str, Any]]
    options: Mapping[str, Any]
    last_run: Mapping[str, Any]
    crop_policy: Mapping[str, Any] | None = None


#: A manifest row as the streaming writers carry it: its values in `MANIFEST_COLUMNS` order.
ManifestLine = Sequence[str]
_PATH, _SPLIT, _LABEL, _CLASS_DIR = (
    MANIFEST_COLUMNS.index(c) for c in ("path", "split", "label", "class_dir")
)


def manifest_line(row: Mapping[str, Any]) -> list[str]:
    """A row as a `ManifestLine` (missing columns empty)."""
    return ["" if (value := row.get(c)) is None else str(value) for c in MANIFEST_COLUMNS]


@dataclass
class ManifestCounts:
    """Images per split and class, and the labels of each class, of the rows written."""

    total: int = 0
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)

    def add(self, line: ManifestLine) -> None:
        self.total += 1
        self.counts.setdefault(line[_SPLIT], Counter())[line[_CLASS_DIR]] += 1
        self.labels.setdefault(line[_CLASS_DIR], set()).add(line[_LABEL])


def write_sorted_manifest(
    root: str | Path, lines: Iterable[ManifestLine], replace_empty: bool = True
) -> ManifestCounts:
    """Stream rows that arrive sorted by path into `manifest.csv` (a hidden temp file renamed
    into place), counting them as they pass: memory does not grow with the rows. With
    `replace_empty` False, no rows leave the manifest as it was.

    Raises:
        DatasetError: a row out of order, or listed twice (nothing is replaced).
    """
    root = Path(root)
    counts = ManifestCounts()
    rows = iter(lines)
    first = next(rows, None)
    if first is None and not replace_empty:
        return counts
    last: str | None = None
    with atomic_open(root / MANIFEST_FILE, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for line in itertools.chain([first] if first is not None else [], rows):
            path = line[_PATH]
            if last is not None and path <= last:
                what = "listed twice" if path == last else f"after {last!r}"
                raise DatasetError(f"manifest row {path!r} is {what}: rows must be sorted")
            last = path
            writer.writerow(line)
            counts.add(line)
    return counts


def write_summary(root: str | Path, counts: ManifestCounts, fields: SummaryFields) -> None:
    """A complete `dataset.json` for the rows `counts` counted."""
    crop_policy = fields.crop_policy
    if crop_policy is not None:
        CropPolicy.from_dict(crop_policy, where="crop_policy")  # never write one we cannot read
    atomic_write_json(
        Path(root) / SUMMARY_FILE,
        {
            "format": FORMAT,
            "version": VERSION,
            "status": "complete",
            "total": counts.total,
            "counts": {s: dict(sorted(c.items())) for s, c in sorted(counts.counts.items())},
            "class_labels": {c: sorted(v) for c, v in sorted(counts.labels.items())},
            "sources": sorted((dict(s) for s in fields.sources), key=lambda s: str(s["name"])),
            "crop_policy": dict(crop_policy) if crop_policy is not None else None,
            "options": dict(fields.options),
            "last_run": dict(fields.last_run),
        },
    )


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """Rows of `root/manifest.csv` as dicts; [] when there is none.

    Every row is checked against the layout (`split/class_dir/file`, a known split and image
    suffix, unique paths inside the dataset), so a damaged or hand-edited manifest is one
    `DatasetError` naming the file and line, never a wrong dataset.
    """
    rows = []
    seen: set[str] = set()
    where = str(Path(root) / MANIFEST_FILE)
    for line, row in iter_manifest(root):
        if row["path"] in seen:
            raise DatasetError(f"{where!r} line {line}: {row['path']!r} is listed twice")
        seen.add(row["path"])
        rows.append(row)
    return rows


def iter_manifest(root: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of `root/manifest.csv`, each checked as `read_manifest` checks it
    except for paths listed twice (which needs every path at once; a manifest sorted by path,
    as tl_perception writes it, has its repeats next to each other). Nothing when there is
    none; the file is read as the rows are consumed, so memory does not grow with it.
    """
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            fieldnames = list(reader.fieldnames or ())
            missing = [c for c in ("path", "split", "class_dir") if c not in fieldnames]
            if missing:
                raise DatasetError(
                    f"{str(path)!r} lacks columns {missing}; it was not written by "
                    "`tl-perception extract`"
                )
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise DatasetError(
                        f"{str(path)!r} line {reader.line_num}: expected {len(fieldnames)} fields"
                    )
                _check_row(path, reader.line_num, row)
                yield reader.line_num, dict(row)
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read {str(path)!r}: {one_line(err)}") from err
    except csv.Error as err:
        raise DatasetError(f"{str(path)!r}: malformed CSV: {err}") from err


def _check_row(path: Path, line: int, row: dict[str, str]) -> None:
    """A manifest row must name an image at `split/class_dir/<file>` inside the dataset."""
    where = f"{str(path)!r} line {line}"
    rel = row["path"]
    parts = rel.split("/")
    if "\\" in rel or rel.startswith("/") or ".." in parts or "" in parts or "." in parts:
        raise DatasetError(f"{where}: manifest path {rel!r} leaves the dataset directory")
    if len(parts) != 3 or parts[0] != row["split"] or parts[1] != row["class_dir"]:
        raise DatasetError(
            f"{where}: path {rel!r} is not <split>/<class_dir>/<file> for split "
            f"{row['split']!r} and class_dir {row['class_dir']!r}"
        )
    if row["split"] not in SPLITS:
        raise DatasetError(f"{where}: unknown split {row['split']!r}; expected one of {SPLITS}")
    hidden = parts[1].startswith(".") or parts[2].startswith(".")
    if hidden or Path(parts[2]).suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"{where}: {rel!r} is not a visible image file ({IMAGE_SUFFIXES})")
    box = [row.get(c) or "" for c in BOX_COLUMNS[:4]]
    if any(box) and _box_of(row) is None:
        raise DatasetError(f"{where}: box {box!r} is not four finite numbers of pixels")


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
        DatasetError: `root` is missing, holds no images, its `dataset.json` is corrupt or of an
            unknown version, or its manifest is malformed or names missing files.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"dataset directory {str(root)!r} does not exist or is not a directory")
    summary = read_summary(root)
    if summary is not None and summary.get("status") != "complete":
        raise DatasetError(
            f"{str(root)!r} is an extraction that did not finish (dataset.json status "
            f"{summary.get('status')!r}); re-run the same `tl-perception extract` command"
        )
    rows = read_manifest(root)
    policy = crop_policy_of(summary, str(root / SUMMARY_FILE)) if summary is not None else None
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
    return DatasetIndex(root, tuple(samples), class_names, has_manifest, policy)


def _scan_class_tree(directory: Path, split: str | None) -> Iterable[Sample]:
    for class_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        if class_dir.name.startswith(".") or (split is None and class_dir.name in SPLITS):
            continue
        for path in sorted(class_dir.iterdir()):
            if is_image_file(path):
                yield Sample(path=path, class_name=class_dir.name, split=split)


def box_columns(box: Box | None, track: str = "") -> dict[str, str]:
    """A crop's `box_x, box_y, box_w, box_h` (exact float text) and `track` manifest columns;
    a whole frame has no box columns (and a track only where one is known)."""
    columns = {"track": track} if track else {}
    if box is not None:
        x, y, w, h = box.to_xywh()
        columns.update(box_x=repr(x), box_y=repr(y), box_w=repr(w), box_h=repr(h))
    return columns


def _box_of(row: Mapping[str, str]) -> tuple[float, float, float, float] | None:
    """A crop row's box; None for a whole frame (or a box that is not four numbers)."""
    try:
        x, y, w, h = (float(row[c]) for c in BOX_COLUMNS[:4])
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y, w, h) if all(math.isfinite(v) for v in (x, y, w, h)) else None


def _samples_from_manifest(root: Path, rows: list[dict[str, str]]) -> list[Sample]:
    samples = []
    missing = []
    for row in rows:
        path = root / row["path"]
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
                track=row.get("track") or None,
                box=_box_of(row),
            )
        )
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) listed in {MANIFEST_FILE} are missing, e.g. {missing[0]!r}; "
            "re-run the same `tl-perception extract` command to repair the dataset"
        )
    return samples


#: Columns a hard frame captured by the node fills (`tl_perception.loop.capture`; empty
#: otherwise): the camera it came from, the class the model predicted, its best score, and the
#: first 12 hex digits of the SHA-256 of the bundle's model.keras that made the prediction.
CAPTURE_COLUMNS: tuple[str, ...] = ("camera", "predicted", "score", "model")


# --- the directory lock -------------------------------------------------------------------------
#: The lock file of a dataset directory someone is rewriting (a capture, `label`, `merge`).
LOCK_FILE = ".tl_perception.lock"


class DirectoryLock:
    """An exclusive `flock` on `DIR/.tl_perception.lock`: one writer per dataset directory.

    Held by a running capture and by `label` and `merge`, so labels are never applied to a
    directory the node is still rewriting. The kernel drops it when the process dies, so a crash
    leaves no stale lock; the file is removed on release (after checking that it is still the one
    we locked).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; DirectoryLockError when another process holds it (OSError when the
        lock file cannot be created)."""
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryLockError(
                    f"{str(self.path.parent)!r} is in use by another capture or label run "
                    f"(pid {self._holder()}); stop it first or choose another directory"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, str(os.getpid()).encode())
                    self._fd = fd
                    return
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed by its previous holder meanwhile: lock the new file
        raise DirectoryLockError(f"cannot lock {str(self.path)!r}: it keeps being replaced")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


@contextlib.contextmanager
def locked(root: Path, *, read_only: bool = False) -> Iterator[None]:
    """Hold `DirectoryLock(root)` for a block (DirectoryLockError when someone else holds it).

    `read_only`: the block only reads `root`; where no lock file can be created (read-only
    media), no capture can be writing there either, so it runs unlocked.
    """
    if not root.is_dir():
        raise DatasetError(f"{str(root)!r} does not exist or is not a directory")
    lock = DirectoryLock(root)
    try:
        lock.acquire()
    except OSError as err:
        if not read_only:
            raise DirectoryLockError(f"cannot lock {str(root)!r}: {one_line(err)}") from err
    try:
        yield
    finally:
        lock.release()  # a no-op when it was never acquired
