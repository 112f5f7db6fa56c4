"""A stand-in for a real object detector: the ground truth degraded the way detectors degrade it.

Per frame and true object: missed with probability `miss`; otherwise each box edge moves by a
normal offset of `jitter` times the box side (clamped to the frame), with a detector-like score
in [0.5, 1). False positives fire on background: short tracks (1-3 frames, own `fp-<n>` id) of
sign-sized boxes that overlap no true object, `false_positives` boxes per frame on average.
Detections carry the detector's generic category ("sign" or "vehicle"), never the truth class:
the classifier is what names them. False positives are labelled "sign" (a sign detector firing on
a sign-coloured patch). Deterministic: every draw comes from (seed, frame) or (seed, track).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tl_perception.crop import Box
from tl_perception.errors import TlPerceptionError
from tl_perception.synth.road import TruthObject

FALSE_POSITIVE_FRAMES = (1, 3)
FALSE_POSITIVE_CATEGORY = "sign"
DEFAULT_NOISE_LEVEL = 0.5
_LEVEL_SCALE = {"miss": 0.2, "fp": 0.5, "jitter": 0.08}  # rates at level 1.0


@dataclass(frozen=True)
class DetectorNoise:
    """How far `/detections` is from the truth: a miss rate per true box, false positives per
    frame (mean) and box-edge jitter as a fraction of the box side."""

    miss: float = 0.0
    false_positives: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.miss <= 1.0 or not math.isfinite(self.miss):
            raise TlPerceptionError(f"--detector-noise miss must be in [0, 1], got {self.miss}")
        for name in ("false_positives", "jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 10.0 or not math.isfinite(value):
                raise TlPerceptionError(f"--detector-noise {name} must be in [0, 10], got {value}")

    @classmethod
    def from_level(cls, level: float) -> DetectorNoise:
        """One knob: level 1.0 = 20% misses, 0.5 false positives per frame, 8% jitter."""
        if not 0.0 <= level <= 5.0:
            raise TlPerceptionError(f"--detector-noise level must be in [0, 5], got {level}")
        scale = _LEVEL_SCALE
        return cls(
            miss=min(1.0, scale["miss"] * level),
            false_positives=scale["fp"] * level,
            jitter=scale["jitter"] * level,
        )

    @classmethod
    def parse(cls, text: str) -> DetectorNoise:
        """`0.5` (a level) or `miss=0.1,fp=0.3,jitter=0.05` (rates; unnamed ones are 0)."""
        text = text.strip()
        try:
            if "=" not in text:
                return cls.from_level(float(text))
            rates = {"miss": 0.0, "fp": 0.0, "jitter": 0.0}
            for item in text.split(","):
                key, _, value = item.partition("=")
                key = key.strip()
                if key not in rates:
                    raise TlPerceptionError(
                        f"--detector-noise: unknown rate {key!r}; use miss, fp, jitter"
                    )
                rates[key] = float(value)
        except ValueError:
            raise TlPerceptionError(
                f"--detector-noise {text!r}: expected a level such as 0.5 or "
                "miss=0.1,fp=0.3,jitter=0.05"
            ) from None
        return cls(miss=rates["miss"], false_positives=rates["fp"], jitter=rates["jitter"])


@dataclass(frozen=True)
class Detection:
    """One box of a Detection2DArray: track id, best class and score, box in pixels."""

    id: str
    class_id: str
    score: float
    box: Box


@dataclass(frozen=True)
class FalsePositive:
    """A detector firing on background for frames [start, start + length)."""

    id: str
    start: int
    length: int
    box: Box


def truth_detections(truth: Sequence[TruthObject]) -> list[Detection]:
    """The ground truth as detections: the true class, score 1.0."""
    return [Detection(t.id, t.label, 1.0, t.box) for t in truth]


@dataclass(frozen=True)
class SimulatedDetector:
    """The detector of one drive: its noise, seed, frame size and planned background firings."""

    noise: DetectorNoise
    seed: int
    size: tuple[int, int]  # (width, height)
    false_positives: tuple[FalsePositive, ...]

    @classmethod
    def plan(
        cls, noise: DetectorNoise, seed: int, size: tuple[int, int], frames: int
    ) -> SimulatedDetector:
        return cls(noise, seed, size, tuple(_plan_false_positives(noise, seed, size, frames)))

    def detect(self, index: int, truth: Sequence[TruthObject]) -> list[Detection]:
        """The detector's output for frame `index`, best score first."""
        rng = np.random.default_rng([self.seed, 3, index])
        out: list[Detection] = []
        for obj in truth:
            # Jitter and score are drawn for missed boxes too: a different miss rate leaves the
            # other boxes of the drive exactly as they were.
            missed = rng.random() < self.noise.miss
            box = self._jitter(obj.box, rng)
            score = float(rng.uniform(0.5, 1.0))
            if not missed:
                out.append(Detection(obj.id, obj.category, score, box))
        for fp in self.false_positives:
            if fp.start <= index < fp.start + fp.length:
                box = self._jitter(fp.box, rng)
                score = float(rng.uniform(0.3, 0.7))
                if not any(_intersects(box, obj.box) for obj in truth):
                    out.append(Detection(fp.id, FALSE_POSITIVE_CATEGORY, score, box))
        return sorted(out, key=lambda d: -d.score)

    def _jitter(self, box: Box, rng: np.random.Generator) -> Box:
        offsets = rng.standard_normal(4) * self.noise.jitter  # drawn even for jitter 0
        return _jitter(box, offsets, self.size) if self.noise.jitter > 0 else box


def _plan_false_positives(
    noise: DetectorNoise, seed: int, size: tuple[int, int], frames: int
) -> list[FalsePositive]:
    """Background firings for the whole drive, placed before knowing where objects are."""
    if noise.false_positives <= 0:
        return []
    rng = np.random.default_rng([seed, 4])
    width, height = size
    lo, hi = FALSE_POSITIVE_FRAMES
    new_per_frame = noise.false_positives / ((lo + hi) / 2)
    side_lo = min(16.0, height / 8)
    out: list[FalsePositive] = []
    for frame in range(frames):
        for _ in range(int(rng.poisson(new_per_frame))):
            side = float(rng.uniform(side_lo, 4 * side_lo))
            w, h = min(side * float(rng.uniform(0.8, 1.25)), width - 1.0), side
            x = float(rng.uniform(0, width - w))
            y = float(rng.uniform(0, height - h))
            length = int(rng.integers(lo, hi + 1))
            out.append(FalsePositive(f"fp-{len(out)}", frame, length, Box.from_xywh(x, y, w, h)))
    return out


def _jitter(box: Box, offsets: np.ndarray, size: tuple[int, int]) -> Box:
    """Move each edge by its offset times the box side; keep it in the frame, >= 2 px a side."""
    x0, y0, w, h = box.to_xywh()
    dx0, dx1, dy0, dy1 = offsets
    left, right = sorted((x0 + dx0 * w, x0 + w + dx1 * w))
    top, bottom = sorted((y0 + dy0 * h, y0 + h + dy1 * h))
    width, height = size
    left = min(max(left, 0.0), width - 2.0)
    right = min(max(right, left + 2.0), float(width))
    top = min(max(top, 0.0), height - 2.0)
    bottom = min(max(bottom, top + 2.0), float(height))
    return Box.from_xywh(left, top, right - left, bottom - top)


def _intersects(a: Box, b: Box) -> bool:
    ax, ay, aw, ah = a.to_xywh()
    bx, by, bw, bh = b.to_xywh()
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
