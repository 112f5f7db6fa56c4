"""The output directory around a run: what a run creates, removes and leaves behind in it,
apart from the dataset itself (`dataset.py`) and the work directory's contents (`workdir.py`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tl_perception.bag.workdir import WORK_DIR, WorkDir, remove_tree
from tl_perception.dataset import SPLITS


def first_missing(path: Path) -> Path | None:
    """The topmost directory of `path` that does not exist yet (what mkdir -p would create)."""
    if path.exists():
        return None
    top = path
    while not top.parent.exists():
        top = top.parent
    return top


def undo_setup(work: WorkDir, created: Path | None, had_work: bool) -> None:
    """A run refused before writing: leave `out` as it was (a work directory that an earlier
    run left stays, with the plans this run added: they are valid for a later run)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    elif not had_work:
        remove_tree(work.root)


def remove_trash(out: Path) -> None:
    """What a removal of a work directory that was interrupted left behind."""
    for trash in out.glob(f"{WORK_DIR}.*.trash"):
        shutil.rmtree(trash, ignore_errors=True)


def class_dirs_on_disk(out: Path) -> set[Path]:
    """Split and class directories that exist (a rollback removes the new, empty ones)."""
    found: set[Path] = set()
    for split in SPLITS:
        split_dir = out / split
        if split_dir.is_dir():
            found.add(split_dir)
            found.update(p for p in split_dir.iterdir() if p.is_dir())
    return found


def remove_stale_temps(out: Path) -> None:
    """Temp files older versions wrote into the dataset (`.frame-*.tmp`, hidden `*.tmp` in
    class directories): this version writes its temp files in the work directory."""
    for stale in out.glob(".frame-*.tmp"):
        stale.unlink(missing_ok=True)
    for split in SPLITS:
        if not (out / split).is_dir():
            continue
        for path in (out / split).glob("*/.*.tmp"):
            if path.is_file():
                path.unlink()


def remove_new_empty_dirs(out: Path, before: set[Path]) -> None:
    """Split and class directories a rolled-back run created and left empty (deepest first)."""
    for directory in sorted(class_dirs_on_disk(out) - before, reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
