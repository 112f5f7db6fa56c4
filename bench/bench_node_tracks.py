"""Benchmark the node's smoothing state with many live tracks: the cost of one update.

`LabelSmoother.update` with N tracks alive (round-robin over N ids, stamps advancing, a timeout
long enough that none expires) for N = 10, 100, 1000, 10000, against the scan the smoother did
before issue 16 (every update looked at every track to find the stale ones), in the same run.
Ratios are against N = 10 of the same implementation: O(1) amortised stays near 1, a scan grows
with N. 43 classes (GTSRB).

    .venv/bin/python bench/bench_node_tracks.py          # ~20 s on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from tl_perception.smoothing import LabelSmoother, SmoothingConfig

SIZES = (10, 100, 1000, 10000)
CLASSES = 43


class ScanningSmoother(LabelSmoother):
    """The expiry before issue 16, for comparison: every update scans every track."""

    def forget_older_than(self, now_s: float) -> int:
        timeout = self.config.track_timeout_s
        stale = [k for k, t in self._tracks.items() if abs(now_s - t.stamp_s) > timeout]
        for key in stale:
            del self._tracks[key]
        return len(stale)


def per_update_us(smoother: LabelSmoother, tracks: int, updates: int) -> float:
    """Microseconds per update, tracks filled first, then `updates` timed in round-robin."""
    probs = np.random.default_rng(0).dirichlet(np.ones(CLASSES), size=64)
    keys = [f"track{i}" for i in range(tracks)]
    step = 1.0 / 30 / tracks  # one frame per 1/30 s shared by the tracks: stamps advance
    for i, key in enumerate(keys):
        smoother.update(key, probs[i % 64], i * step)
    start_s = tracks * step
    started = time.perf_counter()
    for i in range(updates):
        smoother.update(keys[i % tracks], probs[i % 64], start_s + i * step)
    return (time.perf_counter() - started) / updates * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20000)
    args = parser.parse_args()
    config = SmoothingConfig(track_timeout_s=3600.0, max_tracks=max(SIZES))
    rows = []
    for name, kind in (("O(1) (now)", LabelSmoother), ("scan (before)", ScanningSmoother)):
        times = {}
        for n in SIZES:  # the scan at 10000 tracks takes ~1 ms an update: fewer of them
            updates = args.updates if kind is LabelSmoother or n < 10000 else args.updates // 10
            times[n] = per_update_us(kind(config), n, updates)
        rows.append((name, times))
    print(f"\nper update, us (ratio to 10 tracks); {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print("| implementation | " + " | ".join(f"{n} tracks" for n in SIZES) + " |")
    print("|---|" + "---:|" * len(SIZES))
    for name, times in rows:
        cells = [f"{times[n]:.1f} ({times[n] / times[10]:.1f}x)" for n in SIZES]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
