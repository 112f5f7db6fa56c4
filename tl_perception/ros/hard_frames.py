"""The node's hard-frame capture: `loop.capture.HardFrameCapture` tied to the node's life.

Opened when the node activates (it reads the directory, takes its lock and hashes model.keras:
never on the hot path), closed on deactivate and on shutdown (it writes what is queued and
releases the directory), reopened with the new bundle after a hot reload. The worker only calls
`offer`, which never blocks and never does I/O. Frames are captured whole in full-frame mode;
in ROI mode the crops the pipeline cut (the bundle's crop policy, or the exact box for a bundle
without one, which is then recorded as the capture's policy: crops are never whole frames).

Capture is optional, so no capture problem ever stops the node: a directory that cannot be used
when the node activates or after a hot reload (a bundle with another crop policy than the
directory holds, a dataset.json or manifest truncated by a power cut, no permission, a full disk
at the first write, a previous writer of this process still busy) turns the capture off with one
WARN line; /diagnostics shows `capture` = `off: <reason>` (WARN) until a later reload or the
next activate opens it, and classification goes on. A writer that does not finish within
`CLOSE_TIMEOUT_S` of a close drops what is still queued (counted) and ends after its current
image; the next open waits for it, so the directory's lock is never held for ever.

ROS-free (the logger is any object with `info`, `warning` and `error`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tl_perception.bundle import Bundle
from tl_perception.errors import CaptureError, TlPerceptionError, one_line
from tl_perception.loop.capture import (
    COUNT_KEYS,
    CaptureConfig,
    CaptureContext,
    CaptureItem,
    HardFrameCapture,
)
from tl_perception.ros.diagnostics import ExtraStatus
from tl_perception.ros.rois import policy_for

CLOSE_TIMEOUT_S = 5.0
#: How long an open waits for a previous writer of this process that is still finishing.
PREVIOUS_WRITER_WAIT_S = 10.0
#: Counters that describe the directory now rather than add up over the node's life.
_NOT_SUMMED = ("existing", "pending")


class HardFrames:
    """The node's capture: `open` / `reopen` / `close` from the node, `offer` from the worker."""

    def __init__(
        self,
        config: CaptureConfig | None,
        roi_mode: bool,
        logger: Any,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        """`config` None: capture off (`capture_dir` empty)."""
        self._config = config
        self._close_timeout_s = close_timeout_s
        self._roi_mode = roi_mode
        self._logs = logger
        self._lock = threading.Lock()  # the counters and the swap (worker, timer threads)
        self._life = threading.Lock()  # open / reopen / close (executor and reload threads)
        self._wanted = False  # open between activate and deactivate
        # The open capture and the bundle it records, swapped as one reference (the worker reads
        # it without a lock).
        self._active: tuple[HardFrameCapture, Bundle] | None = None
        self._finishing: list[HardFrameCapture] = []  # closed, writer still busy (a slow disk)
        self._failed = ""  # why the capture is off although it was asked for
        self._closed_counts: dict[str, int] = dict.fromkeys(COUNT_KEYS, 0)
        self._errors_reported = 0

    @property
    def enabled(self) -> bool:
        """Whether `capture_dir` asks for a capture (it may still be closed or have failed)."""
        return self._config is not None

    def open(self, serving: Callable[[], Bundle]) -> None:
        """Open for the bundle `serving()` returns (activate); it is asked under the lock that
        `reopen` takes, so a hot reload racing the activate always ends with the new bundle.
        Never raises: a directory that cannot be used turns the capture off (one WARN)."""
        if self._config is None:
            return
        with self._life:
            self._wanted = True
            self._open_for(serving(), "activate")

    def reopen(self, bundle: Bundle) -> None:
        """After a hot reload, while open (or off since an earlier failure): close, then open
        for the new bundle, exactly as an activate opens it. Never raises."""
        if self._config is None:
            return
        with self._life:
            if not self._wanted:
                return  # inactive: the next activate opens it for the bundle serving then
            self._open_for(bundle, "model reload")

    def _open_for(self, bundle: Bundle, when: str) -> None:
        """Close what is open, then open for `bundle`; a failure is one WARN and `off: why`."""
        assert self._config is not None
        self._close_active()  # the directory's lock is one writer's
        self._wait_for_finishing()
        try:
            capture = self._make(bundle)
        except (TlPerceptionError, OSError) as err:
            reason = one_line(err)
            self._swap(None, reason)
            self._logs.warning(
                f"hard-frame capture is off ({when}): {reason}; classifying without it"
            )
            return
        self._swap((capture, bundle), "")
        self._logs.info(
            f"capturing hard {'crops' if self._roi_mode else 'frames'} (best score < "
            f"{self._config.capture_below:g}) into {str(capture.directory)!r} for "
            f"{str(bundle.path)!r}"
        )

    def _wait_for_finishing(self) -> None:
        """Wait for writers that outlived their close (each ends after its current image);
        one still busy after `PREVIOUS_WRITER_WAIT_S` holds the lock, so the open fails."""
        with self._lock:
            busy = list(self._finishing)
        deadline = time.monotonic() + PREVIOUS_WRITER_WAIT_S
        for capture in busy:
            capture.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._settle()

    def close(self) -> None:
        """Write what is queued and release the directory (deactivate, cleanup, shutdown);
        idempotent."""
        with self._life:
            self._wanted = False
            self._close_active()
            self._swap(None, "")

    def _close_active(self) -> None:
        with self._lock:
            active, self._active = self._active, None
        if active is None:
            return
        capture = active[0]
        if capture.close(timeout=self._close_timeout_s):
            with self._lock:
                self._add_counts(capture)
            return
        with self._lock:
            self._finishing.append(capture)  # its counts still change: summed once it ends
        self._logs.warning(
            f"hard-frame capture: the writer of {str(capture.directory)!r} did not finish "
            f"within {self._close_timeout_s:g} s; the {capture.counts()['pending']} image(s) still "
            "queued are dropped (counted as capture_abandoned)"
        )

    def _add_counts(self, capture: HardFrameCapture) -> None:
        """Fold a finished capture's counters into the totals (under `_lock`)."""
        counts = capture.counts()
        for key in COUNT_KEYS:
            if key not in _NOT_SUMMED:
                self._closed_counts[key] += counts[key]

    def _settle(self) -> list[HardFrameCapture]:
        """Fold the writers that ended since into the totals; the ones still busy (`_lock`)."""
        busy = []
        for capture in self._finishing:
            if capture.wait(0.0):
                self._add_counts(capture)
            else:
                busy.append(capture)
        self._finishing = busy
        return list(busy)

    def offer(self, item: CaptureItem, bundle: Bundle) -> bool:
        """Hot path: queue `item` if it is hard and the limits allow; never blocks. An item of
        another bundle than the capture's (a reload in between) is not offered."""
        active = self._active
        if active is None or bundle is not active[1]:
            return False
        return active[0].offer(item)

    def report(self) -> ExtraStatus:
        """Values `capture`, `capture_<counter>`; WARN while capture failed or disk errors came
        during the last period."""
        if self._config is None:
            return ExtraStatus({"capture": "off"})
        with self._lock:
            capture = self._active[0] if self._active is not None else None
            failed = self._failed
            finishing = self._settle()
            totals = dict(self._closed_counts)
        now = capture.counts() if capture is not None else {"pending": 0, "existing": 0}
        for key, value in now.items():
            totals[key] = value if key in _NOT_SUMMED else totals.get(key, 0) + value
        for other in finishing:  # closed but still writing: its counts so far
            for key, value in other.counts().items():
                if key not in _NOT_SUMMED:
                    totals[key] += value
        if failed:
            state = f"off: {failed}"
        else:
            state = str(capture.directory) if capture is not None else "closed"
        values = {"capture": state, **{f"capture_{k}": str(v) for k, v in totals.items()}}
        warnings = [f"capture {state}"] if failed else []
        new_errors = totals["write_errors"] - self._errors_reported
        self._errors_reported = totals["write_errors"]
        if new_errors > 0:
            warnings.append(f"{new_errors} capture write error(s) this period")
        return ExtraStatus(values, tuple(warnings))

    def _make(self, bundle: Bundle) -> HardFrameCapture:
        assert self._config is not None
        try:
            context = CaptureContext.from_bundle(bundle)
        except OSError as err:
            raise CaptureError(f"cannot read {str(bundle.model_path)!r}: {err}") from err
        policy = policy_for(bundle) if self._roi_mode else None
        context = replace(context, crop_policy=policy)
        return HardFrameCapture(self._config, context, log=self._logs.warning)

    def _swap(self, active: tuple[HardFrameCapture, Bundle] | None, failed: str) -> None:
        with self._lock:
            self._active, self._failed = active, failed
