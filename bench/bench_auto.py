"""Does `--strategy auto` ship the model that wins? Each strategy on its own, then `auto`.

For one dataset, trains every strategy separately with the trainer's defaults (plus the options
given here), then `auto`, each with an empty feature cache of its own (so every run pays the
same cold start), and evaluates each bundle on the dataset's held-out `test` split, which no
run ever sees. Prints the table of docs/results.md ("auto against each strategy") and the
ratio of auto's wall time to its winner's own run.

    python bench/bench_auto.py gtsrb --out /tmp/auto_gtsrb
    python bench/bench_auto.py mirror --out /tmp/auto_mirror   # GTSRB's mirror pairs and kin
    python bench/bench_auto.py vehicles --out /tmp/auto_vehicles
    python bench/bench_auto.py /path/to/extracted/dataset --out /tmp/auto_roi

Rows already in OUT/results.json with the same settings are reused, so an interrupted run
resumes; `--only auto` reruns just auto after a change to the race.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5"
GTSRB_GROUPS = r"^(\d+_\d+)_"
#: GTSRB classes rich in mirror pairs (19/20, 33/34, 36/37, 38/39) and their look-alikes.
MIRROR_CLASSES = (
    "19_dangerous_curve_left",
    "20_dangerous_curve_right",
    "33_turn_right_ahead",
    "34_turn_left_ahead",
    "36_go_straight_or_right",
    "37_go_straight_or_left",
    "38_keep_right",
    "39_keep_left",
    "35_ahead_only",
    "21_double_curve",
    "24_road_narrows_right",
    "40_roundabout_mandatory",
)
STRATEGIES = ("feature_extraction", "truncate", "fine_tune", "from_scratch", "auto")


def mirror_tree(out: Path) -> Path:
    """A GTSRB subset of symlinks to the mirror-pair classes (nothing copied)."""
    root = out / "mirror_data"
    for split in ("train", "test"):
        for name in MIRROR_CLASSES:
            target = root / split / name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted((SHARED / "data" / "gtsrb" / split / name).iterdir()):
                link = target / image.name
                if not link.exists():
                    link.symlink_to(image)
    return root


def dataset_for(name: str, out: Path) -> tuple[Path, str | None]:
    """(dataset path, group regex) for a named set or a dataset directory."""
    if name == "gtsrb":
        return SHARED / "data" / "gtsrb", GTSRB_GROUPS
    if name == "mirror":
        return mirror_tree(out), GTSRB_GROUPS
    if name == "vehicles":
        return SHARED / "data" / "vehicles", None
    return Path(name), None


def run_one(strategy: str, args: argparse.Namespace, data: Path, groups: str | None) -> dict:
    from tl_perception.train.config import FinetuneConfig
    from tl_perception.train.evaluate import evaluate
    from tl_perception.train.finetune import finetune

    bundle = args.out / "bundles" / strategy
    cache = args.out / "cache" / strategy
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    cfg = FinetuneConfig(
        strategy=strategy,
        input_size=args.input_size,
        weights=str(args.weights),
        seed=args.seed,
        group_regex=groups,
        cache_dir=str(cache),
    )
    started, cpu = time.monotonic(), time.process_time()
    result = finetune(
        data, bundle, cfg, log=lambda line: print(f"  [{strategy}] {line}"), verbose=0
    )
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    test = evaluate(bundle, data, split="test")
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "strategy": strategy,
        "chosen": result.strategy,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": test["accuracy"],
        "test_ece": test["calibration"].get("ece"),
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "reason": result.decision.get("reason"),
        "race": result.decision.get("race"),
    }


def table(rows: dict[str, dict]) -> list[str]:
    lines = [
        "| strategy | val accuracy | test accuracy | test ECE | wall (s) | chose |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name in STRATEGIES:
        row = rows.get(name)
        if row is None:
            continue
        lines.append(
            f"| {name} | {row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | "
            f"{row['test_ece'] or 0:.3f} | {row['wall_seconds']:.0f} | {row['chosen']} |"
        )
    auto = rows.get("auto")
    singles = {k: v for k, v in rows.items() if k != "auto"}
    if auto and singles:
        best = max(singles.values(), key=lambda r: r["test_accuracy"])
        lines.append("")
        lines.append(
            f"auto chose {auto['chosen']}: test {auto['test_accuracy']:.4f} against the best "
            f"single strategy ({best['strategy']}) {best['test_accuracy']:.4f}: "
            f"{100 * (auto['test_accuracy'] - best['test_accuracy']):+.1f} points"
        )
        own = singles.get(auto["chosen"])
        if own:
            lines.append(
                f"auto's wall time {auto['wall_seconds']:.0f} s = "
                f"{auto['wall_seconds'] / own['wall_seconds']:.2f}x its winner's own run "
                f"({own['wall_seconds']:.0f} s; load {auto.get('load_before')} and "
                f"{own.get('load_before')})"
            )
            if auto.get("cpu_seconds") and own.get("cpu_seconds"):
                lines.append(
                    f"CPU time {auto['cpu_seconds']:.0f} s = "
                    f"{auto['cpu_seconds'] / own['cpu_seconds']:.2f}x ({own['cpu_seconds']:.0f} s)"
                )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="gtsrb, mirror, vehicles or a dataset directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(STRATEGIES), help="comma list; rerun these")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.out.mkdir(parents=True, exist_ok=True)
    data, groups = dataset_for(args.dataset, args.out)
    state_path = args.out / "results.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"rows": {}}
    state["machine"] = f"{platform.node()} {os.cpu_count()} CPUs"
    for strategy in args.only.split(","):
        load = round(os.getloadavg()[0], 1)
        print(f"== {args.dataset}: {strategy} (load {load})", flush=True)
        row = run_one(strategy, args, data, groups)
        row["load_before"] = load
        state["rows"][strategy] = row
        state_path.write_text(json.dumps(state, indent=1))
        print("\n".join(table(state["rows"])), flush=True)
    print("\n".join(table(state["rows"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
