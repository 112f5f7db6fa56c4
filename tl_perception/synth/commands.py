"""`tl-perception synth`: write a synthetic drive as a bag (demo and test data, no real camera)."""

from __future__ import annotations

import argparse
from typing import Any

from tl_perception.cliutil import comma_list

KIND_CHOICES = ("signs", "vehicles", "road")
STORAGE_CHOICES = ("mcap", "sqlite3", "ros1")


def parse_size(text: str) -> tuple[int, int]:
    """`160x120` -> (160, 120)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected WxH such as 160x120, got {text!r}") from err
    return width, height


def parse_noise(text: str) -> Any:
    """`--detector-noise 0.5` or `miss=0.1,fp=0.3,jitter=0.05`."""
    from tl_perception.errors import TlPerceptionError
    from tl_perception.synth.detector import DetectorNoise

    try:
        return DetectorNoise.parse(text)
    except TlPerceptionError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `synth` to `tl-perception`."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic drive (signs, vehicles or road scenes) as a bag",
        description="Render a drive past a sequence of traffic signs (or vehicles and "
        "non-vehicles) and write it as a bag: a camera topic plus /label (std_msgs/String), "
        "published while each object is in view. --kind road: full frames with several small "
        "signs and vehicles, with /detections/truth and a simulated detector's /detections "
        "(vision_msgs/Detection2DArray) instead of /label. Deterministic for a seed. Demo and "
        "test data, not a claim about real-world accuracy.",
    )
    parser.add_argument("out", help="output bag (rosbag2 directory, or a .bag file for ros1)")
    parser.add_argument("--kind", choices=KIND_CHOICES, default="signs")
    parser.add_argument("--frames", type=int, default=300, help="number of camera frames")
    parser.add_argument(
        "--classes", type=comma_list, default=None, help="comma-separated subset of the classes"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--size", type=parse_size, default=None, help="WxH (160x120; road: 640x480)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second (10)")
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="JPEG sensor_msgs/CompressedImage on /camera/image_raw/compressed",
    )
    parser.add_argument("--storage", choices=STORAGE_CHOICES, default="mcap")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument(
        "--detector-noise",
        type=parse_noise,
        default=None,
        metavar="LEVEL|RATES",
        help="road only: how noisy /detections is, a level (0.5 = 10%% missed boxes, 0.25 false "
        "positives per frame, 4%% edge jitter; the default) or miss=P,fp=N,jitter=F",
    )
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from tl_perception.synth.writer import DriveSpec, write_synthetic_bag

    spec = DriveSpec(
        kind=args.kind,
        frames=args.frames,
        classes=args.classes,
        seed=args.seed,
        size=args.size,
        rate=args.rate,
        compressed=args.compressed,
        storage=args.storage,
        detector_noise=args.detector_noise,
    )
    summary = write_synthetic_bag(args.out, spec, overwrite=args.overwrite)
    per_class = ", ".join(f"{k}={v}" for k, v in summary.frames_per_class().items())
    head = f"wrote {summary.path} ({summary.storage}): {summary.frames} frames on "
    road = summary.road
    if road is None:
        print(f"{head}{summary.image_topic}, {summary.labelled_frames} labelled on /label")
        print(f"frames per class: {per_class}")
        return 0
    print(
        f"{head}{summary.image_topic}, {road.truth_boxes} true boxes in {len(road.tracks)} "
        f"tracks on {road.truth_topic}; {road.detected + road.false_positives} on "
        f"{road.detections_topic} ({road.missed} missed, {road.false_positives} false positives)"
    )
    print(f"true boxes per class: {per_class}")
    return 0
