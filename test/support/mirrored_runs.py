"""Run `finetune`s in a process whose CPU is split into logical devices (for test_distribute).

`python -m support.mirrored_runs SPEC.json RESULT.json` (test/ on PYTHONPATH). The split must
happen before TensorFlow initialises its devices, so it cannot happen inside the pytest process,
which already has.
SPEC: {"devices": N, "runs": [{"dataset", "out", "config": {...}, "interrupt": {"phase",
"epochs"} (optional), "resume": true (optional)}]}. An interrupt raises KeyboardInterrupt in the
run, as Ctrl-C does, once the phase has checkpointed that many epochs; the run's result then
holds the checkpoint state it left. "resume" continues the run before it with `--resume` and one
epoch more than that phase had done. RESULT: the logical devices, and per run its log, history,
phases, val accuracy and bundle path, or its one-line error.
"""

from __future__ import annotations

import _thread
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: The comparison test_distribute (and bench/bench_mirrored.py, which measured its noise) runs:
#: a head on cached features of MobileNet v1 cut after its first convolution (random weights
#: keep colour information only that shallow), on `SPLIT` (97 train images: batches of 32 leave 1;
#: 25 val images: one batch that does not split evenly over 2 replicas).
COMPARE_CONFIG: dict[str, Any] = {
    "backbone": "mobilenet",
    "input_size": 32,
    "weights": "none",
    "strategy": "truncate",
    "cut_layer": "conv1_relu",
    "epochs": 5,
    "learning_rate": 0.1,
    "batch_size": 32,
    "patience": 100,
    "cache_augmentations": 1,
}
SPLIT = {"train": (33, 32, 32), "val": (9, 8, 8)}


def split_cpu(devices: int) -> list[str]:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def interrupt_when(state: Path, phase: str, epochs: int, stop: threading.Event) -> None:
    """Ctrl-C the main thread once `phase` has `epochs` epochs checkpointed."""
    while not stop.wait(0.05):
        try:
            done = json.loads(state.read_text())["phases"][phase]["epochs_done"]
        except (OSError, ValueError, KeyError):
            continue
        if done >= epochs:
            _thread.interrupt_main()
            return


def partial_state(out: Path) -> Path:
    return out.with_name(out.name + ".partial") / "state.json"


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from tl_perception.errors import one_line
    from tl_perception.train.config import FinetuneConfig
    from tl_perception.train.finetune import finetune

    logs: list[str] = []
    out = Path(spec["out"])
    stop = threading.Event()
    if spec.get("interrupt"):
        args = (partial_state(out), spec["interrupt"]["phase"], spec["interrupt"]["epochs"], stop)
        threading.Thread(target=interrupt_when, args=args, daemon=True).start()
    start = time.monotonic()
    try:
        result = finetune(spec["dataset"], out, FinetuneConfig(**spec["config"]), logs.append, 0)
    except KeyboardInterrupt:
        state = json.loads(partial_state(out).read_text())
        return {"interrupted": True, "logs": logs, "state": state}
    except Exception as err:  # reported to the test, which shows it
        return {"error": f"{type(err).__name__}: {one_line(err)}", "logs": logs}
    finally:
        stop.set()
    return {
        "logs": logs,
        "seconds": time.monotonic() - start,
        "bundle": str(result.bundle_path),
        "val_accuracy": result.val_accuracy,
        "history": result.history,
        "phases": result.phases,
    }


def run_all(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run in turn; a "resume" run continues the interrupted one before it."""
    results: list[dict[str, Any]] = []
    for spec in runs:
        config = spec["config"]
        if spec.get("resume"):
            if "state" not in results[-1]:  # the run before was not interrupted: say so
                results.append({"error": "nothing to resume", "before": results[-1]})
                continue
            phase = runs[len(results) - 1]["interrupt"]["phase"]
            done = results[-1]["state"]["phases"][phase]["epochs_done"]
            config = {**config, "resume": True, "epochs": done + 1}
        results.append(run({**spec, "config": config}))
    return results


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    devices = split_cpu(spec["devices"])
    results = run_all(spec["runs"])
    Path(sys.argv[2]).write_text(json.dumps({"devices": devices, "runs": results}))


if __name__ == "__main__":
    main()
