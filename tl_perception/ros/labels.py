"""The node's label decision, whole: smoothing state per stream, the unknown rule, and the
hypotheses published for each frame or ROI.

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

`label_hypotheses` turns one (smoothed) score vector into what is published: the published class
first (while the smoother holds a class it is not the top score), then the others best first,
or `unknown` first when the frame's own best score (before smoothing) is below the unknown
threshold. `LabelStage.label` is the whole decision for one frame or ROI.

ROS-free; used only from the pipeline's worker thread, except the counters (plain ints) that
/diagnostics reads.
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
Hypotheses = list[tuple[str, float]]
#: The class published when the best score is below the unknown threshold. It is no class of
#: the model, so it has no index and is not in LabelInfo's class_map.
UNKNOWN_LABEL = "unknown"


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
class HypothesisRule:
    """What one cycle publishes per frame or ROI: `top_k`, `score_threshold`, and the effective
    unknown threshold (None: never unknown)."""

    top_k: int
    score_threshold: float = 0.0
    unknown_threshold: float | None = None


@dataclass(frozen=True)
class Label:
    """One frame's or ROI's answer: the published class (or `UNKNOWN_LABEL`) and its hypotheses.

    `name` is the decision even when `score_threshold` left no hypothesis, so a caller can tell a
    background ROI from one that scored low.
    """

    name: str
    hypotheses: Hypotheses

    @property
    def unknown(self) -> bool:
        return self.name == UNKNOWN_LABEL


def label_hypotheses(
    scores: np.ndarray,
    class_names: Sequence[str],
    first: int,
    rule: HypothesisRule,
    *,
    frame_best: float,
) -> Label:
    """The hypotheses of one (C,) score vector whose published class is `first`.

    `first` leads even when another class scores higher (the smoother holds it), then the rest
    follow best first (ties: lower index first, like `Classifier.classify`). When `frame_best`,
    the frame's (ROI's) own best score before any smoothing, is below
    `rule.unknown_threshold` (chosen by `finetune` on exactly such scores), `unknown` with score
    1 - `frame_best` leads and the class hypotheses follow it, so a consumer still sees what the
    model leaned to. `score_threshold` leaves out class hypotheses scoring lower; if it leaves
    out `first`, no class hypothesis is published at all, so the one after it can never stand
    in for a held class.
    """
    best = float(scores[first])
    unknown = rule.unknown_threshold is not None and frame_best < rule.unknown_threshold
    name = UNKNOWN_LABEL if unknown else str(class_names[first])
    head: Hypotheses = [(UNKNOWN_LABEL, 1.0 - float(frame_best))] if unknown else []
    room = rule.top_k - len(head)
    if room <= 0 or best < rule.score_threshold:
        return Label(name, head)
    order = np.argsort(-scores, kind="stable")[: room + 1]
    picked = [first, *[int(i) for i in order if i != first][: room - 1]]
    tail = [
        (str(class_names[i]), float(scores[i])) for i in picked if scores[i] >= rule.score_threshold
    ]
    return Label(name, head + tail)


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
    """The smoothing state of all cameras and the cycle's rule: `begin` once per cycle, `label`
    per frame or ROI, `end` after the last."""

    def __init__(self) -> None:
        self.config: SmoothingConfig | None = None
        self.tracked = 0  # streams remembered after the last cycle (read by /diagnostics)
        self.evicted = 0  # streams dropped by max_tracks, since start (read by /diagnostics)
        self.unknown_published = 0  # frames and ROIs published as unknown, since start
        self._evicted_before = 0  # ... by smoothers since replaced
        self._smoothers: dict[int, LabelSmoother] = {}
        self._model: Any = None
        self._rule = HypothesisRule(top_k=1)

    def begin(self, config: SmoothingConfig, model: Any, rule: HypothesisRule) -> None:
        """Start a cycle under `rule`: forget every stream when the smoothing settings changed
        or another model serves (a hot reload: class indices may mean other classes)."""
        if config != self.config or model is not self._model:
            self._evicted_before += sum(s.evicted for s in self._smoothers.values())
            self._smoothers.clear()
            self.config, self._model = config, model
        self._rule = rule

    def label(self, camera: int, key: str | None, probs: np.ndarray, stamp_s: float) -> Label:
        """One frame's or ROI's published label: smoothed for stream `key` of `camera` (None:
        not), the published class first, `unknown` when the frame's own best score is below
        the threshold (the kind of score the bundle chose it on)."""
        smoothed = self.smooth(camera, key, probs, stamp_s)
        own = float(np.max(probs)) if len(probs) else 0.0
        names = self._model.class_names
        label = label_hypotheses(smoothed.scores, names, smoothed.first, self._rule, frame_best=own)
        self.unknown_published += label.unknown
        return label

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

    def report(self, config: SmoothingConfig, unknown: UnknownThreshold) -> dict[str, str]:
        """/diagnostics values of the label decision under `config` and `unknown` (in force)."""
        return {
            "smoothing": describe_smoothing(config),
            "smoothed_tracks": str(self.tracked),
            "smoothed_tracks_evicted": str(self.evicted),
            "unknown_threshold": unknown.describe(),
            "unknown_published": str(self.unknown_published),
        }


def describe_smoothing(config: SmoothingConfig) -> str:
    """For /diagnostics: `ema (alpha 0.5), switch_frames 2, track_timeout_s 1, max_tracks 1024`."""
    mode = f"ema (alpha {config.alpha:g})" if config.mode == "ema" else "none"
    timeout = f"track_timeout_s {config.track_timeout_s:g}, max_tracks {config.max_tracks}"
    return f"{mode}, switch_frames {config.switch_frames}, {timeout}"
