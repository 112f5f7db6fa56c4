"""`tl-perception label` and `tl-perception merge` (argparse only; work is imported lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `label` and `merge` to `tl-perception`."""
    lab = subparsers.add_parser(
        "label",
        help="give captured (unlabeled/) images their classes",
        description="Move images of a capture (or `extract --unlabeled`) dataset from "
        "<split>/unlabeled/ into class folders and update manifest.csv: from a CSV of "
        "path,label, or after moving the files into class folders by hand.",
    )
    lab.add_argument("dataset", type=Path, metavar="DATASET", help="capture or dataset directory")
    how = lab.add_mutually_exclusive_group(required=True)
    how.add_argument("--csv", type=Path, metavar="FILE", help="CSV with header path,label")
    how.add_argument(
        "--from-folders", action="store_true", help="pick up files moved into class folders"
    )
    lab.set_defaults(func=run_label)

    mer = subparsers.add_parser(
        "merge",
        help="add labelled captures to a dataset, without leakage",
        description="Add the labelled images of capture directories to a dataset made by "
        "`extract`: bursts of near-identical captures go wholly into one split by the dataset's "
        "split fractions and seed, images it already has are skipped, crop policies must match.",
    )
    mer.add_argument("captures", nargs="+", type=Path, metavar="CAPTURE", help="capture dir")
    mer.add_argument("--into", required=True, type=Path, metavar="DATASET", help="dataset dir")
    mer.add_argument(
        "--gap",
        type=float,
        default=None,
        metavar="SECONDS",
        help="captures of one camera closer than this are one sequence (default 5.0)",
    )
    mer.set_defaults(func=run_merge)


def run_label(args: argparse.Namespace) -> int:
    from tl_perception.loop.label import label_from_csv, label_from_folders

    if args.csv is not None:
        report = label_from_csv(args.dataset, args.csv)
    else:
        report = label_from_folders(args.dataset)
    moved = ", ".join(f"{c} {n}" for c, n in sorted(report.moved.items())) or "none"
    print(f"moved {sum(report.moved.values())} images ({moved}); {report.unchanged} unchanged")
    if report.picked_up:
        print(f"picked up {report.picked_up} images moved into class folders by hand")
    if report.deleted:
        print(
            f"dropped {len(report.deleted)} rows whose image was deleted, e.g. {report.deleted[0]}"
        )
    if report.unlisted:
        print(
            f"left alone {len(report.unlisted)} image files the manifest does not list, e.g. "
            f"{report.unlisted[0]}"
        )
    print(f"{report.unlabeled} images are still unlabeled in {args.dataset}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from tl_perception.bag.progress import summary_table
    from tl_perception.dataset import SPLITS
    from tl_perception.loop.merge import merge
    from tl_perception.loop.store import CAPTURE_GAP_S

    gap = CAPTURE_GAP_S if args.gap is None else args.gap
    report = merge(args.captures, args.into, gap_s=gap)
    print(summary_table(report.kept, report.skipped, SPLITS))
    if report.new_classes:
        print(f"new classes: {', '.join(report.new_classes)}")
    print(f"added {report.written} images to {args.into}")
    return 0
