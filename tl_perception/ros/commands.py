"""ROS sub-commands: `play` (rclpy is imported only when a command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tl_perception.errors import BagError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this room's sub-commands to `tl-perception`."""
    ply = subparsers.add_parser(
        "play",
        help="publish a bag's images, labels and detections to ROS 2 (no rosbag2 needed)",
        description="Publish Image, CompressedImage, std_msgs/String and (where vision_msgs "
        "imports) vision_msgs/Detection2DArray messages of a bag with rclpy, keeping the "
        "recorded timing (scaled by --rate) and header stamps.",
    )
    ply.add_argument("bag", type=Path, metavar="BAG")
    ply.add_argument("--topic", action="append", default=[], help="topic to play (repeatable)")
    ply.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    loops = ply.add_mutually_exclusive_group()
    loops.add_argument(
        "--loop",
        action="store_const",
        const=0,
        dest="loops",
        help="play again and again until Ctrl-C, the same recorded stamps every time (as "
        "`ros2 bag play --loop`: the subscribers' clock jumps back at each start)",
    )
    loops.add_argument(
        "--loops",
        type=int,
        default=1,
        metavar="N",
        help="play the bag N times (default 1; 0: as --loop)",
    )
    ply.add_argument("--remap", action="append", default=[], metavar="FROM:=TO")
    ply.add_argument("--qos", choices=("reliable", "sensor_data"), default="reliable")
    ply.add_argument(
        "--wait-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="wait until every topic has N subscribers (see --wait-timeout)",
    )
    ply.add_argument("--wait-timeout", type=float, default=10.0, metavar="SECONDS")
    ply.set_defaults(func=run_play, loops=1)


def parse_remaps(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise BagError(f"--remap {item!r}: expected FROM:=TO")
        remap[src] = dst
    return remap


def run_play(args: argparse.Namespace) -> int:
    from tl_perception.ros.play import PlayOptions, play

    options = PlayOptions(
        bag=args.bag,
        topics=tuple(args.topic),
        rate=args.rate,
        loops=args.loops,
        remap=parse_remaps(args.remap),
        qos=args.qos,
        wait_subscribers=args.wait_subscribers,
        wait_timeout_s=args.wait_timeout,
    )
    play(options)
    return 0
