"""Hard-frame capture: keep the frames (or ROI crops) the model was unsure about, for labelling.

The node calls `HardFrameCapture.offer` from its hot path, so offering must cost next to nothing:
it checks the score and the limits and puts the item on a bounded queue, without I/O, encoding
or waiting; what does not fit is counted (`overflow`), never waited for. One background thread
hands each image to the capture directory (`loop.store.CaptureStore`: a PNG under a hidden
temp name renamed into `DIR/train/unlabeled/`, then `manifest.csv` and `dataset.json` rewritten
through `tl_perception.dataset`, both atomically). The directory is therefore a dataset in the
extraction format whenever anyone looks (`read_dataset` reads it, `finetune` would train on it once
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
keeps them in one split (`loop.store.RunTracker`). `tl-perception label` and `tl-perception
merge` (loop/label.py, loop/merge.py) close the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tl_perception.crop import Box, CropPolicy, is_int, is_number
from tl_perception.errors import CaptureError, one_line
from tl_perception.fsutil import file_sha256
from tl_perception.loop.store import CaptureStore
from tl_perception.stamps import SEC

if TYPE_CHECKING:
    from tl_perception.bundle import Bundle

WINDOW_S = 60.0
DEFAULT_QUEUE = 16
#: How often an idle writer looks whether it was told to stop (the sentinel usually wakes it).
_POLL_S = 0.5
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
        if not is_number(below) or not 0.0 < below <= 1.0:
            raise CaptureError(f"capture_below must be a score in (0, 1], got {below!r}")
        for name in ("max_per_minute", "max_total", "queue_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
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
        self._store = CaptureStore.open(config, context, dict.fromkeys(COUNT_KEYS, 0))
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
