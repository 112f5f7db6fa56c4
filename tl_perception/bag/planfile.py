"""Planned frames and per-frame results as JSON, for the work directory (`workdir.py`).

A plan is written by the unit that planned the bag and read by the units that decode its
windows and by the one that finishes it, possibly on other machines, so it is plain JSON
(never pickle: the work directory is only as trusted as the output directory). Floats are
written with `repr` precision and read back bit for bit, so boxes (NaN included) survive.
"""

from __future__ import annotations

from typing import Any

from tl_perception.bag.frames import FrameResult
from tl_perception.bag.plan import PlannedBox, PlannedFrame
from tl_perception.crop import Box


def _box(box: Box) -> list[float]:
    return [box.center_x, box.center_y, box.size_x, box.size_y]


def _unbox(values: list[float]) -> Box:
    return Box(*(float(v) for v in values))


def frame_to_json(frame: PlannedFrame) -> list[Any]:
    """One planned frame (not yet placed: class directories and sequences are the driver's)."""
    boxes = [[b.index, _box(b.box), b.label, b.track] for b in frame.boxes]
    return [
        frame.index,
        frame.log_ns,
        frame.label,
        frame.run,
        frame.stamp_ns,
        frame.encoding,
        frame.roi,
        boxes,
        [_box(b) for b in frame.avoid],
        frame.negatives,
    ]


def frame_from_json(data: list[Any]) -> PlannedFrame:
    index, log_ns, label, run, stamp_ns, encoding, roi, boxes, avoid, negatives = data
    return PlannedFrame(
        index=int(index),
        log_ns=int(log_ns),
        label=str(label),
        run=int(run),
        stamp_ns=int(stamp_ns),
        encoding=str(encoding),
        roi=bool(roi),
        boxes=tuple(PlannedBox(int(i), _unbox(b), str(lab), str(t)) for i, b, lab, t in boxes),
        avoid=tuple(_unbox(b) for b in avoid),
        negatives=int(negatives),
    )


def result_to_json(result: FrameResult) -> list[Any]:
    """One image a window made (its temp file by name only: the stage directory is known)."""
    box = _box(result.box) if result.box is not None else None
    return [
        result.skip,
        result.width,
        result.height,
        result.sha256,
        result.phash,
        result.tmp_path.rsplit("/", 1)[-1],
        result.kind,
        box,
    ]


def result_from_json(data: list[Any], stage: str) -> FrameResult:
    skip, width, height, sha256, phash, tmp_name, kind, box = data
    return FrameResult(
        skip=skip,
        width=int(width),
        height=int(height),
        sha256=str(sha256),
        phash=int(phash),
        tmp_path=f"{stage}/{tmp_name}" if tmp_name else "",
        kind=str(kind),
        box=_unbox(box) if box is not None else None,
    )
