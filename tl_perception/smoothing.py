"""Labels that do not flicker: per-stream EMA of the class probabilities plus switch hysteresis.

One frame's argmax flips whenever a frame is blurred, dark or half occluded; a planner that
reacts to every flip brakes for a stop sign that was a glitch. `LabelSmoother` keeps, per
stream key (a camera name in full-frame mode, camera + track id in ROI mode):

- the *scores*: an exponential moving average of the probability vectors (mode ``"ema"``) or
  the newest vector itself (mode ``"none"``). An EMA of distributions is a distribution, so
  what is published as scores still sums to 1;
- the *published class*: it changes only after another class has led the scores for
  `switch_frames` consecutive frames (Apollo's `hysteretic_threshold_count`, for every class).

Time is the message stamp, never the wall clock, so a bag replay behaves as the drive did: a key
not updated for `track_timeout_s` is forgotten (Autoware holds a colour for 2 s, Apollo revises
over 1.5 s), and a stamp that goes backwards (a bag loop, a simulator reset, a restarted driver)
restarts every key: the clock jumped, so no state from before the jump means anything after it.

Memory is bounded whatever the stamps do: at most `max_tracks` keys are kept, the least recently
seen one evicted (and counted) first, so a detector that invents an id per box, or frames whose
stamp never advances (unstamped: no key ever times out), cannot grow it without limit. Keys are
kept in the order they were last seen, which is also stamp order (stamps only move forward
between jumps), so expiry and eviction look at the oldest end only: O(1) amortised per update.
The measurement behind the defaults is in docs/performance.md ("Smoothing: flicker against
delay"). ROS-free (numpy only), so it is tested and benchmarked without rclpy.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from tl_perception.crop import is_int, is_number
from tl_perception.errors import TlPerceptionError

SmoothingMode = Literal["none", "ema"]
SMOOTHING_MODES: tuple[str, ...] = get_args(SmoothingMode)

# The defaults, chosen from bench/bench_smoothing.py (docs/performance.md gives the table).
DEFAULT_MODE: SmoothingMode = "ema"
DEFAULT_ALPHA = 0.5
DEFAULT_SWITCH_FRAMES = 2
DEFAULT_TRACK_TIMEOUT_S = 1.0
#: Keys kept per smoother (one per camera). 32 new ids per frame at 30 Hz for a 1 s timeout are
#: 960 live tracks; a few hundred bytes each, 1024 of them cost well under 1 MB.
DEFAULT_MAX_TRACKS = 1024


@dataclass(frozen=True)
class SmoothingConfig:
    """How labels are smoothed; invalid values raise `TlPerceptionError` with one line.

    `alpha` is the weight of the newest frame in the EMA (1.0 = no memory; ignored, but still
    checked, in mode ``"none"``). `switch_frames` = 1 publishes the leader at once; it applies in
    both modes, so ``mode="none", switch_frames=3`` is hysteresis on raw scores.
    """

    mode: SmoothingMode = DEFAULT_MODE
    alpha: float = DEFAULT_ALPHA
    switch_frames: int = DEFAULT_SWITCH_FRAMES
    track_timeout_s: float = DEFAULT_TRACK_TIMEOUT_S
    max_tracks: int = DEFAULT_MAX_TRACKS

    def __post_init__(self) -> None:
        if self.mode not in SMOOTHING_MODES:
            raise TlPerceptionError(
                f"smoothing must be one of {', '.join(SMOOTHING_MODES)}; got {self.mode!r}"
            )
        if not is_number(self.alpha) or not 0.0 < self.alpha <= 1.0:
            raise TlPerceptionError(f"smoothing_alpha must be in (0, 1]; got {self.alpha!r}")
        if not is_int(self.switch_frames) or self.switch_frames < 1:
            raise TlPerceptionError(
                f"switch_frames must be an integer >= 1; got {self.switch_frames!r}"
            )
        if not is_number(self.track_timeout_s) or not self.track_timeout_s > 0.0:
            raise TlPerceptionError(
                f"track_timeout_s must be a positive number of seconds; got "
                f"{self.track_timeout_s!r}"
            )
        if not is_int(self.max_tracks) or self.max_tracks < 1:
            raise TlPerceptionError(f"max_tracks must be an integer >= 1; got {self.max_tracks!r}")

    @property
    def passes_through(self) -> bool:
        """True when `update` returns its input unchanged (no EMA, no hysteresis)."""
        return self.mode == "none" and self.switch_frames == 1


@dataclass(frozen=True)
class Smoothed:
    """One update's answer.

    `scores` (C,) float64 is what to publish as scores: a distribution when the inputs are.
    `class_index` is the class to publish first; while `held` is true another class leads
    `scores` but has not led for `switch_frames` frames yet, so the old class is kept.
    """

    scores: np.ndarray
    class_index: int
    held: bool

    @property
    def score(self) -> float:
        """The published class's score."""
        return float(self.scores[self.class_index])


