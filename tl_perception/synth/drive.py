"""A synthetic drive: a sequence of objects, each in view for a run of frames, with empty road
between them.

`plan_drive` fixes which object appears when (classes cycle in shuffled rounds so every class
gets about the same number of runs); `drive_frames` renders the frames lazily. Both depend only
on the seed, so a drive is reproducible frame for frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from tl_perception.errors import TlPerceptionError
from tl_perception.synth.road import ROAD_CLASSES
from tl_perception.synth.scene import make_look, render_frame
from tl_perception.synth.signs import SIGN_CLASSES
from tl_perception.synth.vehicles import VEHICLE_CLASSES

KINDS: dict[str, tuple[str, ...]] = {
    "signs": SIGN_CLASSES,
    "vehicles": VEHICLE_CLASSES,
    "road": ROAD_CLASSES,  # drawn by synth/road.py: several objects per frame, boxes as truth
}
RUN_FRAMES = (10, 20)  # frames an object stays in view (1-2 s at 10 Hz)
GAP_FRAMES = (2, 6)  # empty road between objects, no label published


@dataclass(frozen=True)
class Run:
    """Frames [start, start + length) show one object (label), or empty road (label None)."""

    label: str | None
    start: int
    length: int


@dataclass(frozen=True)
class SynthFrame:
    index: int
    label: str | None
    rgb: np.ndarray


def resolve_classes(kind: str, classes: Sequence[str] | None) -> tuple[str, ...]:
    """The classes to draw; all of `kind` by default. Unknown names fail with the valid list."""
    if kind not in KINDS:
        raise TlPerceptionError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    known = KINDS[kind]
    if not classes:
        return known
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise TlPerceptionError(
            f"unknown {kind} class {unknown[0]!r}; choose from {', '.join(known)}"
        )
    if len(set(classes)) != len(classes):
        raise TlPerceptionError(f"--classes lists a class twice: {', '.join(classes)}")
    return tuple(classes)


def plan_drive(classes: Sequence[str], frames: int, seed: int) -> list[Run]:
    """Alternate gaps and object runs until `frames` frames are used; deterministic for `seed`."""
    if frames <= 0:
        raise TlPerceptionError(f"--frames must be positive, got {frames}")
    rng = np.random.default_rng([seed, 0])
    runs: list[Run] = []
    order: list[str] = []
    position = 0
    while position < frames:
        gap = min(int(rng.integers(GAP_FRAMES[0], GAP_FRAMES[1] + 1)), frames - position)
        runs.append(Run(None, position, gap))
        position += gap
        if position >= frames:
            break
        if not order:
            order = [classes[i] for i in rng.permutation(len(classes))]
        length = min(int(rng.integers(RUN_FRAMES[0], RUN_FRAMES[1] + 1)), frames - position)
        runs.append(Run(order.pop(), position, length))
        position += length
    return runs


def drive_frames(
    kind: str, runs: Sequence[Run], seed: int, size: tuple[int, int]
) -> Iterator[SynthFrame]:
    """Render every frame of the planned drive, in order (RGB uint8, `size` = (width, height))."""
    for run_index, run in enumerate(runs):
        rng = np.random.default_rng([seed, 1, run_index])
        look = make_look(kind, run.label, size, rng)
        for k in range(run.length):
            progress = k / max(run.length - 1, 1)
            yield SynthFrame(run.start + k, run.label, render_frame(look, progress, rng))
