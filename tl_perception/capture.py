"""Hard-frame capture: keep the frames (or ROI crops) the model was unsure about, for labelling.

The node calls `HardFrameCapture.offer` from its hot path, so offering must cost next to nothing:
it checks the score and the limits and puts the item on a bounded queue, without I/O, encoding
or waiting; what does not fit is counted (`overflow`), never waited for. One background thread
encodes PNGs, writes each under a hidden temp name and renames it into
`DIR/train/unlabeled/`, then rewrites `manifest.csv` and `dataset.json` through
`tl_perception.dataset` (both atomically). The directory is therefore a dataset in the extraction
format whenever anyone looks (`read_dataset` reads it, `finetune` would train on it once
labelled), and an interrupted capture loses at most the images still in the queue. Every write is
durable (`fsutil.durable_writes`: file and directory fsynced), so a car's power cut, too, leaves
a directory whose manifest lists only images that are on the disk.

The limits protect the car's disk: `max_per_minute` over a sliding 60 s window of wall time
(monotonic), `max_total` over the directory's whole life, so a capture resumed after a restart
counts what is already there. A disk that fails (full, unplugged, read-only) is logged once and
counted (`write_errors`); it never raises into the caller. `close` waits a bounded time: a writer
still busy then finishes the image it is writing, drops the rest (counted, `abandoned`) and
releases the directory, so the next capture of the process can open it.

Rows carry, beside the extraction columns, the camera, the predicted class, its score and the
model (`dataset.CAPTURE_COLUMNS`); `sequence` groups near-identical captures so that a later merge
keeps them in one split: one camera's frames, or one track's crops, without a gap over `gap_s`.
`tl-perception label` and `tl-perception merge` (tl_perception/loop/) close the loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from tl_perception.crop import Box, CropPolicy
from tl_perception.dataset import (
    CAPTURE_COLUMNS,
    EXTENDABLE_VERSIONS,
    SUMMARY_FILE,
    UNLABELED_DIR,
    crop_policy_of,
    read_manifest,
    read_summary,
    slug,
    write_dataset,
)
from tl_perception.errors import TlPerceptionError, one_line
from tl_perception.fsutil import atomic_write_bytes, durable_writes, file_sha256
from tl_perception.stamps import SEC

if TYPE_CHECKING:
    from tl_perception.bundle import Bundle

#: Captured images land in `<CAPTURE_SPLIT>/unlabeled/`, where `extract --unlabeled` puts them.
CAPTURE_SPLIT = "train"
#: Frames of one camera closer than this (in stamp time) are one sequence. Captures are sparse
#: (rate-limited, only hard frames), so the gap is wider than extraction's 2 s.
CAPTURE_GAP_S = 5.0
WINDOW_S = 60.0
LOCK_FILE = ".tl_perception.lock"
DEFAULT_QUEUE = 16
#: How often an idle writer looks whether it was told to stop (the sentinel usually wakes it).
_POLL_S = 0.5
#: Camera and track names are shortened in file names, which must stay under 255 bytes.
_NAME_PART = 40
COUNT_KEYS: tuple[str, ...] = (
    "offered",
    "below_threshold",
    "queued",
    "written",
    "skipped_rate_limit",
    "skipped_total_limit",
    "overflow",
    "write_errors",
    "invalid",
    "existing",
    "abandoned",
)

Log = Callable[[str], None]


class CaptureError(TlPerceptionError):
    """A capture that cannot start: bad settings, or a directory that is not ours to write."""


@dataclass(frozen=True)
class CaptureConfig:
    """Where and how much to capture (node parameters `capture_*`).

    `capture_below`: frames whose best score is below it are hard (0 < value <= 1).
    `max_per_minute`: at most this many images in any 60 s of wall time.
    `max_total`: at most this many images in the directory, counting earlier runs.
    `queue_size`: images waiting for the writer; more are counted as `overflow`.
    """

    directory: Path
    capture_below: float
    max_per_minute: int = 30
    max_total: int = 1000
    queue_size: int = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        raw: Any = self.directory  # a str from a ROS parameter is fine too
        if not isinstance(raw, (str, os.PathLike)) or not os.fspath(raw):
            raise CaptureError(f"capture directory must be a path, got {raw!r}")
        object.__setattr__(self, "directory", Path(raw).expanduser())
        below = self.capture_below
        if not _is_number(below) or not 0.0 < below <= 1.0:
            raise CaptureError(f"capture_below must be a score in (0, 1], got {below!r}")
        for name in ("max_per_minute", "max_total", "queue_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise CaptureError(f"capture {name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class CaptureContext:
    """What the manifest records about the model that judged the frames.

    `crop_policy` is the bundle's (None: whole frames); it becomes the dataset's `crop_policy`,
    so a merge can refuse crops cut another way than the dataset's.
    """

    bundle_path: str
    bundle_sha256: str
    class_names: tuple[str, ...]
    crop_policy: CropPolicy | None = None

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> CaptureContext:
        """Hashes model.keras (reads the file: call it when the model is loaded, not per frame)."""
        digest = file_sha256(bundle.model_path)
        return cls(str(bundle.path), digest, bundle.class_names, bundle.crop_policy)

    @property
    def model(self) -> str:
        """The short fingerprint in each row's `model` column."""
        return self.bundle_sha256[:12]

    def record(self) -> dict[str, Any]:
        return {
            "path": self.bundle_path,
            "sha256": self.bundle_sha256,
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class CaptureItem:
    """One hard image: a whole frame, or a crop the caller cut with `crop.crop_roi`.

    `rgb` is kept as it is, not copied: do not modify it after offering (decoded frames and crops
    are fresh arrays). `stamp` is the image header's (sec, nanosec); `box` (pixels of the source
    frame) and `track` are set in ROI mode; `topic` and `encoding` describe the source message.
    """

    rgb: np.ndarray
    camera: str
    stamp: tuple[int, int]
    predicted: str
    score: float
    box: Box | None = None
    track: str = ""
    topic: str = ""
    encoding: str = ""

    @property
    def stamp_ns(self) -> int:
        return int(self.stamp[0]) * SEC + int(self.stamp[1])


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


class DirectoryLock:
    """An exclusive `flock` on `DIR/.tl_perception.lock`: one writer per dataset directory.

    Held by a running capture and by `label`, so labels are never applied to a directory the node
    is still rewriting. The kernel drops it when the process dies, so a crash leaves no stale
    lock; the file is removed on release (after checking that it is still the one we locked).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CaptureError(
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
        raise CaptureError(f"cannot lock {str(self.path)!r}: it keeps being replaced")

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
    """Hold `DirectoryLock(root)` for a block (CaptureError when someone else holds it).

    `read_only`: the block only reads `root`; where no lock file can be created (read-only
    media), no capture can be writing there either, so it runs unlocked.
    """
    if not root.is_dir():
        raise CaptureError(f"{str(root)!r} does not exist or is not a directory")
    lock = DirectoryLock(root)
    try:
        lock.acquire()
    except OSError as err:
        if not read_only:
            raise CaptureError(f"cannot lock {str(root)!r}: {one_line(err)}") from err
    try:
        yield
    finally:
        lock.release()  # a no-op when it was never acquired


@dataclass
class _Counts:
    """Counters shared by `offer` (hot path) and the writer thread, under one lock."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    reserved: int = 0  # images in the directory or on their way there (for max_total)
    window: deque[float] = field(default_factory=deque)  # accept times of the last minute


class HardFrameCapture:
    """Capture hard frames into a dataset directory, on a thread of its own.

    Opening reads the directory (resume) and takes its lock: do it when the node configures, not
    per frame. `offer` is cheap and never raises for disk trouble; `close` flushes.

    Raises:
        CaptureError, DatasetError: the directory cannot be created or locked, holds something
            that is not a capture, or a capture whose crop policy differs from the bundle's.
    """

    def __init__(
        self,
        config: CaptureConfig,
        context: CaptureContext,
        *,
        log: Log | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ) -> None:
        self.config = config
        self._log = log or logging.getLogger(__name__).warning
        self._clock = clock
        self._store = _CaptureDir.open(config, context)
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._counts.values["existing"] = self._counts.reserved = len(self._store.rows)
        self._queue: queue.Queue[CaptureItem | None] = queue.Queue(config.queue_size)
        self._closed = False
        self._stopping = threading.Event()  # close(): write what is queued, then end
        self._abandon = threading.Event()  # close() timed out: drop what is still queued
        self._error_logged = False
        self._thread = threading.Thread(target=self._run, name="hard-frame-capture", daemon=True)
        if self._counts.reserved >= config.max_total:
            self._log(
                f"capture {str(self.directory)!r} already holds {self._counts.reserved} images "
                f"(capture_max_total {config.max_total}): nothing more will be captured"
            )
        if start:
            self.start()

    @property
    def directory(self) -> Path:
        return self._store.root

    @property
    def source(self) -> str:
        """The capture's name in the manifest's `bag` column and in `sources`."""
        return self._store.source

    def start(self) -> None:
        """Start the writer (done by the constructor unless `start=False`)."""
        if not self._thread.is_alive() and not self._closed:
            self._thread.start()

    def offer(self, item: CaptureItem) -> bool:
        """Queue `item` when its score is below `capture_below` and the limits allow.

        Never blocks and does no I/O: True when queued, False when not hard, over a limit, the
        queue is full (`overflow`), the item is malformed (`invalid`) or the capture is closed.
        """
        now = self._clock()
        with self._lock:
            values = self._counts.values
            values["offered"] += 1
            if self._closed:
                return False
            score = _score(item)
            if score is None or not _is_frame(item.rgb):
                values["invalid"] += 1
                return False
            if score >= self.config.capture_below:
                return False
            values["below_threshold"] += 1
            return self._admit(item, now)

    def _admit(self, item: CaptureItem, now: float) -> bool:
        """The limits, then the queue (called under the lock)."""
        counts, values = self._counts, self._counts.values
        if counts.reserved >= self.config.max_total:
            values["skipped_total_limit"] += 1
            return False
        window = counts.window
        while window and window[0] <= now - WINDOW_S:
            window.popleft()
        if len(window) >= self.config.max_per_minute:
            values["skipped_rate_limit"] += 1
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            values["overflow"] += 1
            return False
        window.append(now)
        counts.reserved += 1
        values["queued"] += 1
        return True

    def counts(self) -> dict[str, int]:
        """Counters for /diagnostics (`COUNT_KEYS`, plus `pending`: images still queued)."""
        with self._lock:
            out = dict(self._counts.values)
        out["pending"] = self._queue.qsize()
        return out

    def close(self, timeout: float = 5.0) -> bool:
        """Stop accepting, write what is queued, release the directory.

        True when everything was written (or failed and was counted) within `timeout` seconds.
        False when the writer was still busy then: it finishes the image it is writing, drops
        the rest (counted as `abandoned`) and releases the directory moments later on its own
        (`wait` for it). Either way the directory is never held for ever.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            self._closed = True
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes an idle writer at once (else it polls)
        if self._thread.ident is None:
            self._thread.start()  # never started: write what was queued before closing
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """After `close`: wait up to `timeout` s for the writer to end; True once it has (the
        directory is free)."""
        if self._thread.ident is not None:
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def __enter__(self) -> HardFrameCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch:
                    self._write(batch)
                if self._stopping.is_set() and self._queue.empty():
                    return  # closed and everything written (or abandoned)
        finally:
            self._store.release()

    def _take(self) -> list[CaptureItem]:
        """What is queued now (waiting up to `_POLL_S` for the first item); [] once abandoned."""
        try:
            batch = [self._queue.get(timeout=_POLL_S)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while len(batch) < self.config.queue_size + 1:
                batch.append(self._queue.get_nowait())
        items = [item for item in batch if item is not None]
        if self._abandon.is_set():
            self._drop(len(items))
            return []
        return items

    def _drop(self, count: int) -> None:
        """Images never written because close timed out: counted, their max_total slots freed."""
        with self._lock:
            self._counts.values["abandoned"] += count
            self._counts.reserved -= count

    def _write(self, items: list[CaptureItem]) -> None:
        for done, item in enumerate(items):
            if self._abandon.is_set():
                self._drop(len(items) - done)
                break
            try:
                self._store.add(item)
            except Exception as err:  # a full disk or anything else: count it, keep capturing
                self._failed(err)
                with self._lock:
                    self._counts.reserved -= 1  # its slot of max_total is free again
        if not self._store.unflushed:
            return
        counts = self.counts()
        counts["written"] += self._store.unflushed  # as it will be once this flush is done
        try:
            flushed = self._store.flush(counts)
        except Exception as err:  # a full disk or anything else: count it, keep capturing
            self._failed(err)  # the rows stay pending; the next batch writes them again
            return
        with self._lock:
            self._counts.values["written"] += flushed

    def _failed(self, err: BaseException) -> None:
        with self._lock:
            self._counts.values["write_errors"] += 1
            first = not self._error_logged
            self._error_logged = True
        if first:
            self._log(
                f"capture to {str(self.directory)!r} failed: {one_line(err)}; further errors "
                "are only counted (write_errors)"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _score(item: Any) -> float | None:
    try:
        score = float(item.score)
    except (TypeError, ValueError, AttributeError):
        return None
    return score if math.isfinite(score) else None


def _is_frame(rgb: Any) -> bool:
    return (
        isinstance(rgb, np.ndarray)
        and rgb.dtype == np.uint8
        and rgb.ndim == 3
        and rgb.shape[2] == 3
        and rgb.size > 0
    )


class _CaptureDir:
    """The capture directory on disk; after `open`, only the writer thread touches it."""

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
    def open(cls, config: CaptureConfig, context: CaptureContext) -> _CaptureDir:
        """Create or continue the capture at `config.directory`, locked before it is read."""
        root = config.directory.absolute()
        if root.exists() and not root.is_dir():
            raise CaptureError(f"capture directory {str(root)!r} is a file")
        lock = DirectoryLock(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as err:
            raise CaptureError(f"cannot use capture directory {str(root)!r}: {err}") from err
        try:
            store = cls._resume_or_create(root, config, context, lock)
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
        cls, root: Path, config: CaptureConfig, context: CaptureContext, lock: DirectoryLock
    ) -> _CaptureDir:
        """Continue the capture in the locked `root`, or start one there (named on disk)."""
        summary = read_summary(root)
        if summary is None:
            _require_empty(root)
            name = f"{slug(root.name)[:_NAME_PART] or 'capture'}-{secrets.token_hex(4)}"
        else:
            name = _check_resumable(root, summary, capture_record(summary), context)
        store = cls(root, name, context, lock)
        store.resume(summary, config)
        if summary is None:  # name it on disk before any image lands (crash-safe resume)
            store.flush(dict.fromkeys(COUNT_KEYS, 0))
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
            **_box_columns(item),
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
                crop_policy=_policy_record(self.context.crop_policy),
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
    if _policy_record(old) != _policy_record(context.crop_policy):
        what = "whole frames" if old is None else f"crops cut with {old.to_dict()}"
        now = "whole frames" if context.crop_policy is None else "crops of another policy"
        raise CaptureError(
            f"{where} holds {what}; this model's bundle takes {now}: choose a new directory"
        )
    return str(record["source"])


def _policy_record(policy: CropPolicy | None) -> dict[str, Any] | None:
    return policy.to_dict() if policy is not None else None


def _box_columns(item: CaptureItem) -> dict[str, str]:
    """`box_x, box_y, box_w, box_h` (exact float text) and `track`, as extraction writes them."""
    if item.box is None:
        return {"track": item.track} if item.track else {}
    x, y, w, h = item.box.to_xywh()
    return {
        "box_x": repr(x),
        "box_y": repr(y),
        "box_w": repr(w),
        "box_h": repr(h),
        "track": item.track,
    }


def _capture_values(item: CaptureItem, context: CaptureContext) -> tuple[str, str, str, str]:
    """Values of `CAPTURE_COLUMNS`: camera, predicted, score, model."""
    return item.camera, item.predicted, f"{float(item.score):.6f}", context.model
