"""Benchmark several cameras: 4 cameras x 30 Hz 640x480 in one node against 4 single-camera
nodes, in the same run (issue 11); and, in ROI mode, one camera flooding boxes (issue 16).

A publisher process sends 640x480 bgr8 at 30 Hz on `c0/image` ... `c3/image` (all four on the
same deadline, as a hardware-triggered rig does; `--stagger` spreads them over the period); a
recorder timestamps every image and every `cN/classification`. The node under test is either
one `classifier_node` with `cameras:=[c0, c1, c2, c3]` (the newest frame of every camera in one
batched inference), four `classifier_node` processes with `-r image:=cN/image`, or, as a
reference, one single-camera node fed one camera. Model: MobileNetV2 a0.35 @224 (bench_node's),
LiteRT, full frames, top_k 1, JSON output.

    .venv/bin/python bench/bench_node_cameras.py              # ~2 min on 2 cores
    .venv/bin/python bench/bench_node_cameras.py --duration 5 # quick look

Columns: drops = frames sent but never classified (all cameras); p50/p95 = stamp -> result
received (all cameras' frames); node p50 = image received -> result received at the recorder;
CPU s = utime+stime of the node process(es) from the first frame to the end of the drain
(read from /proc/<pid>/stat); CPU ms/frame = that per classified frame.

ROI mode (`--rois N`): every camera's detector sends N sign-sized boxes per frame with the
frame's stamp (`roi_source:=detections`, MobileNetV2 a0.35 at 96 px with the default crop
policy, as bench_node_rois.py), and the setup `one_node_flood` has camera c0's detector send
`--flood M` boxes per frame instead: the others must keep their results and latency. A table
per camera follows (answered frames, latency, ROIs per answer).

    .venv/bin/python bench/bench_node_cameras.py --rois 4 --setups one_node one_node_flood
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_node import ros_env  # noqa: E402
from node_models import ensure_bundle  # noqa: E402
from node_procs import NodeRun, run_nodes  # noqa: E402

MODEL = "mobilenet_v2_0.35"
CAMERAS = ("c0", "c1", "c2", "c3")
SETUPS = ("one_node", "four_nodes", "single_camera", "one_node_flood")
ROI_SIZE = (96, 96)


def node_commands(setup: str, bundle: Path, rois: int, max_rois: int = 0) -> list[list[str]]:
    base = [
        sys.executable, "-m", "tl_perception.ros.classifier_node", "--ros-args",
        "-p", f"model_path:={bundle}", "-p", "backend:=litert", "-p", "qos:=auto",
        "-p", "top_k:=1", "-p", "output_format:=json",
    ]  # fmt: skip
    if rois:
        base += ["-p", "roi_source:=detections"]
    if max_rois:
        base += ["-p", f"max_rois:={max_rois}"]
    if setup.startswith("one_node"):
        return [[*base, "-p", f"cameras:=[{', '.join(CAMERAS)}]"]]
    names = CAMERAS if setup == "four_nodes" else CAMERAS[:1]
    return [[*base, *remaps(name)] for name in names]


def remaps(name: str) -> list[str]:
    """A single-camera node for camera `name`: its own node name and topics."""
    return [
        "-r", f"__node:=classifier_{name}", "-r", f"image:={name}/image",
        "-r", f"classification:={name}/classification", "-r", f"detections:={name}/detections",
        "-r", f"classified_detections:={name}/classified_detections",
    ]  # fmt: skip


def run_once(setup: str, bundle: Path, args: argparse.Namespace, env: dict) -> dict:
    names = ",".join(CAMERAS[:1] if setup == "single_camera" else CAMERAS)
    publisher = ["--cameras", names, *(["--stagger"] if args.stagger else [])]
    if args.rois:
        publisher += ["--rois", str(args.rois), "--output", "classified_detections"]
    if setup == "one_node_flood":
        publisher += ["--flood", str(args.flood)]
    sent, rec, cpu = run_nodes(
        NodeRun(
            tag=setup,
            log=f"cameras_{setup}.log",
            nodes=node_commands(setup, bundle, args.rois, args.max_rois),
            recorder_args=["--cameras", names],
            publisher_args=publisher,
        ),
        args,
        env,
    )
    return summarise(setup, sent, rec, cpu)


def summarise(setup: str, sent: dict, rec: dict, cpu_s: float) -> dict:
    latency, node_ms, classified = [], [], 0
    per_camera, cameras = {}, {}
    for name, data in rec["cameras"].items():
        results = {int(k): v for k, v in data["results"].items()}
        images = {int(k): v for k, v in data["images"].items()}
        classified += len(results)
        per_camera[name] = len(results)
        own = [(v - k) / 1e6 for k, v in results.items()]
        latency += own
        node_ms += [(v - images[k]) / 1e6 for k, v in results.items() if k in images]
        rois = list(data.get("rois", {}).values())
        cameras[name] = {
            "answered": len(results),
            "latency_p50_ms": pct(own, 50),
            "latency_p95_ms": pct(own, 95),
            "rois_per_result": float(np.mean(rois)) if rois else 0.0,
        }

    return {
        "setup": setup,
        "sent": sent["sent"],
        "classified": classified,
        "per_camera": per_camera,
        "dropped": sent["sent"] - classified,
        "latency_p50_ms": pct(latency, 50),
        "latency_p95_ms": pct(latency, 95),
        "latency_p99_ms": pct(latency, 99),
        "node_ms_p50": pct(node_ms, 50),
        "cameras": cameras,
        "cpu_s": cpu_s,
        "cpu_ms_per_frame": 1000.0 * cpu_s / max(1, classified),
        "node_diagnostics": rec.get("diagnostics", {}),
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_cameras(runs: list[dict], per_camera: int) -> None:
    """Per camera: frames answered (of `per_camera`), latency, ROIs per answer."""
    print(f"\n{'setup':15} {'camera':6} {'answered':>9} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'ROIs/ans':>9}")  # fmt: skip
    for r in runs:
        for name, c in r["cameras"].items():
            print(f"{r['setup']:15} {name:6} {c['answered']:>5}/{per_camera:<3} "
                  f"{c['latency_p50_ms']:8.1f} {c['latency_p95_ms']:8.1f} "
                  f"{c['rois_per_result']:9.1f}")  # fmt: skip


def print_table(runs: list[dict]) -> None:
    print(f"\n{'setup':14} {'sent':>6} {'drops':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'node p50':>9} {'CPU s':>7} {'CPU ms/frame':>13}")  # fmt: skip
    for r in runs:
        print(f"{r['setup']:14} {r['sent']:6d} {r['dropped']:6d} {r['latency_p50_ms']:8.1f} "
              f"{r['latency_p95_ms']:8.1f} {r['latency_p99_ms']:8.1f} {r['node_ms_p50']:9.1f} "
              f"{r['cpu_s']:7.2f} {r['cpu_ms_per_frame']:13.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to drain after")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--stagger", action="store_true", help="cameras not in step")
    parser.add_argument("--rois", type=int, default=0, help="ROI mode: boxes per camera frame")
    parser.add_argument("--flood", type=int, default=200, help="one_node_flood: c0's boxes")
    parser.add_argument("--max-rois", type=int, default=0, help="the node's max_rois (0: default)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse built bundles here")
    parser.add_argument("--domain-id", type=int, default=random.SystemRandom().randint(110, 200))
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tl_bench_cameras_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = ros_env(args.domain_id, str(args.workdir / "roslog"))
    print(f"workdir {args.workdir}; ROS_DOMAIN_ID {args.domain_id}", flush=True)
    started = time.monotonic()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    report.update(loadavg_start=os.getloadavg(), stagger=args.stagger)
    if args.rois:
        from tl_perception.bundle import update_meta
        from tl_perception.crop import CropPolicy

        bundle = ensure_bundle(MODEL, args.workdir, ROI_SIZE)
        update_meta(bundle, crop=CropPolicy().to_dict())  # the default policy, as extract
    else:
        bundle = ensure_bundle(MODEL, args.workdir)
    runs = []
    for setup in args.setups:
        runs.append(run_once(setup, bundle, args, env))
        print(f"  {setup}: {runs[-1]['classified']}/{runs[-1]['sent']} classified at "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    report.update(runs=runs, loadavg_end=os.getloadavg(), rois=args.rois, flood=args.flood)
    report["max_rois"] = args.max_rois
    print_table(runs)
    if args.rois:
        print_cameras(runs, int(args.duration * args.rate))
    print(f"\nload average (1/5/15 min) at start {report['loadavg_start']}, "
          f"at end {report['loadavg_end']} on {os.cpu_count()} CPUs")  # fmt: skip
    (args.workdir / "results_cameras.json").write_text(json.dumps(report, indent=2))
    print(f"total {time.monotonic() - started:.0f} s; results in "
          f"{args.workdir}/results_cameras.json")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
