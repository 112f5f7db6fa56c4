"""Leakage-free, deterministic assignment of whole sequences to train/val/test.

Per class: first every requested split that is still empty gets one sequence (the smallest, so
train keeps the long runs), then the remaining sequences, largest first, each go to the split
furthest below its target frame count. Ties are broken by a seeded hash of the sequence id, so
the result depends only on the sequences, their sizes and the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from tl_perception.dataset import SPLITS
from tl_perception.errors import DatasetError


def parse_fractions(text: str) -> tuple[float, float, float]:
    """`"0.8,0.1,0.1"` or `"80,10,10"` -> fractions summing to 1."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise DatasetError(f"--split {text!r}: expected three numbers TRAIN,VAL,TEST") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0 or parts[0] <= 0:
        raise DatasetError(
            f"--split {text!r}: expected three non-negative numbers TRAIN,VAL,TEST with TRAIN > 0"
        )
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def assign_splits(
    sequences: Mapping[str, tuple[str, int]],
    fractions: tuple[float, float, float] | None,
    seed: int,
    existing: Mapping[str, tuple[str, str, int]] | None = None,
) -> dict[str, str]:
    """Split of each new sequence.

    Args:
        sequences: sequence id -> (class_dir, frame count), the sequences to place.
        fractions: target share of train/val/test; None puts everything in train.
        seed: tie-breaking seed.
        existing: sequence id -> (class_dir, split, frame count) already in the dataset; they keep
            their split and count toward the targets.
    """
    existing = existing or {}
    if fractions is None:
        return {seq: existing[seq][1] if seq in existing else "train" for seq in sequences}
    result: dict[str, str] = {}
    by_class: dict[str, list[tuple[str, int]]] = {}
    for seq, (class_dir, count) in sequences.items():
        if seq in existing:
            result[seq] = existing[seq][1]
        else:
            by_class.setdefault(class_dir, []).append((seq, count))
    wanted = [name for name, frac in zip(SPLITS, fractions, strict=True) if frac > 0]
    for class_dir, seqs in sorted(by_class.items()):
        counts = dict.fromkeys(SPLITS, 0)
        for cls, split, count in existing.values():
            if cls == class_dir:
                counts[split] += count
        total = sum(counts.values()) + sum(n for _, n in seqs)
        targets = {name: frac * total for name, frac in zip(SPLITS, fractions, strict=True)}
        pending = sorted(seqs, key=lambda item: (item[1], _tiebreak(seed, item[0])))
        # Seed empty splits, smallest fraction first, with the smallest sequences.
        for name in sorted(wanted, key=lambda n: (targets[n], SPLITS.index(n))):
            if counts[name] == 0 and len(pending) > 1 and name != "train":
                seq, count = pending.pop(0)
                result[seq] = name
                counts[name] += count
        for seq, count in sorted(pending, key=lambda it: (-it[1], _tiebreak(seed, it[0]))):
            name = max(wanted, key=lambda n: (targets[n] - counts[n], -SPLITS.index(n)))
            result[seq] = name
            counts[name] += count
    return result


def _tiebreak(seed: int, sequence: str) -> str:
    return hashlib.sha256(f"{seed}:{sequence}".encode()).hexdigest()
