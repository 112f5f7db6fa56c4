"""`tl-perception finetune` (also the ROS executable `finetune`); `evaluate`/`export` come from
`eval_commands`. Argparse only here: TensorFlow is imported when the command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from tl_perception.backbones import BACKBONES
from tl_perception.train import eval_commands
from tl_perception.train.config import (
    AUGMENTS,
    BATCHNORMS,
    CLASS_WEIGHTS,
    DISTRIBUTES,
    ENGINES,
    FIELDS,
    STRATEGY_CHOICES,
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this room's sub-commands to `tl-perception`."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone on a dataset into a model bundle",
        description="Train a classifier bundle from an extraction output or any class-per-folder "
        "image tree. Defaults are measured to work untuned; see docs/training.md.",
    )
    p.add_argument("dataset", metavar="DATASET", help="dataset directory")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of these options")
    p.add_argument("--backbone", choices=list(BACKBONES), help="default: mobilenet_v2")
    p.add_argument("--alpha", type=float, help="MobileNet width (default 0.35 v2, 0.25 v1)")
    p.add_argument("--input-size", type=int, help="square input side (default per backbone)")
    p.add_argument("--weights", metavar="imagenet|none|PATH", help="default: imagenet")
    p.add_argument("--strategy", choices=STRATEGY_CHOICES, help="default: auto")
    p.add_argument("--cut-layer", metavar="NAME", help="truncate: layer to cut the base at")
    p.add_argument("--unfreeze", type=int, metavar="N", help="fine_tune: train the top N layers")
    p.add_argument("--batchnorm", choices=BATCHNORMS, help="fine_tune: BatchNorm (default adapt)")
    p.add_argument("--epochs", type=int, help="default: per strategy (see docs)")
    p.add_argument("--head-epochs", type=int, help="fine_tune's frozen head phase (default 10)")
    p.add_argument("--batch-size", type=int, help="default: 32")
    p.add_argument("--learning-rate", type=float, help="default: per phase (see docs)")
    p.add_argument("--augment", choices=AUGMENTS)
    p.add_argument("--class-weight", choices=CLASS_WEIGHTS)
    p.add_argument("--val-fraction", type=float, help="without a val split (default 0.2)")
    p.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="plain trees: its first group, searched in each file name, names the sequence "
        r"kept on one side of the val split and auto's probe (GTSRB: '^(\d+_\d+)_')",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", default=None, help="continue a run")
    p.add_argument(
        "--distribute",
        choices=DISTRIBUTES,
        help="mirrored: all local GPUs, --batch-size is the global batch (docs/scaling.md)",
    )
    p.add_argument("--engine", choices=ENGINES, help="ray: several hosts (refused, see docs)")
    p.add_argument("--workers", type=int, metavar="N", help="hosts to train on (--engine ray)")
    p.add_argument("--cache-augmentations", type=int, metavar="K", help="default: 2")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache (default XDG cache)")
    p.add_argument("--size-threshold", type=int, help="auto: images/class for 'large'")
    p.add_argument(
        "--race-backbones",
        type=_words,
        metavar="B[:ALPHA],...",
        help="auto: race these backbones too (e.g. mobilenet:0.25)",
    )
    p.add_argument(
        "--race-input-sizes",
        type=_sizes,
        metavar="N,...",
        help="auto: race these input sizes too (e.g. 96,128)",
    )
    p.add_argument("--no-export", dest="export_tflite", action="store_false", default=None)
    p.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        default=None,
        help="do not fit a temperature on the val split (scores stay as trained)",
    )
    p.set_defaults(func=run_finetune)
    eval_commands.register(subparsers)


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


def _sizes(text: str) -> list[int]:
    try:
        return [int(word) for word in _words(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None


def run_finetune(args: argparse.Namespace) -> int:
    from tl_perception.train.config import load_config
    from tl_perception.train.finetune import finetune

    # Every config field the parser has an option for; unset options are None (not given).
    overrides = {name: getattr(args, name, None) for name in FIELDS}
    config = load_config(args.config, **overrides)
    result = finetune(args.dataset, args.out, config)
    accuracy = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.4f}"
    print(
        f"{result.bundle_path}: strategy {result.strategy}, val accuracy {accuracy}, "
        f"{result.train_seconds:.0f} s"
    )
    return 0
