"""Steady labels and "I don't know" for the node: smoothing state per stream, the unknown rule.

The node smooths one stream per camera in full-frame mode and one per camera and track id
(`Detection2D.id`, or `roi0`, ... for fixed ROIs) in ROI mode, with
`tl_perception.smoothing.LabelSmoother` (one per camera, so cameras with different clocks never
expire each other's tracks). A detection without an id cannot be followed from frame to frame:
its own scores are published, unsmoothed. Neither can an id that several detections of one frame
carry (detectors exist that put the class name or a constant there): it names no one object, so
those detections are published unsmoothed too, counted, and the id's state is dropped. State is
reset when the smoothing parameters change and when another model serves (a hot reload: class
indices may mean other classes).

The unknown rule compares the frame's (ROI's) *own* best score, the model's calibrated
probability before smoothing, with the threshold: that is the score `finetune` chose the
threshold on (the best validation score of each image), so "unknown" means what the bundle
measured, not a smoothed average it never saw.

ROS-free; used only from the pipeline's worker thread, except `tracked`, a plain int.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_perception.smoothing import LabelSmoother, SmoothingConfig

#: `unknown_threshold` value that means "the value recorded in the bundle" (any negative does).
UNKNOWN_FROM_BUNDLE = -1.0


@dataclass(frozen=True)
class UnknownThreshold:
    """The threshold in force and where it comes from (for /diagnostics and the log)."""

    value: float | None  # None: never unknown
    source: str  # "bundle", "parameter", "bundle has none", "disabled"

    def describe(self) -> str:
        if self.value is None:
            return f"off ({self.source})"
        return f"{self.value:.4g} ({self.source})"


def effective_unknown_threshold(parameter: float, recorded: float | None) -> UnknownThreshold:
    """`unknown_threshold` < 0: the bundle's recorded value (None: never unknown); 0: off;
    otherwise the parameter itself."""
    if parameter < 0.0:
        if recorded is None:
            return UnknownThreshold(None, "bundle has none")
        return UnknownThreshold(float(recorded), "bundle")
    if parameter == 0.0:
        return UnknownThreshold(None, "disabled")
    return UnknownThreshold(float(parameter), "parameter")


@dataclass(frozen=True)
class Smoothed:
    """What to publish for one stream: the (C,) scores and the class to put first."""

    scores: np.ndarray
    first: int


def stream_keys(ids: Sequence[str]) -> tuple[list[str | None], set[str]]:
    """The smoothing key of each ROI of one frame, and the ids repeated in it.

    An id is a key only when no other ROI of the frame has it; an empty id and a repeated id
    give None (published unsmoothed): boxes that share an id would share one state and mix
    their labels.
    """
    counts = Counter(ids)
    repeated = {i for i, n in counts.items() if i and n > 1}
    return [i if i and i not in repeated else None for i in ids], repeated


class LabelStage:
    """The smoothing state of all cameras; `begin` once per cycle, `smooth` per frame or ROI."""

    def __init__(self) -> None:
        self.config: SmoothingConfig | None = None
        self.tracked = 0  # streams remembered after the last cycle (read by /diagnostics)
        self.evicted = 0  # streams dropped by max_tracks, since start (read by /diagnostics)
        self._evicted_before = 0  # ... by smoothers since replaced
        self._smoothers: dict[int, LabelSmoother] = {}
        self._model: Any = None

    def begin(self, config: SmoothingConfig, model: Any) -> None:
        """Start a cycle: forget everything when the settings changed or another model serves."""
        if config != self.config or model is not self._model:
            self._evicted_before += sum(s.evicted for s in self._smoothers.values())
            self._smoothers.clear()
            self.config, self._model = config, model

    def smooth(self, camera: int, key: str | None, probs: np.ndarray, stamp_s: float) -> Smoothed:
        """One frame's (C,) probabilities for stream `key` of `camera` (None: not smoothed)."""
        config = self.config
        if key is None or config is None or config.passes_through:
            return Smoothed(probs, int(np.argmax(probs)))
        smoother = self._smoothers.get(camera)
        if smoother is None:
            smoother = self._smoothers[camera] = LabelSmoother(config)
        try:
            out = smoother.update(key, probs, stamp_s)
        except ValueError:  # non-finite scores: publish them as they are, keep the state
            return Smoothed(probs, int(np.argmax(np.nan_to_num(probs, nan=-np.inf))))
        return Smoothed(out.scores, out.class_index)

    def forget(self, camera: int, stamp_s: float) -> None:
        """Drop the camera's tracks not seen for `track_timeout_s` (a frame without them)."""
        smoother = self._smoothers.get(camera)
        if smoother is not None and math.isfinite(stamp_s):
            smoother.forget_older_than(stamp_s)

    def discard(self, camera: int, keys: set[str]) -> None:
        """Drop these streams of `camera` (ids that stopped naming one object)."""
        smoother = self._smoothers.get(camera)
        if smoother is not None:
            for key in keys:
                smoother.discard(key)

    def end(self) -> None:
        """End a cycle: count the streams remembered and those evicted by `max_tracks`."""
        self.tracked = sum(len(s) for s in self._smoothers.values())
        self.evicted = self._evicted_before + sum(s.evicted for s in self._smoothers.values())


def describe_smoothing(config: SmoothingConfig) -> str:
    """For /diagnostics: `ema (alpha 0.5), switch_frames 2, track_timeout_s 1, max_tracks 1024`."""
    mode = f"ema (alpha {config.alpha:g})" if config.mode == "ema" else "none"
    timeout = f"track_timeout_s {config.track_timeout_s:g}, max_tracks {config.max_tracks}"
    return f"{mode}, switch_frames {config.switch_frames}, {timeout}"
