"""`tl-perception label`: give captured (or `extract --unlabeled`) images their classes.

Two ways, one result. `--csv FILE` (columns `path,label`) moves each named image from
`<split>/unlabeled/` (or another class folder) into `<split>/<class_dir>/`; `--from-folders`
picks up images someone moved into class folders by hand. Either way the manifest rows get the
new `label`, `class_dir` and `path`, written through `tl_perception.dataset`.

Every run first picks up hand moves: a row whose image is not at its path but, by file name, in
exactly one other class folder of its split follows it; a row whose image is in none was deleted
by hand (a useless capture) and is dropped, counted and listed. So an interrupted `--csv` run
(images moved, manifest not yet written) is completed by running it again, and hand moves,
deletions and CSVs can be mixed. All
input is checked before the first file moves; a failing move or manifest write puts the moved
files back. The directory is locked, so a capture cannot rewrite the manifest meanwhile.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tl_perception.dataset import (
    SPLITS,
    UNLABELED_DIR,
    class_dirs,
    is_empty_label,
    is_image_file,
    labels_to_dirs,
    locked,
    safe_class_dir,
)
from tl_perception.errors import DatasetError, one_line
from tl_perception.loop.datasets import open_for_update, write_back

CSV_COLUMNS: tuple[str, ...] = ("path", "label")

Row = dict[str, str]


@dataclass
class LabelReport:
    """What a run changed: images moved per class_dir, hand moves picked up, and what is left."""

    moved: Counter[str] = field(default_factory=Counter)
    picked_up: int = 0
    unchanged: int = 0
    unlabeled: int = 0  # images still in an `unlabeled` folder afterwards
    unlisted: list[str] = field(default_factory=list)  # images in class folders no row names
    deleted: list[str] = field(default_factory=list)  # rows dropped: their image was deleted


@dataclass(frozen=True)
class _Move:
    row: Row
    label: str
    class_dir: str

    @property
    def target(self) -> str:
        return f"{self.row['split']}/{self.class_dir}/{_name(self.row['path'])}"


def label_from_csv(root: str | Path, csv_path: str | Path) -> LabelReport:
    """Apply a `path,label` CSV (an empty label puts an image back into `unlabeled/`).

    Raises:
        DatasetError: a malformed CSV, an unknown column or path, an image named twice, a
            dataset that cannot be updated; nothing is changed then.
    """
    root = Path(root).expanduser().resolve()
    entries = read_label_csv(Path(csv_path))
    with locked(root):
        summary, rows = open_for_update(root, "dataset")
        report = LabelReport()
        _pick_up(root, rows, report)
        moves = _plan(root, rows, entries, report)
        _apply(root, rows, moves, summary)
        report.moved.update(m.class_dir for m in moves)
        report.unlabeled = _count_unlabeled(rows)
    return report


def label_from_folders(root: str | Path) -> LabelReport:
    """Re-sync the manifest with images moved into class folders by hand."""
    root = Path(root).expanduser().resolve()
    with locked(root):
        summary, rows = open_for_update(root, "dataset")
        report = LabelReport()
        _pick_up(root, rows, report)
        if report.picked_up or report.deleted:
            write_back(root, rows, summary)
        report.unlabeled = _count_unlabeled(rows)
    return report


def read_label_csv(path: Path) -> list[tuple[int, str, str]]:
    """(line, path, label) of every row; a header `path,label` (any order) is required."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read --csv {str(path)!r}: {one_line(err)}") from err
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or ())
        if sorted(columns) != sorted(CSV_COLUMNS):
            unknown = [c for c in columns if c not in CSV_COLUMNS]
            detail = f"unknown column(s) {unknown}" if unknown else f"columns {columns}"
            raise DatasetError(
                f"--csv {str(path)!r}: {detail}; the header must be exactly path,label"
            )
        entries = []
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise DatasetError(f"--csv {str(path)!r} line {reader.line_num}: expected 2 fields")
            if not row["path"].strip():
                raise DatasetError(f"--csv {str(path)!r} line {reader.line_num}: empty path")
            entries.append((reader.line_num, row["path"].strip(), row["label"]))
    except csv.Error as err:
        raise DatasetError(f"--csv {str(path)!r}: malformed CSV: {err}") from err
    return entries


def _name(rel: str) -> str:
    return rel.rsplit("/", 1)[-1]


def _pick_up(root: Path, rows: list[Row], report: LabelReport) -> None:
    """Rows whose image was moved by hand to another class folder of its split: follow it.
    Rows whose image is in no class folder of its split were deleted by hand: drop them."""
    listed = {row["path"] for row in rows}
    found = _images_on_disk(root)
    mapping = labels_to_dirs(rows, root)
    owners = {directory: label for label, directory in mapping.items()}
    kept = []
    for row in rows:
        kept.append(row)
        if (root / row["path"]).is_file():
            continue
        name = _name(row["path"])
        where = [
            d
            for d in found.get((row["split"], name), [])
            if f"{row['split']}/{d}/{name}" not in listed
        ]
        if not where:
            report.deleted.append(kept.pop()["path"])
            listed.discard(row["path"])
            continue
        if len(where) > 1:
            raise DatasetError(
                f"{row['path']!r} was moved and {name!r} is now in {len(where)} class folders "
                f"of {row['split']}/ ({', '.join(where)}): keep one"
            )
        label = _folder_label(row["split"], where[0], owners, mapping)
        listed.discard(row["path"])
        row.update(path=f"{row['split']}/{where[0]}/{name}", label=label, class_dir=where[0])
        listed.add(row["path"])
        report.picked_up += 1
    rows[:] = kept
    report.unlisted = sorted(
        f"{split}/{d}/{name}"
        for (split, name), dirs in found.items()
        for d in dirs
        if f"{split}/{d}/{name}" not in listed
    )


