"""The capture directory on disk: what a hard-frame capture writes, and what `label` and `merge`
read back.

A capture directory is a dataset in the extraction format (`tl_perception.dataset`): images in
`train/unlabeled/`, `manifest.csv` and `dataset.json`, whose `options.capture` record names the
capture (`source`), its settings and the models that judged its images. `CaptureStore` is the
writer's side: it creates or resumes a directory (locked with `dataset.locked`'s lock, read only
after the lock is held), writes each image atomically and durably, and rewrites the manifest and
dataset.json. `RunTracker` names each image's `sequence` (the rule `merge` groups captures by);
`capture_record` and `content_digest` read a capture back.

Only the writer thread of `loop.capture.HardFrameCapture` touches an open store.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from tl_perception.crop import describe_policy, policy_record
from tl_perception.dataset import (
    CAPTURE_COLUMNS,
    EXTENDABLE_VERSIONS,
    SUMMARY_FILE,
    UNLABELED_DIR,
    DirectoryLock,
    box_columns,
    crop_policy_of,
    read_manifest,
    read_summary,
    slug,
    write_dataset,
)
from tl_perception.errors import CaptureError, DirectoryLockError, one_line
from tl_perception.fsutil import atomic_write_bytes, durable_writes

if TYPE_CHECKING:  # the writer's types; it imports this module, not the other way round
    from tl_perception.loop.capture import CaptureConfig, CaptureContext, CaptureItem

#: Captured images land in `<CAPTURE_SPLIT>/unlabeled/`, where `extract --unlabeled` puts them.
CAPTURE_SPLIT = "train"
#: Frames of one camera closer than this (in stamp time) are one sequence. Captures are sparse
#: (rate-limited, only hard frames), so the gap is wider than extraction's 2 s.
CAPTURE_GAP_S = 5.0
#: Camera and track names are shortened in file names, which must stay under 255 bytes.
_NAME_PART = 40


class RunTracker:
    """The `sequence` of each captured image, so that near-identical captures stay together.

    A sequence is a run of images whose stamps are no more than `gap_s` apart, named by the
    run's first stamp: per camera for whole frames, per camera and track for crops. Tracks are
    runs too, not one sequence for ever: a fixed ROI (`roi0`) or a detector that reuses ids
    (class names, a constant) would otherwise put every crop of the capture's life in one
    sequence, hence one split of a later merge. Feeding images in stamp order (as a merge does)
    gives the same names as the live capture.
    """

    def __init__(self, source: str, gap_s: float = CAPTURE_GAP_S) -> None:
        self.source = source
        self.gap_ns = round(gap_s * 1e9)
        self._last: dict[tuple[str, str], tuple[str, int]] = {}

    def seed(self, camera: str, sequence: str, stamp_ns: int, track: str = "") -> None:
        """Continue the run `sequence` of `camera` (and `track`) (a resumed capture)."""
        self._last[(camera, track)] = (sequence, stamp_ns)

    def sequence(self, camera: str, stamp_ns: int, track: str = "") -> str:
        key = (camera, track)
        last = self._last.get(key)
        if last is None or abs(stamp_ns - last[1]) > self.gap_ns:
            stream = f"{camera}:id:{track}" if track else camera
            name = f"{self.source}:{stream}:{stamp_ns}"
        else:
            name = last[0]
        self._last[key] = (name, stamp_ns)
        return name


def capture_record(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`options.capture` of a capture dataset's summary; None for any other dataset."""
    options = (summary or {}).get("options")
    record = options.get("capture") if isinstance(options, Mapping) else None
    if isinstance(record, Mapping) and isinstance(record.get("source"), str):
        return dict(record)
    return None


