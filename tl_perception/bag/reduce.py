"""The driver's reduce between the plan and the write waves: what needs every bag at once.

From the plans' small results (labels, images per sequence and label) and the dataset being
added to: every label gets its class directory (`dataset.class_dirs`, distinct also on
case-insensitive file systems) and every sequence its split (`splits.assign_splits`, sequences
whole). Everything is computed from results sorted by bag name, never in the order they came
back, so the outcome depends on the bags and the options only. Memory: one entry per label and
per sequence, not per frame.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from tl_perception.bag.existing import Existing, majorities
from tl_perception.bag.finish import Assignment
from tl_perception.bag.options import ExtractOptions
from tl_perception.bag.plan import sequence_id
from tl_perception.bag.roiplan import track_id
from tl_perception.bag.splits import assign_splits
from tl_perception.bag.units import PlanResult, SeqCount
from tl_perception.bag.workdir import digest
from tl_perception.dataset import class_dirs


@dataclass(frozen=True)
class Reduction:
    """Class directory of every label, split of every new sequence."""

    class_dirs: Mapping[str, str]
    splits: Mapping[str, str]


def reduce_plans(options: ExtractOptions, plans: list[PlanResult], existing: Existing) -> Reduction:
    """Class directories and splits for the planned bags (`plans` in any order)."""
    ordered = sorted(plans, key=lambda p: p.source.name)
    mapping = class_dirs({label for p in ordered for label in p.labels}, existing.class_dirs)
    counts: dict[str, Counter[str]] = {}
    for plan in ordered:
        for entry in plan.sequences:
            seq = sequence_of(plan.source.name, entry, mapping)
            counts.setdefault(seq, Counter())[mapping[entry.label]] += entry.count
    splits = assign_splits(majorities(counts), options.split, options.seed, existing.sequences)
    return Reduction(mapping, splits)


def sequence_of(bag: str, entry: SeqCount, mapping: Mapping[str, str]) -> str:
    """The dataset-wide id of a bag-local sequence (as `place_frames`/`place_roi_frames`)."""
    if entry.kind == "track":
        return track_id(bag, entry.local)
    return sequence_id(bag, mapping[entry.label], entry.local)


def assignment_of(
    reduction: Reduction, plan: PlanResult, old_paths: str | None, content: str
) -> Assignment:
    """A bag's share of the reduction; `old_paths` the hash of its paths already in the
    dataset (None: it has none); `content` the options' hash."""
    name = plan.source.name
    labels = {entry.label for entry in plan.sequences} | set(plan.labels)
    dirs = {label: reduction.class_dirs[label] for label in sorted(labels)}
    seqs = sorted({sequence_of(name, entry, reduction.class_dirs) for entry in plan.sequences})
    splits = {seq: reduction.splits[seq] for seq in seqs}
    return Assignment(
        key=plan.key,
        bag=name,
        class_dirs=dirs,
        splits=splits,
        has_old_paths=old_paths is not None,
        digest=digest("bag", content, plan.source.sha256, dirs, splits, old_paths),
    )


def unpaired_csv_rows(options: ExtractOptions, plans: list[PlanResult]) -> dict[str, int]:
    """`csv_rows` and `unpaired_csv_rows` of a box CSV: rows that paired with an image of no bag."""
    rois = options.rois
    if rois is None or rois.boxes.kind != "csv":
        return {}
    matched = {index for plan in plans for index in plan.matched}
    messages = rois.boxes.messages
    unpaired = sum(len(m.boxes) for i, m in enumerate(messages) if i not in matched)
    return {"csv_rows": sum(len(m.boxes) for m in messages), "unpaired_csv_rows": unpaired}