@dataclass
class _Track:
    """What one key remembers between frames."""

    scores: np.ndarray
    published: int
    candidate: int
    streak: int
    stamp_s: float


class LabelSmoother:
    """Per-key smoothing state; see the module docstring for the rules.

    Not thread-safe: the node calls it from its one worker thread. Code that shares one
    instance between threads must hold a lock around every call. `evicted` and `restarts`
    count keys dropped by `max_tracks` and backward stamp jumps, since creation.
    """

    def __init__(self, config: SmoothingConfig | None = None) -> None:
        self.config = config or SmoothingConfig()
        self._tracks: OrderedDict[str, _Track] = OrderedDict()  # least recently seen first
        self._num_classes: int | None = None
        self._newest = -math.inf  # the latest stamp seen since the last jump
        self.evicted = 0
        self.restarts = 0

    def __len__(self) -> int:
        """Keys remembered now (e.g. for /diagnostics)."""
        return len(self._tracks)

    def keys(self) -> list[str]:
        return list(self._tracks)

    def reset(self) -> None:
        """Forget every key; call it on a model reload (class indices may mean other classes)."""
        self._tracks.clear()
        self._num_classes = None
        self._newest = -math.inf

    def discard(self, key: str) -> None:
        """Forget one key (e.g. an id that stopped naming one object)."""
        self._tracks.pop(key, None)

    def forget_older_than(self, now_s: float) -> int:
        """Advance the clock to `now_s`: drop the keys not seen for more than `track_timeout_s`.

        A `now_s` before the latest stamp seen is a jump back (a bag loop, a reset simulator):
        every key is dropped, counted in `restarts`. Returns how many keys were dropped.
        """
        if now_s < self._newest:
            dropped = len(self._tracks)
            self._tracks.clear()
            self.restarts += 1
            self._newest = now_s
            return dropped
        self._newest = now_s
        limit, dropped = now_s - self.config.track_timeout_s, 0
        while self._tracks:
            oldest = next(iter(self._tracks.values()))
            if oldest.stamp_s >= limit:
                break
            self._tracks.popitem(last=False)
            dropped += 1
        return dropped

    def update(self, key: str, probs: np.ndarray, stamp_s: float) -> Smoothed:
        """Fold one frame's (C,) class probabilities for `key` at `stamp_s` into its state.

        A new number of classes (another bundle) resets every key first; a stamp before the
        latest one seen restarts every key (`forget_older_than`). Raises ValueError for a
        non-finite stamp or a vector that is not 1-D, empty or non-finite (the state is left
        untouched then).
        """
        vector = _checked_vector(probs)
        if not math.isfinite(stamp_s):
            raise ValueError(f"stamp_s must be finite, got {stamp_s!r}")
        if self._num_classes != vector.size:
            self.reset()
            self._num_classes = vector.size
        self.forget_older_than(stamp_s)
        track = self._tracks.get(key)
        if track is None:
            return self._start(key, vector, stamp_s)
        self._tracks.move_to_end(key)
        return self._advance(track, vector, stamp_s)

    def _start(self, key: str, vector: np.ndarray, stamp_s: float) -> Smoothed:
        """A key's first frame: nothing to hold, so its leader is published at once. Beyond
        `max_tracks` keys the least recently seen one goes."""
        leader = int(np.argmax(vector))
        self._tracks[key] = _Track(vector, leader, leader, 0, stamp_s)
        while len(self._tracks) > self.config.max_tracks:
            self._tracks.popitem(last=False)
            self.evicted += 1
        return Smoothed(vector.copy(), leader, held=False)

    def _advance(self, track: _Track, vector: np.ndarray, stamp_s: float) -> Smoothed:
        if self.config.mode == "ema":
            alpha = self.config.alpha
            track.scores = alpha * vector + (1.0 - alpha) * track.scores
        else:
            track.scores = vector
        track.stamp_s = stamp_s
        leader = int(np.argmax(track.scores))
        if leader == track.published:
            track.streak = 0
        else:
            track.streak = track.streak + 1 if leader == track.candidate else 1
            track.candidate = leader
            if track.streak >= self.config.switch_frames:
                track.published, track.streak = leader, 0
        return Smoothed(track.scores.copy(), track.published, held=leader != track.published)


def _checked_vector(probs: np.ndarray) -> np.ndarray:
    """`probs` as a float64 (C,) copy (float32 converts exactly), or ValueError."""
    vector = np.array(probs, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"probs must be a non-empty (C,) vector, got shape {vector.shape}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("probs holds NaN or infinity")
    return vector
