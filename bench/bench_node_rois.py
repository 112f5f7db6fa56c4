"""Benchmark the node in ROI mode: batched inference against one inference per ROI (issue 10).

A publisher process sends 640x480 bgr8 at 30 Hz and, with each frame, a Detection2DArray of N
sign-sized boxes (24-72 px) with the frame's stamp; the node (`roi_source:=detections`,
MobileNetV2 a0.35 at 96 px with the default crop policy, LiteRT, top_k 1) pairs, crops and
classifies them; a recorder timestamps every image and every `classified_detections`. For
N = 1, 8, 32 it runs the node twice in the same run: `batch_rois:=true` (all crops of a frame
in one inference) and `batch_rois:=false` (one inference per crop, the baseline), and measures
the bare LiteRT floor of both (one batch of N, N single calls).

    .venv/bin/python bench/bench_node_rois.py                 # ~2.5 min on 2 cores
    .venv/bin/python bench/bench_node_rois.py --duration 5 --rois 32   # quick look

Columns: drops = frames sent but never answered; p50/p95 = stamp -> result received; node p50 =
image received -> result received at the recorder (the node's receive -> publish time plus one
small-message hop); inference p50 = the node's own `batch_inference_p50_ms` (resize + all
inferences of a frame); CPU ms/frame = the node process's utime+stime over the run per
answered frame.
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
from node_models import batch_floor, ensure_bundle  # noqa: E402
from node_procs import NodeRun, run_nodes  # noqa: E402

MODEL = "mobilenet_v2_0.35"
SIZE = (96, 96)
MODES = ("batched", "per_roi")


def node_command(bundle: Path, mode: str, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "tl_perception.ros.classifier_node", "--ros-args",
        "-p", f"model_path:={bundle}", "-p", "backend:=litert", "-p", "qos:=auto",
        "-p", "top_k:=1", "-p", "roi_source:=detections",
        "-p", f"batch_rois:={'true' if mode == 'batched' else 'false'}", *extra,
    ]  # fmt: skip


def run_once(bundle: Path, rois: int, mode: str, args: argparse.Namespace, env: dict) -> dict:
    """One node, one publisher, one recorder; the node's CPU time is read while frames flow."""
    tag = f"{rois}_{mode}"
    extra = ["-p", f"num_threads:={args.num_threads}"]
    sent, rec, cpu = run_nodes(
        NodeRun(
            tag=tag,
            log=f"rois_{tag}.log",
            nodes=[node_command(bundle, mode, extra)],
            recorder_args=[],
            publisher_args=["--rois", str(rois), "--output", "classified_detections"],
        ),
        args,
        env,
    )
    return summarise(rois, mode, sent, rec, cpu)


def summarise(rois: int, mode: str, sent: dict, rec: dict, cpu_s: float) -> dict:
    results = {int(k): v for k, v in rec["results"].items()}
    images = {int(k): v for k, v in rec["images"].items()}
    latency = np.array([(v - k) / 1e6 for k, v in results.items()])
    node_ms = np.array([(v - images[k]) / 1e6 for k, v in results.items() if k in images])
    diag = next(iter(rec["diagnostics"].values()), {})

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else float("nan")

    return {
        "rois": rois,
        "mode": mode,
        "sent": sent["sent"],
        "classified": len(results),
        "dropped": sent["sent"] - len(results),
        "rois_per_result": float(np.mean(list(rec["rois"].values()))) if rec["rois"] else 0.0,
        "latency_p50_ms": pct(latency, 50),
        "latency_p95_ms": pct(latency, 95),
        "node_ms_p50": pct(node_ms, 50),
        "inference_p50_ms": float(diag.get("batch_inference_p50_ms", "nan")),
        "cpu_ms_per_frame": 1000.0 * cpu_s / max(1, len(results)),
        "node_diagnostics": diag,
    }


def print_table(floor: dict, runs: list[dict]) -> None:
    print(f"\n{MODEL} @{SIZE[0]} px, LiteRT; floor (bare interpreter, no resize):")
    for count, value in floor.items():
        print(f"  {count:>2} ROIs: one batch {value['batched_ms']:.2f} ms, "
              f"{count} single calls {value['per_roi_ms']:.2f} ms")  # fmt: skip
    print(f"{'ROIs':>4} {'mode':8} {'drops':>6} {'p50 ms':>8} {'p95 ms':>8} {'node p50':>9} "
          f"{'infer p50':>10} {'CPU ms/fr':>10} {'ROIs/result':>12}")  # fmt: skip
    for r in runs:
        print(f"{r['rois']:>4} {r['mode']:8} {r['dropped']:6d} {r['latency_p50_ms']:8.1f} "
              f"{r['latency_p95_ms']:8.1f} {r['node_ms_p50']:9.1f} {r['inference_p50_ms']:10.1f} "
              f"{r['cpu_ms_per_frame']:10.1f} {r['rois_per_result']:12.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to drain after")
    parser.add_argument("--rois", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--num-threads", type=int, default=0, help="the node's num_threads")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse built bundles here")
    parser.add_argument("--domain-id", type=int, default=random.SystemRandom().randint(110, 200))
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tl_bench_rois_"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = ros_env(args.domain_id, str(args.workdir / "roslog"))
    print(f"workdir {args.workdir}; ROS_DOMAIN_ID {args.domain_id}", flush=True)
    started = time.monotonic()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    report["loadavg_start"] = os.getloadavg()
    bundle = ensure_bundle(MODEL, args.workdir, SIZE)
    from tl_perception.bundle import update_meta
    from tl_perception.crop import CropPolicy

    update_meta(bundle, crop=CropPolicy().to_dict())  # the default policy, as extract writes it
    floor = batch_floor(bundle, tuple(args.rois))
    runs = []
    for rois in args.rois:
        for mode in args.modes:
            runs.append(run_once(bundle, rois, mode, args, env))
            print(f"  {rois} ROIs {mode}: {runs[-1]['classified']}/{runs[-1]['sent']} answered "
                  f"at {time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    report.update(floor=floor, runs=runs, loadavg_end=os.getloadavg())
    print_table(floor, runs)
    print(f"\nload average (1/5/15 min) at start {report['loadavg_start']}, "
          f"at end {report['loadavg_end']} on {os.cpu_count()} CPUs")  # fmt: skip
    (args.workdir / "results_rois.json").write_text(json.dumps(report, indent=2))
    print(f"total {time.monotonic() - started:.0f} s; results in {args.workdir}/results_rois.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
