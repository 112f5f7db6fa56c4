"""A one-line progress bar on stderr and the end-of-run summary table (no dependencies)."""

from __future__ import annotations

import sys
import time
from collections import Counter


class Progress:
    """`label [bar] done/total units  N frames  F frames/s  K failed  ETA h:mm:ss` on stderr,
    redrawn in place at most 5 times a second.

    Units are what an engine runs (bags, windows of bags); `frames_total` (the frames planned,
    0: unknown) makes the ETA follow frames rather than units, which differ in size. Units
    found finished by an earlier run count as done from the start but not in the rates.
    """

    def __init__(
        self,
        total: int,
        enabled: bool = True,
        label: str = "extract",
        frames_total: int = 0,
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.frames_total = frames_total
        self.done = 0
        self.frames = 0
        self.failed = 0
        self._base = (0, 0)  # units and frames done before this run
        self.started = time.monotonic()
        self._drawn = 0.0

    def resumed(self, units: int, frames: int = 0) -> None:
        """Units (and their frames) an earlier run finished."""
        self.done += units
        self.frames += frames
        self._base = (self._base[0] + units, self._base[1] + frames)

    def update(self, units: int = 1, frames: int = 0, failed: int = 0) -> None:
        self.done += units
        self.frames += frames
        self.failed += failed
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.2 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def line(self, now: float) -> str:
        """The progress line (without the carriage return)."""
        elapsed = max(now - self.started, 1e-9)
        rate = (self.frames - self._base[1]) / elapsed
        width = 30
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        text = (
            f"{self.label} [{bar}] {self.done}/{self.total} units  {self.frames} frames  "
            f"{rate:6.1f} frames/s"
        )
        if self.failed:
            text += f"  {self.failed} failed"
        eta = self._eta(elapsed, rate)
        return text + (f"  ETA {eta}" if eta else "")

    def _eta(self, elapsed: float, rate: float) -> str:
        if self.done >= self.total:
            return ""
        if self.frames_total and rate > 0:
            seconds = max(self.frames_total - self.frames, 0) / rate
        else:
            units = self.done - self._base[0]
            if units <= 0:
                return ""
            seconds = (self.total - self.done) * elapsed / units
        minutes, secs = divmod(round(seconds), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}:{minutes:02d}:{secs:02d}"

    def _draw(self, now: float) -> None:
        sys.stderr.write(f"\r{self.line(now)}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.total:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()


def summary_table(
    kept: Counter[tuple[str, str]],
    skipped: Counter[str],
    splits: tuple[str, ...],
    boxes: bool = False,
) -> str:
    """Kept images per class and split, then skipped frames per reason."""
    classes = sorted({cls for cls, _ in kept})
    width = max([len("class"), *(len(c) for c in classes)])
    lines = ["kept " + "-" * (width + 8 * len(splits) + 3)]
    lines.append(f"{'class':<{width}} " + "".join(f"{s:>8}" for s in splits) + f"{'total':>8}")
    for cls in classes:
        cells = [kept.get((cls, s), 0) for s in splits]
        lines.append(f"{cls:<{width}} " + "".join(f"{n:>8}" for n in cells) + f"{sum(cells):>8}")
    totals = [sum(n for (_, s), n in kept.items() if s == split) for split in splits]
    lines.append(f"{'total':<{width}} " + "".join(f"{n:>8}" for n in totals) + f"{sum(totals):>8}")
    if skipped:
        lines.append("skipped frames" if boxes else "skipped")
        lines.extend(f"  {reason:<22}{n:>8}" for reason, n in sorted(skipped.items()))
    return "\n".join(lines)


def roi_table(skipped: Counter[str], messages: Counter[str]) -> str:
    """A region-of-interest run's boxes (and negatives) skipped per reason, and its box
    messages or CSV rows, paired or not."""
    lines = ["skipped boxes" if skipped else "skipped boxes: none"]
    lines.extend(f"  {reason:<22}{n:>8}" for reason, n in sorted(skipped.items()))
    if messages:
        lines.append("box messages")
        lines.extend(f"  {what:<22}{n:>8}" for what, n in sorted(messages.items()))
    return "\n".join(lines)
