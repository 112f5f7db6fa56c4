"""`tl-perception extract` and `tl-perception inspect` (argparse only; work is imported lazily)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tl_perception.engine.base import ENGINES
from tl_perception.errors import DatasetError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `extract` and `inspect` to `tl-perception`."""
    ext = subparsers.add_parser(
        "extract",
        help="bags -> labelled, leakage-free image dataset",
        description="Extract a labelled image dataset (train/val/test/<label>/*.png plus "
        "manifest.csv and dataset.json) from ROS 1 / ROS 2 bags, without ROS.",
    )
    ext.add_argument("bags", nargs="+", type=Path, metavar="BAG", help=".bag, .mcap or rosbag2 dir")
    ext.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    ext.add_argument("--out", required=True, type=Path, help="dataset directory")
    lab = ext.add_mutually_exclusive_group()
    lab.add_argument("--label", help="one label for every frame")
    lab.add_argument("--label-topic", help="std_msgs/String or vision_msgs/Classification topic")
    lab.add_argument("--label-csv", type=Path, help="CSV rows start,end,label (s from bag start)")
    lab.add_argument("--unlabeled", action="store_true", help="write frames for later labelling")
    ext.add_argument(
        "--label-tolerance",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="max age of a --label-topic label (default 1.0)",
    )
    ext.add_argument("--every", type=int, default=1, metavar="N", help="keep every Nth frame")
    ext.add_argument("--min-interval", type=float, default=0.0, metavar="SECONDS")
    ext.add_argument("--start", type=float, metavar="SECONDS", help="from bag start")
    ext.add_argument("--end", type=float, metavar="SECONDS", help="from bag start")
    ext.add_argument("--crop", metavar="X,Y,W,H", help="crop in pixels before writing")
    ext.add_argument(
        "--dedup",
        type=int,
        nargs="?",
        const=4,
        metavar="HAMMING",
        help="drop frames within HAMMING bits (default 4) of the last kept one",
    )
    ext.add_argument("--format", choices=("png", "jpg"), default="png")
    ext.add_argument("--split", metavar="TRAIN,VAL,TEST", help="e.g. 0.8,0.1,0.1 (by sequence)")
    ext.add_argument(
        "--seed", type=int, default=0, help="seed of the split assignment and of --negatives"
    )
    ext.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="units at once (default: every CPU of this machine, or of the Ray cluster)",
    )
    ext.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: processes on this machine (default); ray: tasks on a Ray cluster",
    )
    ext.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="the Ray cluster (default: RAY_ADDRESS, else a local Ray for this run)",
    )
    ext.add_argument("--append", action="store_true", help="add bags to an existing dataset")
    ext.add_argument("--no-progress", action="store_true", help="no progress bar")
    _register_rois(ext)
    ext.set_defaults(func=run_extract)

    ins = subparsers.add_parser(
        "inspect",
        help="list a bag's topics, image encodings and label topics",
        description="List topics with type, count and rate; image topics with encoding and "
        "resolution of the first frame; topics usable as labels.",
    )
    ins.add_argument("bags", nargs="+", type=Path, metavar="BAG")
    ins.set_defaults(func=run_inspect)


def _register_rois(ext: argparse.ArgumentParser) -> None:
    """Options of a region-of-interest extraction: one crop per box (docs/extract.md)."""
    roi = ext.add_argument_group(
        "regions of interest",
        "one crop per box, cut by the crop policy (recorded in dataset.json); labels from each "
        "box's best class unless --label/--label-topic/--label-csv/--unlabeled is given",
    )
    src = roi.add_mutually_exclusive_group()
    src.add_argument(
        "--boxes-topic", metavar="TOPIC", help="vision_msgs/Detection2DArray topic (by stamp)"
    )
    src.add_argument(
        "--boxes-csv",
        type=Path,
        metavar="FILE",
        help="CSV with header time|stamp,x,y,w,h[,label][,id] (seconds; pixels, top-left)",
    )
    roi.add_argument(
        "--boxes-tolerance",
        type=float,
        metavar="SECONDS",
        help="pair boxes with the nearest image within SECONDS (default: exact stamps)",
    )
    roi.add_argument("--context", type=float, help="fraction of the box added per side (0.1)")
    roi.add_argument(
        "--square",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="make crops square around the box (default: --square)",
    )
    roi.add_argument("--min-box", type=float, metavar="PX", help="smallest box side (12)")
    roi.add_argument(  # values checked by CropPolicy: importing crop.py here would slow --help
        "--fill", help="outside the frame: replicate (default), reflect or constant"
    )
    roi.add_argument("--fill-value", type=int, metavar="V", help="0-255 for --fill constant")
    roi.add_argument(
        "--negatives", type=int, metavar="N", help="up to N background crops per frame (0)"
    )
    roi.add_argument("--background-label", metavar="NAME", help="label of negatives (background)")


_POLICY_ARGS: tuple[str, ...] = ("context", "square", "min_box", "fill", "fill_value")
_ROI_ARGS: tuple[str, ...] = (*_POLICY_ARGS, "boxes_tolerance", "negatives", "background_label")