def _images_on_disk(root: Path) -> dict[tuple[str, str], list[str]]:
    """(split, file name) -> the class folders that hold it."""
    found: dict[tuple[str, str], list[str]] = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for folder in sorted((root / split).iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for path in folder.iterdir():
                if is_image_file(path):
                    found.setdefault((split, path.name), []).append(folder.name)
    return found


def _folder_label(split: str, folder: str, owners: dict[str, str], mapping: dict[str, str]) -> str:
    """The label a class folder stands for: its class's, or the folder name for a new class."""
    if folder in owners:
        return owners[folder]
    label = "" if folder == UNLABELED_DIR else folder
    plain = label == "" or (not is_empty_label(label) and safe_class_dir(label) == label)
    if not plain or class_dirs([label], mapping)[label] != folder:
        raise DatasetError(
            f"folder {split}/{folder}/ cannot be a class directory (a plain name of letters, "
            "digits, '.', '_' or '-', not differing only in case from another class); rename "
            "it, or label those images with --csv"
        )
    mapping[label] = folder
    owners[folder] = label
    return label


def _plan(
    root: Path, rows: list[Row], entries: list[tuple[int, str, str]], report: LabelReport
) -> list[_Move]:
    """The moves the CSV asks for, all checked: known paths, each image once, free targets."""
    lookup = _lookup(rows)
    chosen: dict[int, tuple[int, str]] = {}  # row index -> (csv line, label)
    for line, path, label in entries:
        index = lookup.get(path)
        if index is None:
            raise DatasetError(
                f"--csv line {line}: {path!r} is not an image of {str(root)!r} (give the "
                "manifest's path, e.g. train/unlabeled/<file>.png, or the file name)"
            )
        if index < 0:
            raise DatasetError(f"--csv line {line}: file name {path!r} is ambiguous; give the path")
        if index in chosen:
            raise DatasetError(
                f"--csv line {line}: {path!r} was already labelled on line {chosen[index][0]}"
            )
        chosen[index] = (line, "" if is_empty_label(label) else label)
    mapping = class_dirs({label for _, label in chosen.values()}, labels_to_dirs(rows, root))
    moves = []
    for index, (line, label) in sorted(chosen.items()):
        move = _Move(rows[index], label, mapping[label])
        if move.target == rows[index]["path"]:
            report.unchanged += 1
            continue
        if os.path.lexists(root / move.target):
            raise DatasetError(
                f"--csv line {line}: {move.target!r} exists and is not in the manifest; move it "
                "away first"
            )
        moves.append(move)
    return moves


def _lookup(rows: list[Row]) -> dict[str, int]:
    """CSV path -> row index: the path, its `unlabeled/` form, or its file name (-1: ambiguous)."""
    lookup: dict[str, int] = {}
    names = Counter(_name(row["path"]) for row in rows)
    for index, row in enumerate(rows):
        name = _name(row["path"])
        lookup[row["path"]] = index
        lookup.setdefault(f"{row['split']}/{UNLABELED_DIR}/{name}", index)
        lookup[name] = index if names[name] == 1 else -1
    return lookup


def _apply(root: Path, rows: list[Row], moves: list[_Move], summary: Mapping[str, object]) -> None:
    """Move the files, then write the manifest; on failure, move them back."""
    done: list[tuple[Path, Path]] = []
    created: list[Path] = []
    try:
        for move in moves:
            source, target = root / move.row["path"], root / move.target
            if not target.parent.is_dir():
                target.parent.mkdir()
                created.append(target.parent)
            os.rename(source, target)
            done.append((source, target))
        updated = {id(m.row): m for m in moves}
        new_rows = [
            {**row, "path": m.target, "label": m.label, "class_dir": m.class_dir}
            if (m := updated.get(id(row)))
            else row
            for row in rows
        ]
        write_back(root, new_rows, dict(summary))
    except OSError as err:
        for source, target in reversed(done):
            os.rename(target, source)
        for folder in reversed(created):
            _remove_if_empty(folder)
        raise DatasetError(
            f"cannot relabel {str(root)!r}: {one_line(err)}; nothing changed"
        ) from err
    rows[:] = new_rows
    for source, _ in done:
        _remove_if_empty(source.parent)


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _count_unlabeled(rows: list[Row]) -> int:
    return sum(1 for row in rows if is_empty_label(row.get("label")))
