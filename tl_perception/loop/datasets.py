"""What `label` and `merge` share: opening a dataset to change it, and writing it back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tl_perception.dataset import (
    EXTENDABLE_VERSIONS,
    MANIFEST_FILE,
    SUMMARY_FILE,
    read_manifest,
    read_summary,
    write_dataset,
)
from tl_perception.errors import DatasetError


def open_for_update(root: Path, role: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Summary and manifest rows of a finished dataset this tl_perception may rewrite.

    `role` names the argument in errors (e.g. "--into"). Refused: no directory, no dataset.json
    (a plain image tree has no manifest to update), an unfinished extraction, version 1 (bags
    named by file name), an empty manifest.
    """
    where = f"{role} {str(root)!r}"
    if not root.is_dir():
        raise DatasetError(f"{where} does not exist or is not a directory")
    summary = read_summary(root)
    if summary is None:
        raise DatasetError(
            f"{where} holds no {SUMMARY_FILE}: give a dataset made by `tl-perception extract` "
            "or a capture directory"
        )
    if summary.get("status") != "complete":
        raise DatasetError(
            f"{where} is an extraction that did not finish (status {summary.get('status')!r}); "
            "re-run its `tl-perception extract` command first"
        )
    if summary.get("version") not in EXTENDABLE_VERSIONS:
        raise DatasetError(
            f"{where} is a version {summary.get('version')} dataset, which names bags by file "
            "name; extract it again with this tl_perception"
        )
    rows = read_manifest(root)
    if not rows:
        raise DatasetError(f"{where}: {MANIFEST_FILE} lists no image")
    return summary, rows


def write_back(
    root: Path,
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    sources: Sequence[Mapping[str, Any]] | None = None,
    last_run: Mapping[str, Any] | None = None,
) -> None:
    """Rewrite manifest.csv and dataset.json, keeping the summary's options and crop policy."""
    write_dataset(
        root,
        rows,
        summary.get("sources", []) if sources is None else sources,
        options=summary.get("options") or {},
        last_run=(summary.get("last_run") or {}) if last_run is None else last_run,
        crop_policy=summary.get("crop_policy"),
    )