def rois_from_args(args: argparse.Namespace) -> Any:
    """`RoiOptions` from parsed arguments, None without --boxes-topic/--boxes-csv."""
    from tl_perception.bag.boxes import BoxSpec, check_tolerance, read_boxes_csv
    from tl_perception.bag.roiplan import BACKGROUND, RoiOptions
    from tl_perception.crop import CropError, CropPolicy

    if args.boxes_topic is None and args.boxes_csv is None:
        given = [
            f"--{name.replace('_', '-')}" for name in _ROI_ARGS if getattr(args, name) is not None
        ]
        if given:
            raise DatasetError(f"{given[0]} needs --boxes-topic or --boxes-csv")
        return None
    check_tolerance(args.boxes_tolerance)
    if args.boxes_topic is not None:
        boxes = BoxSpec("topic", topic=args.boxes_topic, tolerance_s=args.boxes_tolerance)
    else:
        boxes = read_boxes_csv(args.boxes_csv, args.boxes_tolerance)
    chosen = {name: getattr(args, name) for name in _POLICY_ARGS if getattr(args, name) is not None}
    try:
        policy = CropPolicy(**chosen)
    except CropError as err:
        raise DatasetError(f"--context/--square/--min-box/--fill: {err}") from err
    return RoiOptions(
        boxes=boxes,
        policy=policy,
        negatives=args.negatives if args.negatives is not None else 0,
        background_label=args.background_label if args.background_label is not None else BACKGROUND,
    )


def options_from_args(args: argparse.Namespace) -> Any:
    """Validated `ExtractOptions` from parsed arguments (DatasetError on bad values)."""
    from tl_perception.bag.extract import ExtractOptions
    from tl_perception.bag.plan import FrameFilter, LabelSpec, read_label_csv
    from tl_perception.bag.splits import parse_fractions

    if args.label is not None:
        labels = LabelSpec("fixed", name=args.label)
    elif args.label_topic:
        labels = LabelSpec("topic", topic=args.label_topic, tolerance_s=args.label_tolerance)
    elif args.label_csv:
        labels = LabelSpec("csv", ranges=read_label_csv(args.label_csv))
    elif args.unlabeled:
        labels = LabelSpec("none")
    elif args.boxes_topic is not None or args.boxes_csv is not None:
        labels = LabelSpec("boxes")
    else:
        raise DatasetError(
            "give --label, --label-topic, --label-csv or --unlabeled (or, with --boxes-topic "
            "or --boxes-csv, none of them: each box's own class)"
        )
    if args.every < 1 or args.min_interval < 0 or args.label_tolerance < 0:
        raise DatasetError("--every must be >= 1; --min-interval and --label-tolerance >= 0")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise DatasetError(f"--end {args.end} must be after --start {args.start}")
    if args.dedup is not None and not 0 <= args.dedup <= 64:
        raise DatasetError(f"--dedup {args.dedup}: HAMMING must be 0..64")
    if args.workers is not None and args.workers < 1:
        raise DatasetError(f"--workers {args.workers}: need at least 1")
    if args.ray_address is not None and args.engine != "ray":
        raise DatasetError("--ray-address needs --engine ray")
    return ExtractOptions(
        bags=tuple(args.bags),
        topic=args.topic,
        out=args.out,
        labels=labels,
        selection=FrameFilter(args.every, args.min_interval, args.start, args.end),
        crop=parse_crop(args.crop) if args.crop else None,
        dedup=args.dedup,
        fmt=args.format,
        split=parse_fractions(args.split) if args.split else None,
        seed=args.seed,
        workers=args.workers,
        append=args.append,
        rois=rois_from_args(args),
        engine=args.engine,
        ray_address=args.ray_address,
    )


def parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise DatasetError(f"--crop {text!r}: expected X,Y,W,H in pixels") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise DatasetError(f"--crop {text!r}: need X,Y >= 0 and W,H > 0")
    return x, y, w, h


def run_extract(args: argparse.Namespace) -> int:
    from tl_perception.bag.extract import extract
    from tl_perception.bag.progress import roi_table, summary_table
    from tl_perception.dataset import SPLITS

    options = options_from_args(args)
    try:
        report = extract(options, progress=not args.no_progress and sys.stderr.isatty())
    except KeyboardInterrupt:
        print(
            f"tl-perception extract: interrupted; the manifest and dataset.json of "
            f"{options.out} are unchanged; run the same command to resume (finished bags "
            "are kept)",
            file=sys.stderr,
        )
        return 130
    print(summary_table(report.kept, report.skipped, SPLITS, boxes=options.rois is not None))
    if options.rois is not None:
        print(roi_table(report.boxes_skipped, report.messages))
    print(f"wrote {report.written} images to {options.out} in {report.seconds:.1f} s")
    if not report.failed:
        return 0
    for path, reason in report.failed:
        print(f"failed: {path}: {reason}")
    print(
        f"tl-perception extract: {len(report.failed)} of {len(options.bags)} bags failed "
        "(listed above and in dataset.json last_run.failed); the others are in the dataset",
        file=sys.stderr,
    )
    return 1


def run_inspect(args: argparse.Namespace) -> int:
    from tl_perception.bag.inspect import format_report, inspect_bag

    for path in args.bags:
        print(format_report(inspect_bag(path)))
    return 0
