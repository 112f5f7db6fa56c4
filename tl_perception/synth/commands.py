"""`tl-perception synth`: write a synthetic drive as a bag (demo and test data, no real camera)."""

from __future__ import annotations

import argparse
from typing import Any

from tl_perception.cliutil import comma_list

KIND_CHOICES = ("signs", "vehicles")
STORAGE_CHOICES = ("mcap", "sqlite3", "ros1")


def parse_size(text: str) -> tuple[int, int]:
    """`160x120` -> (160, 120)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from err
    return width, height


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `synth` to `tl-perception`."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic drive (signs or vehicles) as a bag with a /label topic",
        description="Render a drive past a sequence of traffic signs (or vehicles and "
        "non-vehicles) and write it as a bag: a camera topic plus /label (std_msgs/String), "
        "published while each object is in view. Deterministic for a seed. Demo and test data, "
        "not a claim about real-world accuracy.",
    )
    parser.add_argument("out", help="output bag (rosbag2 directory, or a .bag file for ros1)")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="signs")
    parser.add_argument("--frames", type=int, default=300, help="number of camera frames")
    parser.add_argument(
        "--classes", type=comma_list, default=None, help="comma-separated subset of the classes"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=parse_size, default=(160, 120), help="WxH (160x120)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (10)")
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="JPEG sensor_msgs/CompressedImage on /camera/image_raw/compressed",
    )
    parser.add_argument("--storage", choices=STORAGE_CHOICES, default="mcap")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from tl_perception.synth.writer import write_synthetic_bag

    summary = write_synthetic_bag(
        args.out,
        kind=args.kind,
        frames=args.frames,
        classes=args.classes,
        seed=args.seed,
        size=args.size,
        rate=args.rate,
        compressed=args.compressed,
        storage=args.storage,
        overwrite=args.overwrite,
    )
    per_class = ", ".join(f"{k}={v}" for k, v in summary.frames_per_class().items())
    print(
        f"wrote {summary.path} ({summary.storage}): {summary.frames} frames on "
        f"{summary.image_topic}, {summary.labelled_frames} labelled on {summary.label_topic}"
    )
    print(f"frames per class: {per_class}")
    return 0
