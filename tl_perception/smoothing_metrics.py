"""How steady and how quick a published label is, against per-frame ground truth.

Smoothing trades one for the other, so both are measured on the same frames:

- **flicker**: published label changes per second inside *steady runs* (maximal runs of frames
  with one non-empty truth label). The one change that first reaches the run's truth is the
  wanted switch, not flicker; every other change inside the run is, including wandering
  between wrong labels before the switch. Seconds are those spanned by consecutive frame pairs
  inside steady runs: the time in which a change could be seen at all.
- **switch delay**: for every steady run that does not start the sequence (a truth change,
  including a label appearing after unlabelled frames), the frames from its first frame to the
  first frame whose published label is the new truth. A run that ends first counts as *never*
  followed: a switch after the object is gone is of no use.

Frames whose truth is None (nothing labelled: empty road) belong to no run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Label = str | None


@dataclass(frozen=True)
class LabelSequence:
    """Per-frame stamps (s, non-decreasing), truth labels and published labels, equal lengths."""

    stamps: Sequence[float]
    truth: Sequence[Label]
    published: Sequence[Label]

    def __post_init__(self) -> None:
        n = len(self.stamps)
        if len(self.truth) != n or len(self.published) != n:
            raise ValueError(
                f"stamps, truth and published differ in length: "
                f"{n}, {len(self.truth)}, {len(self.published)}"
            )
        if n > 1 and bool(np.any(np.diff(np.asarray(self.stamps, dtype=np.float64)) < 0)):
            raise ValueError("stamps must not decrease")


@dataclass(frozen=True)
class SwitchDelay:
    """Delays of the truth changes that the published label followed, in frames."""

    changes: int
    never: int
    mean_frames: float | None
    p95_frames: float | None

    @property
    def followed(self) -> int:
        return self.changes - self.never


def steady_runs(truth: Sequence[Label]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of one non-None truth label."""
    runs: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(truth) + 1):
        if i == len(truth) or truth[i] != truth[start]:
            if truth[start] is not None:
                runs.append((start, i))
            start = i
    return runs


def _arrival(seq: LabelSequence, start: int, end: int) -> int | None:
    """First frame in [start, end) whose published label is the run's truth."""
    target = seq.truth[start]
    return next((i for i in range(start, end) if seq.published[i] == target), None)


def flicker_per_second(seq: LabelSequence) -> float:
    """Published label changes per second inside steady truth runs (0.0 with no such time)."""
    changes = 0
    seconds = 0.0
    for start, end in steady_runs(seq.truth):
        switch = _arrival(seq, start, end)
        for i in range(start + 1, end):
            seconds += float(seq.stamps[i]) - float(seq.stamps[i - 1])
            if seq.published[i] != seq.published[i - 1] and i != switch:
                changes += 1
    return changes / seconds if seconds > 0 else 0.0


def switch_delay_frames(seq: LabelSequence) -> SwitchDelay:
    """Frames from each truth change to the published label's arrival there (mean, p95)."""
    delays: list[int] = []
    never = 0
    changes = 0
    for start, end in steady_runs(seq.truth):
        if start == 0:
            continue  # the first run changes from nothing: there is no switch to time
        changes += 1
        arrival = _arrival(seq, start, end)
        if arrival is None:
            never += 1
        else:
            delays.append(arrival - start)
    if not delays:
        return SwitchDelay(changes, never, None, None)
    values = np.asarray(delays, dtype=np.float64)
    return SwitchDelay(
        changes, never, float(values.mean()), float(np.percentile(values, 95, method="linear"))
    )


def label_accuracy(seq: LabelSequence) -> float | None:
    """Fraction of labelled frames whose published label is the truth (None: none labelled)."""
    scored = [p == t for t, p in zip(seq.truth, seq.published, strict=True) if t is not None]
    return sum(scored) / len(scored) if scored else None
