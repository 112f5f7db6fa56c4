"""`--distribute mirrored` on two logical CPU devices against one device, over several seeds.

The noise that test_distribute's accuracy tolerance is derived from: for each seed, the test's own
comparison (`test/support/mirrored_runs.py` COMPARE_CONFIG on SPLIT) on one device and mirrored over
2 replicas. Prints per seed val accuracy and final train loss of both, and the wall-time ratio
mirrored / one device measured in the same run (two logical devices share the same cores, so the
ratio shows the strategy's overhead, not a speed-up).

    nice -n 19 .venv/bin/python bench/bench_mirrored.py [--seeds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    from support.finetune_helpers import make_confusable_split
    from support.mirrored_runs import COMPARE_CONFIG, SPLIT, run, split_cpu

    devices = split_cpu(2)
    work = Path(tempfile.mkdtemp(prefix="bench_mirrored_"))
    rows = []
    try:
        data = make_confusable_split(work / "data", SPLIT["train"], SPLIT["val"])
        for seed in range(args.seeds):
            row: dict[str, object] = {"seed": seed}
            for name in ("none", "mirrored"):
                config = {**COMPARE_CONFIG, "seed": seed, "distribute": name}
                config.update(cache_dir=str(work / "cache"), evaluate=False, export_tflite=False)
                out = run(
                    {"dataset": str(data), "out": str(work / f"{name}{seed}"), "config": config}
                )
                if "error" in out:
                    raise SystemExit(f"{name} seed {seed}: {out['error']}")
                row[name] = {
                    "val_accuracy": out["val_accuracy"],
                    "final_loss": out["history"]["loss"][-1],
                    "seconds": round(out["seconds"], 2),
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rows)
    print(json.dumps({"devices": devices, **summary}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **summary}, indent=2) + "\n")
    return 0


def summarise(rows: list[dict]) -> dict[str, float]:
    """Seed-to-seed spread of one device, and the mirrored-minus-one-device gaps per seed."""

    def column(name: str, key: str) -> list[float]:
        return [float(row[name][key]) for row in rows]

    one, mirrored = column("none", "val_accuracy"), column("mirrored", "val_accuracy")
    gaps = [m - o for m, o in zip(mirrored, one, strict=True)]
    loss_gaps = [
        m - o
        for m, o in zip(column("mirrored", "final_loss"), column("none", "final_loss"), strict=True)
    ]
    return {
        "one_device_accuracy_mean": statistics.mean(one),
        "one_device_accuracy_sd": statistics.stdev(one),
        "mirrored_accuracy_mean": statistics.mean(mirrored),
        "max_abs_accuracy_gap": max(abs(g) for g in gaps),
        "mean_accuracy_gap": statistics.mean(gaps),
        "one_device_final_loss_sd": statistics.stdev(column("none", "final_loss")),
        "max_abs_final_loss_gap": max(abs(g) for g in loss_gaps),
        "seconds_ratio_mirrored_over_one": sum(column("mirrored", "seconds"))
        / sum(column("none", "seconds")),
    }


if __name__ == "__main__":
    raise SystemExit(main())
