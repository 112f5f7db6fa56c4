"""Steady labels and "I don't know" for the node: smoothing state per stream, the unknown rule.

The node smooths one stream per camera in full-frame mode and one per camera and track id
(`Detection2D.id`, or `roi0`, ... for fixed ROIs) in ROI mode, with
`tl_perception.smoothing.LabelSmoother` (one per camera, so cameras with different clocks never
expire each other's tracks). A detection without an id cannot be followed from frame to frame:
its own scores are published, unsmoothed. State is reset when the smoothing parameters change
and when another model serves (a hot reload: class indices may mean other classes).

ROS-free; used only from the pipeline's worker thread, except `tracked`, a plain int.
"""

from __future__ import annotations

import math
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


class LabelStage:
    """The smoothing state of all cameras; `begin` once per cycle, `smooth` per frame or ROI."""

    def __init__(self) -> None:
        self.config: SmoothingConfig | None = None
        self.tracked = 0  # streams remembered after the last cycle (read by /diagnostics)
        self._smoothers: dict[int, LabelSmoother] = {}
        self._model: Any = None

    def begin(self, config: SmoothingConfig, model: Any) -> None:
        """Start a cycle: forget everything when the settings changed or another model serves."""
        if config != self.config or model is not self._model:
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

    def end(self) -> None:
        """End a cycle: count the streams remembered."""
        self.tracked = sum(len(s) for s in self._smoothers.values())


def describe_smoothing(config: SmoothingConfig) -> str:
    """For /diagnostics: `ema (alpha 0.5), switch_frames 2, track_timeout_s 1`."""
    mode = f"ema (alpha {config.alpha:g})" if config.mode == "ema" else "none"
    timeout = f"track_timeout_s {config.track_timeout_s:g}"
    return f"{mode}, switch_frames {config.switch_frames}, {timeout}"
