"""`tl-perception <command>`: a thin shell over the library.

Each room registers its own sub-commands (argparse only, no heavy imports), so `--help` is instant;
the work is imported lazily inside each command's function. Any `TlPerceptionError` becomes one line
on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tl_perception import __version__
from tl_perception.errors import TlPerceptionError

#: Modules with a `register(subparsers)` function; order is the order in `--help`.
COMMAND_MODULES: tuple[str, ...] = (
    "tl_perception.bag.commands",
    "tl_perception.train.commands",
    "tl_perception.loop.commands",
    "tl_perception.ros.commands",
    "tl_perception.synth.commands",
    "tl_perception.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl-perception",
        description="Bag to dataset to fine-tuned model to ROS 2 node, for traffic signs and "
        "vehicles.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except TlPerceptionError as err:
        print(f"tl-perception {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tl-perception {args.command}: interrupted", file=sys.stderr)
        return 130


def _alias(command: str) -> int:
    return main([command, *sys.argv[1:]])


def extract_main() -> int:
    """`ros2 run tl_perception extract_dataset ...` == `tl-perception extract ...`."""
    return _alias("extract")


def finetune_main() -> int:
    """`ros2 run tl_perception finetune ...` == `tl-perception finetune ...`."""
    return _alias("finetune")


if __name__ == "__main__":
    sys.exit(main())
