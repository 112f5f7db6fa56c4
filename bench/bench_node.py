"""Benchmark the classifier node against the tutorial node (model.predict in the callback).

A publisher process sends 640x480 bgr8 at 30 Hz for 20 s; a recorder process timestamps every
image and every classification. For each model (MobileNetV2 a0.35 @224, EfficientNetB0 @224) it
runs: this node on LiteRT, this node on Keras (compiled tf.function), and the naive node
(`bench/node_naive.py`), and measures the raw inference floor in-process.

    .venv/bin/python bench/bench_node.py            # ~5 min on 2 cores
    .venv/bin/python bench/bench_node.py --duration 5 --models mobilenet_v2_0.35   # quick look

Processes use their own ROS_DOMAIN_ID, localhost discovery and the shipped Fast DDS profile
(config/fastdds_large_frames.xml) when present. Results: a table on stdout (ratios against the
naive node of the same run) and `<workdir>/results.json`. Columns: fps = classifications received
per second of publishing; drops = frames sent but never classified; p50/p95/p99 = stamp ->
classification received; node p50 = image received -> classification received (both at the
recorder, so it includes one small-message hop); capacity = 1000 / node p50 for a node that kept
up with the camera (else its fps): at a 30 Hz camera, fps alone cannot show headroom.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from node_models import MODELS, ensure_bundle, inference_floor  # noqa: E402

PROFILE = REPO / "config" / "fastdds_large_frames.xml"
VARIANTS = ("litert", "keras", "naive")


def ros_env(domain_id: int, log_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOCALHOST_ONLY="1",
        ROS_LOG_DIR=log_dir,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    if PROFILE.is_file():
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    return env


def node_command(variant: str, bundle: Path) -> list[str]:
    if variant == "naive":
        return [sys.executable, str(BENCH / "node_naive.py"), "--ros-args", "-p",
                f"model_path:={bundle}"]  # fmt: skip
    return [
        sys.executable, "-m", "tl_perception.ros.classifier_node", "--ros-args",
        "-p", f"model_path:={bundle}", "-p", f"backend:={variant}",
        "-p", "output_format:=json", "-p", "qos:=auto", "-p", "top_k:=1",
    ]  # fmt: skip


def stop(proc: subprocess.Popen, timeout: float = 8.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_once(variant: str, bundle: Path, args: argparse.Namespace, env: dict, tmp: Path) -> dict:
    """One node under test, one publisher, one recorder; returns the measured numbers."""
    rec_out, pub_out = tmp / f"rec_{variant}.json", tmp / f"pub_{variant}.json"
    log = open(tmp / f"{bundle.name}_{variant}.log", "w")  # noqa: SIM115
    recorder = subprocess.Popen(
        [sys.executable, str(BENCH / "node_recorder.py"), "--out", str(rec_out)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    node = subprocess.Popen(node_command(variant, bundle), env=env, stdout=log, stderr=log)
    count = int(args.duration * args.rate)
    try:
        subprocess.run(
            [sys.executable, str(BENCH / "node_publisher.py"), "--rate", str(args.rate),
             "--count", str(count), "--out", str(pub_out)],
            env=env, stdout=log, stderr=subprocess.STDOUT, check=True,
            timeout=90 + args.duration + 15,
        )  # fmt: skip
        time.sleep(args.grace)
    finally:
        stop(recorder)
        stop(node)
        log.close()
    sent = json.loads(pub_out.read_text())
    rec = json.loads(rec_out.read_text())
    return summarise(variant, sent, rec)


def summarise(variant: str, sent: dict, rec: dict) -> dict:
    results = {int(k): v for k, v in rec["results"].items()}
    images = {int(k): v for k, v in rec["images"].items()}
    latency = np.array([(v - k) / 1e6 for k, v in results.items()])
    node_ms = np.array([(v - images[k]) / 1e6 for k, v in results.items() if k in images])

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return {
        "variant": variant,
        "sent": sent["sent"],
        "publisher_late": sent["late"],
        "images_at_recorder": len(images),
        "classified": len(results),
        "dropped": sent["sent"] - len(results),
        "fps": len(results) / sent["seconds"],
        "latency_p50_ms": pct(latency, 50),
        "latency_p95_ms": pct(latency, 95),
        "latency_p99_ms": pct(latency, 99),
        "node_ms_p50": pct(node_ms, 50),
        # A node that keeps up is limited by the camera, not by itself: estimate what it could
        # take from its per-frame time. A saturated node's capacity is what it processed.
        "capacity_fps": (
            1000.0 / pct(node_ms, 50)
            if sent["sent"] == len(results) and node_ms.size
            else len(results) / sent["seconds"]
        ),
        "node_diagnostics": rec.get("diagnostics", {}),
    }


def print_table(model: str, floor: dict, runs: list[dict]) -> None:
    naive = next((r for r in runs if r["variant"] == "naive"), None)
    print(f"\n{model}: raw floor LiteRT invoke {floor['litert_invoke_ms']:.1f} ms, "
          f"Keras tf.function {floor['keras_tf_function_ms']:.1f} ms, "
          f"model.predict {floor['model_predict_ms']:.1f} ms; Classifier.classify(640x480): "
          f"LiteRT {floor['litert_classify_640x480_ms']:.1f} ms, "
          f"Keras {floor['keras_classify_640x480_ms']:.1f} ms")  # fmt: skip
    head = f"{'node':8} {'fps':>6} {'drops':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
    print(head + f"{'node p50':>9} {'capacity':>9} {'cap x naive':>12} {'p50 / naive':>12}")
    for r in runs:
        ratio_cap = r["capacity_fps"] / naive["capacity_fps"] if naive else float("nan")
        ratio_lat = r["latency_p50_ms"] / naive["latency_p50_ms"] if naive else float("nan")
        print(f"{r['variant']:8} {r['fps']:6.1f} {r['dropped']:6d} {r['latency_p50_ms']:8.1f} "
              f"{r['latency_p95_ms']:8.1f} {r['latency_p99_ms']:8.1f} {r['node_ms_p50']:9.1f} "
              f"{r['capacity_fps']:9.0f} {ratio_cap:12.1f} {ratio_lat:12.3f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to drain after")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--workdir", type=Path, default=None, help="reuse built bundles here")
    parser.add_argument("--domain-id", type=int, default=random.SystemRandom().randint(110, 200))
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tl_bench_node_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = ros_env(args.domain_id, str(workdir / "roslog"))
    profile = PROFILE if PROFILE.is_file() else "Fast DDS defaults (profile not found)"
    print(f"workdir {workdir}; ROS_DOMAIN_ID {args.domain_id}; DDS profile: {profile}", flush=True)
    started = time.monotonic()
    report: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "models": {}}
    report["loadavg_start"] = os.getloadavg()[0]
    for model in args.models:
        bundle = ensure_bundle(model, workdir)
        floor = inference_floor(bundle)
        print(
            f"{model}: built and floor measured at {time.monotonic() - started:.0f} s", flush=True
        )
        runs = []
        for variant in args.variants:
            runs.append(run_once(variant, bundle, args, env, workdir))
            print(f"  {variant}: {runs[-1]['fps']:.1f} fps at {time.monotonic() - started:.0f} s",
                  flush=True)  # fmt: skip
        report["models"][model] = {"floor": floor, "runs": runs}
    for model, data in report["models"].items():
        print_table(model, data["floor"], data["runs"])
    report["loadavg_end"] = os.getloadavg()[0]
    print(f"\nload average (1 min) at start {report['loadavg_start']:.1f}, "
          f"at end {report['loadavg_end']:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\ntotal {time.monotonic() - started:.0f} s; results in {workdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
