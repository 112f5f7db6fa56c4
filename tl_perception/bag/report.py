"""What an extraction run did (`ExtractReport`, printed and partly kept in dataset.json as
`last_run`) and where its time went (`RunTimings`, never written: it differs run to run)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_perception.bag.options import ExtractOptions
from tl_perception.engine import Outcome


@dataclass
class RunTimings:
    """Where a run's time went (never written to the dataset: it would differ run to run).

    `units`: per wave ("plan", "write", "finish"), each unit's wall and CPU seconds in its
    worker; `steps`: the driver's wall seconds per step ("plan", "reduce", "write", "commit");
    `driver_cpu`: the driver process's CPU seconds.
    """

    units: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    driver_cpu: float = 0.0

    def unit(self, wave: str, outcome: Outcome[Any, Any]) -> None:
        self.units.setdefault(wave, []).append((outcome.seconds, outcome.cpu_seconds))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started


@dataclass
class ExtractReport:
    """What a run did: images kept per (class_dir, split), frames skipped per reason; for a
    region-of-interest run also boxes (and negatives) skipped per reason and box messages;
    bags that could not be read, with the reason (path, one line)."""

    out: Path
    kept: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    boxes_skipped: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: RunTimings = field(default_factory=RunTimings)

    @property
    def written(self) -> int:
        return sum(self.kept.values())

    def last_run(self, options: ExtractOptions) -> dict[str, Any]:
        """The `last_run` of dataset.json (`failed` only when a bag failed)."""
        out: dict[str, Any] = {
            "options": options.record(),
            "kept": self.written,
            "skipped": dict(sorted(self.skipped.items())),
        }
        if options.rois is not None:
            out["boxes_skipped"] = dict(sorted(self.boxes_skipped.items()))
            out["box_messages"] = dict(sorted(self.messages.items()))
        if self.failed:
            out["failed"] = [{"path": p, "reason": r} for p, r in sorted(self.failed)]
        return out


def nothing_kept(options: ExtractOptions, bags: list[Path], report: ExtractReport) -> str:
    """Why a run kept nothing, in one line."""
    names = ", ".join(repr(str(path)) for path in bags)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items()))
    failed = f"; {len(report.failed)} bags failed" if report.failed else ""
    if options.rois is None:
        return (
            f"no frame of {names} on {options.topic!r} was kept "
            f"({skipped or 'the topic has no messages'}){failed}; nothing written"
        )
    boxes = ", ".join(f"{n} {why}" for why, n in sorted(report.boxes_skipped.items()))
    messages = ", ".join(f"{n} {why}" for why, n in sorted(report.messages.items()))
    return (
        f"no crop of {names} on {options.topic!r} was kept (frames: {skipped or 'none skipped'}; "
        f"boxes: {boxes or 'none skipped'}; {messages or 'no box messages'}){failed}; "
        "nothing written"
    )
