"""`tl-perception demo` (the whole pipeline on synthetic drives) and `tl-perception experiment`
(every backbone x strategy on one dataset). Argparse only; the work is imported lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tl_perception.cliutil import comma_list
from tl_perception.demo.pipeline import MODES
from tl_perception.engine.base import ENGINES
from tl_perception.errors import TrainingError
from tl_perception.train.config import STRATEGIES, STRATEGY_CHOICES


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `demo` and `experiment` to `tl-perception`."""
    demo = subparsers.add_parser(
        "demo",
        help="synth -> extract -> finetune -> classifier_node, on synthetic drives (one command)",
        description="Run every part of tl_perception on synthetic drives: write a training and "
        "a held-out drive, extract a dataset, fine-tune (strategy auto), start classifier_node, "
        "play the held-out drive to it and write report.md with live accuracy, fps, drops and "
        "latency. --mode roi (default): road scenes, one crop per detector box, the node "
        "classifies the held-out drive's noisy detections (per-ROI accuracy by track id, false "
        "positives rejected as background); --mode frame: whole frames of a drive past one sign "
        "at a time. A second run reuses finished steps.",
    )
    demo.add_argument(
        "--mode",
        choices=MODES,
        default="roi",
        help="roi: classify a detector's boxes in road scenes (default); frame: whole frames",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=Path("tl_perception_demo"),
        help="where bags, dataset, bundle and report go (./tl_perception_demo)",
    )
    demo.add_argument(
        "--rerun-live",
        action="store_true",
        help="play the held-out drive to the node again even if a live run is recorded",
    )
    demo.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (default; offline from $KERAS_HOME/models) or a no-top .h5 file",
    )
    demo.set_defaults(func=run_demo_command)

    exp = subparsers.add_parser(
        "experiment",
        help="fine-tune + evaluate every backbone x strategy x seed; results.md and a chart",
        description="Reproduce the comparison of networks and strategies on your own dataset: "
        "finetune and evaluate each cell (backbone, strategy, seed), sharing one feature cache, "
        "here or as Ray tasks, then write OUT/results.md (test accuracy, train time, trainable "
        "parameters, what auto would choose, mean ± sd over seeds, failed cells with their "
        "reason) and OUT/results.png. Finished cells are skipped on re-run, failed ones retried. "
        "Exit 1 if any cell failed.",
    )
    exp.add_argument("dataset", type=Path, help="dataset directory (extract output or a tree)")
    exp.add_argument(
        "--backbones",
        type=comma_list,
        default=["mobilenet_v2"],
        help="comma-separated, optionally NAME:ALPHA (e.g. vgg16,inception_v3,resnet50)",
    )
    exp.add_argument(
        "--strategies",
        type=comma_list,
        default=list(STRATEGIES),
        help=f"comma-separated from {','.join(STRATEGY_CHOICES)} (default: the four)",
    )
    exp.add_argument("--out", type=Path, required=True, help="results directory")
    exp.add_argument("--epochs", type=int, default=None, help="epochs (trainer default if unset)")
    exp.add_argument("--input-size", type=int, default=None, help="pixels (backbone default)")
    exp.add_argument("--weights", default="imagenet", help="imagenet, none or a .h5 file")
    exp.add_argument("--seed", type=int, default=None, help="one seed (0); see --seeds")
    exp.add_argument(
        "--seeds", type=comma_list, metavar="S1,S2,...", help="a grid dimension: one cell per seed"
    )
    exp.add_argument("--test-split", default="test", help="split to evaluate on (test)")
    exp.add_argument(
        "--test",
        type=Path,
        default=None,
        metavar="DATASET2",
        help="held-out dataset to evaluate on (for a plain tree without a test split)",
    )
    exp.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (OUT/feature_cache)"
    )
    exp.add_argument(
        "--group-regex",
        metavar="REGEX",
        help="as finetune's: its first group, searched in each file name, names the sequence "
        "kept on one side of the val split and auto's probe",
    )
    _register_engine(exp)
    exp.set_defaults(func=run_experiment_command)


def _register_engine(exp: argparse.ArgumentParser) -> None:
    """Where the cells run (docs/scaling.md, "A grid of experiments on Ray")."""
    group = exp.add_argument_group("where cells run")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this machine (default); ray: one Ray task per cell",
    )
    group.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="the Ray cluster (default: RAY_ADDRESS, else a local Ray for this run)",
    )
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="cells at once (local default 1: in this process; ray default: the cluster's CPUs)",
    )
    group.add_argument(
        "--cpus-per-cell", type=float, default=1.0, metavar="N", help="CPUs a Ray cell asks for (1)"
    )
    group.add_argument(
        "--gpus-per-cell",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs a Ray cell asks for (0: Ray hides the GPUs from it); e.g. 1 or 0.5",
    )


def _seeds(args: argparse.Namespace) -> tuple[int, ...]:
    if args.seeds is not None and args.seed is not None:
        raise TrainingError("give --seed or --seeds, not both")
    if args.seeds is None:
        return (0 if args.seed is None else args.seed,)
    try:
        return tuple(int(s) for s in args.seeds)
    except ValueError:
        raise TrainingError(f"--seeds {','.join(args.seeds)}: expected integers") from None


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """`engine` and `resources` of ExperimentOptions, checked (exit 2 on bad values)."""
    from tl_perception.engine import EngineSpec, Resources

    if args.ray_address is not None and args.engine != "ray":
        raise TrainingError("--ray-address needs --engine ray")
    if args.workers is not None and args.workers < 1:
        raise TrainingError(f"--workers {args.workers}: need at least 1")
    workers = args.workers if args.workers or args.engine == "ray" else 1
    return {
        "engine": EngineSpec(args.engine, workers, args.ray_address),
        "resources": Resources(args.cpus_per_cell, args.gpus_per_cell),
    }


def run_experiment_command(args: argparse.Namespace) -> int:
    from tl_perception.demo.experiment import (
        BackboneSpec,
        ExperimentOptions,
        failed_cells,
        run_experiment,
    )

    options = ExperimentOptions(
        dataset=args.dataset,
        out=args.out,
        backbones=tuple(BackboneSpec.parse(b) for b in args.backbones),
        strategies=tuple(args.strategies),
        epochs=args.epochs,
        input_size=args.input_size,
        weights=args.weights,
        seeds=_seeds(args),
        test_split=args.test_split,
        test_dataset=args.test,
        cache_dir=args.cache_dir,
        extra={} if args.group_regex is None else {"group_regex": args.group_regex},
        **_engine_options(args),
    )
    state = run_experiment(options)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    if failed := failed_cells(options, state):
        print(
            f"tl-perception experiment: {len(failed)} of {len(options.cells())} cells failed "
            "(listed in results.md); the others are in the table",
            file=sys.stderr,
        )
        return 1
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from tl_perception.demo.pipeline import run_demo

    run_demo(args.workdir, mode=args.mode, rerun_live=args.rerun_live, weights=args.weights)
    return 0
