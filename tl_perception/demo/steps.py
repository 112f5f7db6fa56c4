"""What both demos (whole frames and regions of interest) share: the step record in `demo.json`,
the finetune step, and classifier_node as its own process.

Each step records its settings when it finishes; a later run reuses a step whose settings are
unchanged and whose output is still there, so a second run costs seconds.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tl_perception.errors import TlPerceptionError
from tl_perception.fsutil import atomic_write_json

if TYPE_CHECKING:
    from tl_perception.train.config import FinetuneConfig

STATE_FILE = "demo.json"
NAMESPACE = "/tl_perception_demo"
STEPS = 5

Log = Callable[[str], None]
T = TypeVar("T")


class State:
    """demo.json: per step, the settings it ran with and what it produced."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / STATE_FILE
        self.steps: dict[str, dict[str, Any]] = {}
        self._began: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.steps = json.loads(self.path.read_text(encoding="utf-8")).get("steps", {})
            except (OSError, ValueError, AttributeError):
                self.steps = {}

    def done(self, step: str, settings: dict[str, Any], output: Path) -> dict[str, Any] | None:
        record = self.steps.get(step)
        if record and record.get("settings") == settings and output.exists():
            return record
        return None

    def begin(self, step: str) -> None:
        self._began[step] = time.monotonic()

    def finish(self, step: str, settings: dict[str, Any], **facts: Any) -> dict[str, Any]:
        seconds = round(time.monotonic() - self._began.get(step, time.monotonic()), 1)
        self.steps[step] = {"settings": settings, "seconds": seconds, **facts}
        atomic_write_json(self.path, {"steps": self.steps})
        return self.steps[step]


def extract_step(
    state: State, name: str, settings: dict[str, Any], dataset: Path, log: Log
) -> dict[str, Any] | None:
    """The record of extract step `name` if it can be reused; else begin it on a clean `dataset`."""
    record = state.done(name, settings, dataset / "dataset.json")
    if record:
        log(f"  {dataset}: done before, reused")
        return record
    if dataset.exists():
        shutil.rmtree(dataset)  # made from another drive: start clean
    state.begin(name)
    return None


def split_counts(kept: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Images kept per split (train, val, test always present) from per-(class, split) counts."""
    counts = {split: 0 for split in ("train", "val", "test")}
    for (_cls, split), n in kept.items():
        counts[split] = counts.get(split, 0) + n
    return counts


def step(number: int, text: str, log: Log) -> None:
    """The progress line of step `number`."""
    log(f"[{number}/{STEPS}] {text}")


@dataclass(frozen=True)
class TrainStep:
    """A finetune step: its name in demo.json, the extract step it trains on, and its paths."""

    name: str
    extract: str
    dataset: Path
    bundle: Path


def finetune_step(
    state: State, train: TrainStep, config: FinetuneConfig, log: Log
) -> dict[str, Any]:
    """Fine-tune (or reuse) the bundle and evaluate it on the test split; what it recorded."""
    from tl_perception.bundle import read_bundle

    settings = {"dataset": state.steps[train.extract]["settings"], "config": config.to_dict()}
    record = state.done(train.name, settings, train.bundle / "bundle.json")
    if record:
        read_bundle(train.bundle)
        log(f"  {train.bundle}: done before, reused (strategy {record['strategy']})")
        return record
    from tl_perception.train.finetune import finetune

    state.begin(train.name)
    result = finetune(
        train.dataset, train.bundle, config, log=lambda line: log(f"  {line}"), verbose=2
    )
    meta = read_bundle(train.bundle).meta
    test_accuracy = None
    if state.steps[train.extract]["counts"].get("test"):
        from tl_perception.train.evaluate import evaluate

        test_accuracy = evaluate(train.bundle, train.dataset, split="test")["accuracy"]
    return state.finish(
        train.name,
        settings,
        strategy=result.strategy,
        reason=result.decision.get("reason", ""),
        race=result.decision.get("race"),
        val_accuracy=result.val_accuracy,
        train_seconds=result.train_seconds,
        trainable_params=result.trainable_params,
        backbone=meta["backbone"],
        alpha=meta.get("alpha"),
        input_size=meta["input_size"][0],
        weights=meta.get("weights", config.weights),
        test_accuracy=test_accuracy,
    )


def node_command(bundle: Path, image_topic: str, extra: Sequence[str] = ()) -> list[str]:
    """classifier_node as `ros2 run` would start it (the console script beside this Python).

    `extra` adds `--ros-args` items (`-p name:=value`, `-r from:=to`).
    """
    script = Path(sys.executable).with_name("classifier_node")
    if script.is_file():
        base = [str(script)]
    else:
        base = [sys.executable, "-m", "tl_perception.ros.classifier_node"]
    return [
        *base,
        "--ros-args",
        "-r",
        f"__ns:={NAMESPACE}",
        "-r",
        f"image:={image_topic}",
        "-p",
        f"model_path:={bundle}",
        "-p",
        "qos:=reliable",
        *extra,
    ]


def with_node(
    command: Sequence[str], log_path: Path, collect: Callable[[Callable[[], bool]], T], log: Log
) -> T:
    """Start the node as its own process, run `collect(node_alive)`, stop the node.

    A failure names the last line of the node's log, where the reason usually is.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"  starting {' '.join(command)} (log: {log_path})")
    with log_path.open("wb") as node_log:
        node = subprocess.Popen(list(command), stdout=node_log, stderr=subprocess.STDOUT)
        try:
            return collect(lambda: node.poll() is None)
        except TlPerceptionError as err:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip()
            last = tail.splitlines()[-1] if tail else "(empty log)"
            raise TlPerceptionError(f"{err} (last line: {last})") from err
        finally:
            stop(node)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C first (the node shuts down cleanly), then terminate, then kill."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0)):
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    process.kill()
    process.wait()


def local_ros() -> None:
    """Keep the demo's ROS traffic on this machine unless the user chose otherwise."""
    import os

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