def content_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 of the sorted pixel hashes: names a set of images (a source's `sha256`)."""
    digest = hashlib.sha256()
    for value in sorted(str(row.get("sha256", "")) for row in rows):
        digest.update(value.encode())
    return digest.hexdigest()


class CaptureStore:
    """One capture directory, locked from `open` to `release`."""

    def __init__(
        self, root: Path, source: str, context: CaptureContext, lock: DirectoryLock
    ) -> None:
        self.root = root
        self.source = source
        self.context = context
        self.lock = lock
        self.rows: dict[str, dict[str, Any]] = {}
        self.names: set[str] = set()
        self.runs = RunTracker(source)
        self.record: dict[str, Any] = {"source": source, "models": {}}
        self.unflushed = 0

    @classmethod
    def open(
        cls, config: CaptureConfig, context: CaptureContext, counts: Mapping[str, int]
    ) -> CaptureStore:
        """Create or continue the capture at `config.directory`, locked before it is read;
        `counts` are the writer's (zero) counters for the summary of a new directory."""
        root = config.directory.absolute()
        if root.exists() and not root.is_dir():
            raise CaptureError(f"capture directory {str(root)!r} is a file")
        lock = DirectoryLock(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except DirectoryLockError as err:
            raise CaptureError(str(err)) from None
        except OSError as err:
            raise CaptureError(f"cannot use capture directory {str(root)!r}: {err}") from err
        try:
            store = cls._resume_or_create(root, (config, context), lock, counts)
        except OSError as err:  # unreadable (permissions), or the first flush (a full disk)
            lock.release()
            raise CaptureError(
                f"cannot use capture directory {str(root)!r}: {one_line(err)}"
            ) from err
        except BaseException:
            lock.release()
            raise
        return store

    @classmethod
    def _resume_or_create(
        cls,
        root: Path,
        settings: tuple[CaptureConfig, CaptureContext],
        lock: DirectoryLock,
        counts: Mapping[str, int],
    ) -> CaptureStore:
        """Continue the capture in the locked `root`, or start one there (named on disk)."""
        config, context = settings
        summary = read_summary(root)
        if summary is None:
            _require_empty(root)
            name = f"{slug(root.name)[:_NAME_PART] or 'capture'}-{secrets.token_hex(4)}"
        else:
            name = _check_resumable(root, summary, capture_record(summary), context)
        store = cls(root, name, context, lock)
        store.resume(summary, config)
        if summary is None:  # name it on disk before any image lands (crash-safe resume)
            store.flush(counts)
        return store

    def resume(self, summary: Mapping[str, Any] | None, config: CaptureConfig) -> None:
        """Take over an earlier capture's rows, settings and run names; remove its leftovers."""
        self.record.update(capture_record(summary) or {})
        self.record.update(
            source=self.source,
            capture_below=config.capture_below,
            max_per_minute=config.max_per_minute,
            max_total=config.max_total,
            gap_s=CAPTURE_GAP_S,
            models={**self.record.get("models", {}), self.context.model: self.context.record()},
        )
        rows = read_manifest(self.root) if summary is not None else []
        self.rows = {row["path"]: row for row in rows}
        self.names = {row["path"].rsplit("/", 1)[-1] for row in rows}
        latest: dict[tuple[str, str], dict[str, str]] = {}
        for row in rows:
            if row.get("bag") != self.source:
                continue
            key = (row.get("camera", ""), row.get("track", ""))
            if key not in latest or int(row["stamp_ns"]) > int(latest[key]["stamp_ns"]):
                latest[key] = row
        for (camera, track), row in latest.items():
            self.runs.seed(camera, row["sequence"], int(row["stamp_ns"]), track)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temp files of an interrupted write, and images renamed into place whose row was never
        written (no row has their name; hand-moved images keep theirs)."""
        folder = self.root / CAPTURE_SPLIT / UNLABELED_DIR
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
            orphan = path.name.startswith(f"{self.source}_") and path.name not in self.names
            if (stale_tmp or orphan) and path.is_file():
                path.unlink()

    def add(self, item: CaptureItem) -> None:
        """Encode and write one image atomically and add its row (flushed later)."""
        rgb = np.ascontiguousarray(item.rgb)
        ok, buf = cv2.imencode(
            ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]
        )
        if not ok:
            raise CaptureError(f"PNG encoding of a {rgb.shape} image failed")
        stamp_ns = item.stamp_ns
        name = self._name(item, stamp_ns)
        rel = f"{CAPTURE_SPLIT}/{UNLABELED_DIR}/{name}"
        atomic_write_bytes(self.root / rel, buf.tobytes(), durable=True)
        self.names.add(name)
        self.rows[rel] = {
            "path": rel,
            "split": CAPTURE_SPLIT,
            "label": "",
            "class_dir": UNLABELED_DIR,
            "bag": self.source,
            "topic": item.topic,
            "stamp_ns": stamp_ns,
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
            "encoding": item.encoding,
            "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
            "sequence": self.runs.sequence(item.camera, stamp_ns, item.track),
            **box_columns(item.box, item.track),
            **dict(zip(CAPTURE_COLUMNS, _capture_values(item, self.context), strict=True)),
        }
        self.unflushed += 1

    def _name(self, item: CaptureItem, stamp_ns: int) -> str:
        """`<source>_<camera>_<stamp_ns>[_t<track>][_<n>].png`, unique in the directory."""
        camera = slug(item.camera.replace("/", "_"))[:_NAME_PART] or "camera"
        base = f"{self.source}_{camera}_{stamp_ns}"
        if item.track:
            base += f"_t{slug(item.track)[:_NAME_PART] or 'track'}"
        name, n = f"{base}.png", 1
        while name in self.names:
            name, n = f"{base}_{n}.png", n + 1
        return name

    def flush(self, counts: Mapping[str, int]) -> int:
        """Rewrite manifest.csv and dataset.json; returns how many new rows that listed."""
        rows = list(self.rows.values())
        mine = [row for row in rows if row.get("bag") == self.source]
        source = {
            "name": self.source,
            "kind": "capture",
            "path": str(self.root),
            "sha256": content_digest(mine),
            "images": len(mine),
        }
        with durable_writes():  # the images it lists were fsynced before: a power cut loses none
            write_dataset(
                self.root,
                rows,
                [source],
                options={"capture": self.record},
                last_run={"capture": dict(counts)},
                crop_policy=policy_record(self.context.crop_policy),
            )
        flushed, self.unflushed = self.unflushed, 0
        return flushed

    def release(self) -> None:
        self.lock.release()


def _require_empty(root: Path) -> None:
    visible = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    if visible:
        raise CaptureError(
            f"capture directory {str(root)!r} is not empty and holds no {SUMMARY_FILE} "
            f"(e.g. {visible[0]!r}); choose an empty or new directory"
        )


def _check_resumable(
    root: Path,
    summary: Mapping[str, Any],
    record: Mapping[str, Any] | None,
    context: CaptureContext,
) -> str:
    """The source name of the capture at `root` to continue; CaptureError if it is none."""
    where = f"capture directory {str(root)!r}"
    if record is None:
        raise CaptureError(
            f"{where} holds a dataset that is not a capture; choose another directory (merge "
            "captures into datasets with `tl-perception merge`)"
        )
    if summary.get("status") != "complete" or summary.get("version") not in EXTENDABLE_VERSIONS:
        raise CaptureError(
            f"{where}: {SUMMARY_FILE} has status {summary.get('status')!r}, version "
            f"{summary.get('version')!r}; choose a new directory"
        )
    old = crop_policy_of(summary, str(root / SUMMARY_FILE))
    if policy_record(old) != policy_record(context.crop_policy):
        now = "whole frames" if context.crop_policy is None else "crops of another policy"
        raise CaptureError(
            f"{where} holds {describe_policy(old)}; this model's bundle takes {now}: choose a "
            "new directory"
        )
    return str(record["source"])


def _capture_values(item: CaptureItem, context: CaptureContext) -> tuple[str, str, str, str]:
    """Values of `CAPTURE_COLUMNS`: camera, predicted, score, model."""
    return item.camera, item.predicted, f"{float(item.score):.6f}", context.model
