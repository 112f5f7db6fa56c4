"""Process plumbing of the node benchmarks that read CPU time (bench_node_cameras, bench_node_rois).

One recorder, the nodes under test and one publisher, each its own process; the nodes' CPU time
is read from /proc while frames flow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench_node import stop

BENCH = Path(__file__).resolve().parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class NodeRun:
    """One run: `tag` names its rec_/pub_/ready_ files, `log` its log file in the workdir."""

    tag: str
    log: str
    nodes: list[list[str]]
    recorder_args: list[str]
    publisher_args: list[str]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure_cpu(
    pids: list[int], publisher: list[str], ready: Path, args: argparse.Namespace, env: dict, log: IO
) -> float:
    """Run the publisher; CPU seconds of `pids` from its first frame to the end of the grace."""
    proc = subprocess.Popen(publisher, env=env, stdout=log, stderr=subprocess.STDOUT)
    while not ready.exists() and proc.poll() is None:
        time.sleep(0.02)
    before = sum(cpu_seconds(pid) for pid in pids)
    if proc.wait(timeout=90 + args.duration + 15) != 0:
        raise RuntimeError(f"publisher failed; see the logs in {args.workdir}")
    time.sleep(args.grace)
    return sum(cpu_seconds(pid) for pid in pids) - before


def run_nodes(run: NodeRun, args: argparse.Namespace, env: dict) -> tuple[dict, dict, float]:
    """Recorder, nodes, publisher; what the publisher sent, what the recorder saw, node CPU s."""
    tmp = args.workdir
    rec_out, pub_out, ready = (tmp / f"{n}_{run.tag}.json" for n in ("rec", "pub", "ready"))
    ready.unlink(missing_ok=True)
    log = open(tmp / run.log, "w")  # noqa: SIM115
    recorder = subprocess.Popen(
        [sys.executable, str(BENCH / "node_recorder.py"), "--out", str(rec_out),
         *run.recorder_args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=env, stdout=log, stderr=log) for cmd in run.nodes]
    publisher = [
        sys.executable, str(BENCH / "node_publisher.py"), "--rate", str(args.rate),
        "--count", str(int(args.duration * args.rate)), *run.publisher_args,
        "--ready", str(ready), "--out", str(pub_out),
    ]  # fmt: skip
    try:
        cpu = measure_cpu([n.pid for n in nodes], publisher, ready, args, env, log)
    finally:
        stop(recorder)
        for node in nodes:
            stop(node)
        log.close()
    return json.loads(pub_out.read_text()), json.loads(rec_out.read_text()), cpu
