"""A one-line progress bar on stderr and the end-of-run summary table (no dependencies)."""

from __future__ import annotations

import sys
import time
from collections import Counter


class Progress:
    """`done/total frames  N frames/s`, redrawn in place at most 5 times a second."""

    def __init__(self, total: int, enabled: bool = True, label: str = "extract") -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.2 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-9)
        width = 30
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} frames  {rate:6.1f} frames/s"
        )
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
