"""Does Keras 3 train across workers? Measured with our own network code on 2 CPU workers.

Routes (`--route`, several allowed):
  single    one process, no strategy: the baseline
  tfconfig  two local worker processes with TF_CONFIG, `tf.distribute.MultiWorkerMirroredStrategy`
  ray       Ray Train's `TensorflowTrainer`, `ScalingConfig(num_workers=2)`, on a local Ray started
            here with 2 CPUs (it sets TF_CONFIG, and TF_USE_LEGACY_KERAS, on every worker);
            needs `pip install 'ray[train]==2.60.0'` (the project pins plain ray)

Every worker trains what `finetune` trains: the same `TrainingRun`, `build_network`, `train_phases`
and `calibrate_network`, inside the route's strategy scope, on the data and options of
test_distribute's mirrored comparison (`test/support/mirrored_runs.py`; `--overrides` changes them).
Per worker it reports: ok or the exact error (type, one line, and where in Keras and TF it was
raised), the loss histories, val accuracy, a SHA-256 of the trained weights (synchronised workers
have the same), the replica count, TF_USE_LEGACY_KERAS and what `tf.keras` resolves to.

`--patch-reduce nest|nest+scalar` (a diagnostic, never shipped): wraps the strategy's `reduce`
so it accepts what Keras 3.15 hands it under MultiWorkerMirroredStrategy (a nest of per-replica
values; and scalars with axis=0), to see how far training gets past each defect.

    nice -n 19 .venv/bin/python bench/bench_multiworker.py --route single tfconfig ray [--json F]
    ... --route tfconfig --patch-reduce nest+scalar --overrides '{"strategy": "fine_tune",
        "cut_layer": null, "head_epochs": 2, "epochs": 3, "learning_rate": null}'

Results (TF 2.21, Keras 3.15.1, Ray 2.60.0, 2 CPUs): docs/scaling.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "test")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--route", nargs="+", choices=["single", "tfconfig", "ray"], required=True)
    parser.add_argument("--patch-reduce", choices=["nest", "nest+scalar"])
    parser.add_argument(
        "--overrides",
        default="{}",
        help='config changes as JSON, e.g. \'{"strategy": "fine_tune"}\'',
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # tfconfig: one worker's spec
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(spec["result"]).write_text(json.dumps(train_worker(spec)))
        return 0
    from support.finetune_helpers import make_confusable_split
    from support.mirrored_runs import COMPARE_CONFIG, SPLIT

    work = Path(tempfile.mkdtemp(prefix="bench_multiworker_"))
    results: dict[str, Any] = {
        "versions": versions(),
        "patch_reduce": args.patch_reduce,
        "overrides": json.loads(args.overrides),
    }
    try:
        data = make_confusable_split(work / "data", SPLIT["train"], SPLIT["val"])
        config = {**COMPARE_CONFIG, "seed": 0, **json.loads(args.overrides)}
        base = {"dataset": str(data), "config": config, "patch_reduce": args.patch_reduce}
        for route in args.route:
            start = time.monotonic()
            runner = {"single": run_single, "tfconfig": run_tfconfig, "ray": run_ray}[route]
            workers = runner({**base, "work": str(work / route)})
            results[route] = {"seconds": round(time.monotonic() - start, 1), "workers": workers}
            print(json.dumps({route: results[route]}, indent=2), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tensorflow-cpu", "keras", "ray", "tf-keras"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train finetune's network for `spec` in this process's strategy; what happened."""
    import keras
    import tensorflow as tf

    keras.config.disable_traceback_filtering()  # show where in Keras it fails
    info: dict[str, Any] = {
        "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
        "TF_CONFIG": bool(os.environ.get("TF_CONFIG")),
        "keras": keras.__version__,
        "tf.keras": _tf_keras(),
    }
    logs: list[str] = []
    try:
        multiworker = bool(os.environ.get("TF_CONFIG"))
        strategy = tf.distribute.MultiWorkerMirroredStrategy() if multiworker else None
        if strategy is not None and spec["patch_reduce"]:
            _patch_reduce(strategy, scalars=spec["patch_reduce"] == "nest+scalar")
        info["replicas"] = strategy.num_replicas_in_sync if strategy else 1
        info.update(_train(spec, strategy, Path(spec["work"]), logs.append))
        info["ok"] = True
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        info.update(
            ok=False,
            error=f"{type(err).__name__}: {_shorten(' '.join(str(err).split()))}",
            raised_at=[_frame(f) for f in frames if "site-packages" in f.filename][:8],
        )
    info["log"] = logs[-6:]
    return info


def _shorten(text: str, keep: int = 160) -> str:
    """Errors that print a tensor: its head and tail, which name the problem."""
    return text if len(text) <= 2 * keep else f"{text[:keep]} [...] {text[-keep:]}"


def _frame(frame: traceback.FrameSummary) -> str:
    """'keras/src/backend/tensorflow/trainer.py:731 _maybe_symbolic_build'."""
    where = frame.filename.split("site-packages/", 1)[-1]
    return f"{where}:{frame.lineno} {frame.name}"


def _tf_keras() -> str:
    import tensorflow as tf

    try:
        return str(tf.keras.__version__)
    except Exception as err:  # what TF_USE_LEGACY_KERAS=1 does without tf-keras installed
        return f"{type(err).__name__}: {err}"


def _train(spec: dict[str, Any], strategy: Any, work: Path, log: Any) -> dict[str, Any]:
    import contextlib

    import keras
    import numpy as np

    from tl_perception import backbones
    from tl_perception.train.config import FinetuneConfig
    from tl_perception.train.data import load_training_data
    from tl_perception.train.finetune import calibrate_network
    from tl_perception.train.phases import train_phases
    from tl_perception.train.run import TrainingRun
    from tl_perception.train.strategies import build_network
    from tl_perception.train.trainer import Checkpoints, Recorder

    cfg = FinetuneConfig(**spec["config"], cache_dir=str(work / "cache"))
    cfg.validate()
    rank = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    choice = backbones.choose_backbone(
        cfg.backbone, alpha=cfg.alpha, input_size=cfg.input_size, weights=cfg.weights,
        cut_layer=cfg.cut_layer,
    )  # fmt: skip
    keras.utils.set_random_seed(cfg.seed)
    data = load_training_data(spec["dataset"], choice.input_size, cfg.val_fraction, cfg.seed, log)
    run = TrainingRun(cfg, choice, data, log)
    (work / f"partial{rank}").mkdir(parents=True, exist_ok=True)
    recorder = Recorder(Checkpoints(work / f"partial{rank}"), None, log, 0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        network = build_network(choice, len(data.class_names), cfg.strategy)
        history, _ = train_phases(network, run, recorder)
        val = calibrate_network(network, run)
    digest = hashlib.sha256()
    for weight in network.model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return {
        "loss": {k: [round(v, 4) for v in vs] for k, vs in history.items() if k.endswith("loss")},
        "val_accuracy": val.accuracy,
        "weights_sha256": digest.hexdigest()[:16],
    }


def _patch_reduce(strategy: Any, scalars: bool) -> None:
    """Diagnostic: a `reduce` that takes a nest (and, with `scalars`, axis=0 on a scalar as
    axis=None)."""
    import tensorflow as tf

    plain = strategy.reduce

    def reduce(op: Any, value: Any, axis: Any = None) -> Any:
        def one(v: Any) -> Any:
            rank = getattr(v, "shape", tf.TensorShape(None)).rank
            return plain(op, v, axis=None if scalars and rank == 0 else axis)

        return tf.nest.map_structure(one, value)

    strategy.reduce = reduce


def run_single(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [train_worker(spec)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_tfconfig(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Two worker processes of this script, each with its TF_CONFIG, as the TF guide runs them."""
    work = Path(spec["work"])
    work.mkdir(parents=True)
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    procs = []
    for index in range(2):
        worker = {**spec, "result": str(work / f"result{index}.json")}
        (work / f"spec{index}.json").write_text(json.dumps(worker))
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = {**os.environ, "TF_CONFIG": tf_config}
        command = [sys.executable, __file__, "--route", "tfconfig"]
        procs.append(
            subprocess.Popen([*command, "--worker", str(work / f"spec{index}.json")], env=env)
        )
    try:
        codes = [proc.wait(timeout=600) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for index, code in enumerate(codes):
        path = work / f"result{index}.json"
        results.append(json.loads(path.read_text()) if path.is_file() else {"exit_code": code})
    return results


def run_ray(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train's TensorflowTrainer on a local 2-CPU Ray; each worker writes its report."""
    import ray

    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer
    except ImportError as err:  # the project pins ray, not its train extra
        raise SystemExit(f"{err}: pip install 'ray[train]==2.60.0' for --route ray") from None

    work = Path(spec["work"])
    work.mkdir(parents=True)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "test")])}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        trainer = TensorflowTrainer(
            train_loop_per_worker=_ray_loop,
            train_loop_config=spec,
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(name="bench_multiworker", storage_path=str(work / "ray")),
        )
        try:
            trainer.fit()
        except Exception as err:  # the workers' own reports say why
            print(
                f"TensorflowTrainer.fit: {type(err).__name__}: {' '.join(str(err).split())[:300]}"
            )
    finally:
        ray.shutdown()
    return [json.loads(path.read_text()) for path in sorted(work.glob("rank*.json"))] or [
        {"error": "no worker wrote a report"}
    ]


def _ray_loop(spec: dict[str, Any]) -> None:
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    info = train_worker(spec)
    Path(spec["work"], f"rank{rank}.json").write_text(json.dumps(info))
    ray.train.report({"ok": bool(info.get("ok"))})


if __name__ == "__main__":
    raise SystemExit(main())
