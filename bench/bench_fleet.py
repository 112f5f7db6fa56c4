"""Fleet extraction on the local pool and on Ray, and what the driver costs (docs/scaling.md).

Three measurements, each against a baseline taken in the same run:

  speed (default): N synthetic drives (`tl-perception synth`, ROS 1 / rosbag2 sqlite3 / MCAP in
      turn) extracted with `--engine local` and `--engine ray` at 1 and 2 workers, in this
      process (Ray: one local Ray of 2 CPUs, started once; its start-up and the warm-up of its
      workers are timed apart). Per run: wall s, frames/s, CPU s (in units, in the driver, and
      of the whole process tree, sampled from /proc), the ratio to the local pool at the same
      worker count, the units' time distribution and the driver's reduce and commit time.
      Every run's dataset tree must equal the first one's, byte for byte.
  --memory: the driver's peak memory (VmHWM, and tracemalloc's peak of Python objects) when it
      extracts 250 and 1,000 small bags, and 1,000 with 4x the frames: each in a fresh process.
  --windows: one large bag extracted whole and cut into time windows of decreasing size: the
      fixed cost per window (opening the bag, seeking to the window) against its work, which is
      what `UNIT_BYTES` is chosen from.

Usage: bench/bench_fleet.py [--bags 64] [--frames 40] [--repeat 2] [--memory] [--windows]
Run under `nice -n 19` on a shared machine; print `uptime` with the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tl_perception.bag.extract import UNIT_BYTES, ExtractOptions, ExtractReport, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.synth.writer import IMAGE_TOPIC, LABEL_TOPIC, DriveSpec, write_synthetic_bag

STORAGES = ("ros1", "sqlite3", "mcap")
TICK = os.sysconf("SC_CLK_TCK")


def make_fleet(root: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    """`count` synthetic sign drives, storage formats in turn."""
    root.mkdir(parents=True, exist_ok=True)
    bags = []
    for i in range(count):
        storage = STORAGES[i % len(STORAGES)]
        path = root / (f"drive{i:04d}.bag" if storage == "ros1" else f"drive{i:04d}")
        if not path.exists():
            spec = DriveSpec(kind="signs", frames=frames, seed=i, size=size, storage=storage)
            write_synthetic_bag(path, spec)
        bags.append(path)
    return bags


@dataclass(frozen=True)
class Setup:
    """How a bench run extracts (the content options are fixed: labels, split, dedup)."""

    engine: str = "local"
    workers: int = 2
    labels: LabelSpec = field(default_factory=lambda: LabelSpec("topic", topic=LABEL_TOPIC))
    unit_bytes: int = UNIT_BYTES


def options(bags: list[Path], out: Path, setup: Setup) -> ExtractOptions:
    return ExtractOptions(
        bags=tuple(bags),
        topic=IMAGE_TOPIC,
        out=out,
        labels=setup.labels,
        split=(0.7, 0.15, 0.15),
        dedup=4,
        workers=setup.workers,
        engine=setup.engine,
        unit_bytes=setup.unit_bytes,
    )


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class TreeCpu:
    """CPU seconds of this process and all its descendants, from /proc: the known processes are
    read every 50 ms, the process table every 0.5 s (a process that lives less than that can be
    missed; pool and Ray workers live for a whole run). The sampling thread's own CPU is kept
    apart, so it does not count as the driver's."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self.own = 0.0  # this sampler's thread CPU
        self._known: set[int] = {os.getpid()}
        self._scanned = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()
            self.own = time.thread_time()

    def sample(self) -> None:
        with self._lock:
            if time.monotonic() - self._scanned > 0.5:
                self._known = _descendants(os.getpid())
                self._scanned = time.monotonic()
            for pid in self._known:
                cpu = _cpu_of(pid)
                if cpu is not None:
                    self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)

    def snapshot(self) -> tuple[float, float, float]:
        """(tree CPU, driver CPU, sampler CPU) so far."""
        self._scanned = 0.0  # rescan now: processes may have started
        self.sample()
        return sum(self.seen.values()), self.seen.get(os.getpid(), 0.0), self.own

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _cpu_of(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in mine]
        mine.update(children)
        frontier += children
    return mine


@dataclass
class Run:
    name: str
    wall: float
    frames: int
    tree_cpu: float
    driver_cpu: float
    report: ExtractReport
    digest: str


def timed_run(name: str, opts: ExtractOptions, cpu: TreeCpu) -> Run:
    shutil.rmtree(opts.out, ignore_errors=True)
    tree0, driver0, own0 = cpu.snapshot()
    started = time.perf_counter()
    report = extract(opts)
    wall = time.perf_counter() - started
    tree1, driver1, own1 = cpu.snapshot()
    sampler = own1 - own0
    return Run(
        name,
        wall,
        report.written,
        tree1 - tree0 - sampler,
        driver1 - driver0 - sampler,
        report,
        tree_digest(opts.out),
    )


def _import_units(_shared: None, _item: int) -> int:
    import tl_perception.bag.units  # noqa: F401  (what every unit imports)

    return os.getpid()


def pool_start(workers: int) -> float:
    """Seconds to start a local pool and have every process import the units."""
    from tl_perception.engine import EngineSpec, Job, open_engine

    started = time.perf_counter()
    with open_engine(EngineSpec("local", workers)) as engine:
        list(engine.map_unordered(Job(_import_units, None), range(workers)))
        return time.perf_counter() - started


def dispatch_rate(engine: str, window: int, units: int = 2000) -> float:
    """Empty units per second through an engine with `window` units in flight (local: that
    many processes), once started: the most units a driver can hand out and take back."""
    from tl_perception.engine import EngineSpec, Job, open_engine

    with open_engine(EngineSpec(engine, window)) as pool:
        list(pool.map_unordered(Job(_import_units, None), range(2 * window)))  # warm
        started = time.perf_counter()
        list(pool.map_unordered(Job(_nothing, None), range(units)))
        return units / (time.perf_counter() - started)


def _nothing(_shared: None, item: int) -> int:
    return item


def quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return (
        f"n={len(ordered)} min {ordered[0]:.3f} p50 {statistics.median(ordered):.3f} "
        f"p90 {p90:.3f} max {ordered[-1]:.3f} s"
    )


def speed(args: argparse.Namespace, tmp: Path) -> None:
    import ray

    started = time.perf_counter()
    bags = make_fleet(tmp / "fleet", args.bags, args.frames, (args.width, args.height))
    size = sum(f.stat().st_size for b in bags for f in ([b] if b.is_file() else b.iterdir()))
    print(
        f"fleet: {len(bags)} bags ({', '.join(STORAGES)} in turn), {args.frames} frames of "
        f"{args.width}x{args.height} bgr8 each, {size / 1e6:.0f} MB; written in "
        f"{time.perf_counter() - started:.1f} s"
    )
    cpu = TreeCpu()
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20
    )
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()

    @ray.remote
    def warm() -> int:
        import tl_perception.bag.units  # noqa: F401  (what every unit imports)

        return os.getpid()

    ray.get([warm.remote() for _ in range(2)])
    warm_s = time.perf_counter() - t0
    print(
        f"Ray start-up: ray.init(num_cpus=2) {init_s:.2f} s, workers warm (tl_perception "
        f"imported in 2 workers) {warm_s:.2f} s"
    )
    pool_s = pool_start(2)
    print(
        f"local pool start-up (2 processes, tl_perception imported): {pool_s:.2f} s, paid by "
        "every local run of 2 workers (it is in their wall times)"
    )
    configs = [("local", 1), ("ray", 1), ("local", 2), ("ray", 2)]
    runs: dict[tuple[str, int], list[Run]] = {c: [] for c in configs}
    for repeat in range(args.repeat):
        for engine, workers in configs:
            out = tmp / f"out_{engine}{workers}"
            opts = options(bags, out, Setup(engine, workers))
            run = timed_run(f"{engine} x{workers}", opts, cpu)
            runs[(engine, workers)].append(run)
            print(f"  [{repeat}] {run.name}: {run.wall:.2f} s", flush=True)
    dispatch = {
        f"{e} window {w}": dispatch_rate(e, w) for e, w in (("local", 2), ("ray", 2), ("ray", 32))
    }
    ray.shutdown()
    cpu.close()
    print(
        "driver dispatch, 2,000 empty units on 2 CPUs: "
        + ", ".join(f"{name} {rate:.0f} units/s" for name, rate in dispatch.items())
    )
    digests = {run.digest for rs in runs.values() for run in rs}
    print(f"dataset trees identical across all runs: {len(digests) == 1}")
    print()
    print(
        f"{'engine':<10}{'wall s':>8}{'frames/s':>10}{'unit CPU':>10}{'driver':>8}"
        f"{'tree CPU':>10}{'wall/local':>12}{'CPU/local':>11}"
    )
    best = {c: min(rs, key=lambda r: r.wall) for c, rs in runs.items()}
    for (_engine, workers), run in best.items():
        units = sum(c for wave in run.report.timings.units.values() for _s, c in wave)
        base = best[("local", workers)]
        print(
            f"{run.name:<10}{run.wall:8.2f}{run.frames / run.wall:10.1f}{units:10.1f}"
            f"{run.driver_cpu:8.2f}{run.tree_cpu:10.1f}{run.wall / base.wall:12.2f}"
            f"{run.tree_cpu / base.tree_cpu:11.2f}"
        )
    print(
        f"(best wall of {args.repeat} runs each; ratios against the local pool at the same "
        "workers; Ray's start-up is not in its wall, the local pool's is; unit CPU: in the "
        "units (in-process for local x1, so also in its driver column); tree CPU: every "
        "process of the run, Ray's daemons included)"
    )
    local = best[("local", 2)]
    print()
    for run in (local, best[("ray", 2)]):
        print(f"units of `{run.name}` (seconds in the worker):")
        for wave, values in run.report.timings.units.items():
            print(f"  {wave:<7} {quantiles([s for s, _c in values])}")
    steps = local.report.timings.steps
    print("driver steps of `local x2`: " + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items()))
    print(
        f"  per bag: reduce {1e3 * steps['reduce'] / len(bags):.2f} ms, commit "
        f"{1e3 * steps['commit'] / len(bags):.2f} ms ({local.frames} rows, "
        f"{1e6 * steps['commit'] / max(local.frames, 1):.1f} us per row)"
    )


MEMORY_CODE = """
import json, sys, tracemalloc
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from bench_fleet import options
from tl_perception.bag.extract import extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.dataset import read_manifest
bags = [Path(p) for p in json.loads(Path(sys.argv[2]).read_text())]
tracemalloc.start()
from bench_fleet import Setup
setup = Setup(labels=LabelSpec(sys.argv[4], topic="/label", name="sign"))
opts = options(bags, Path(sys.argv[3]), setup)
report = extract(opts)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
status = Path("/proc/self/status").read_text().splitlines()
hwm = [line for line in status if line.startswith("VmHWM")][0]
sequences = len({row["sequence"] for row in read_manifest(sys.argv[3])})
steps = report.timings.steps
print(report.written, sequences, peak, int(hwm.split()[1]), steps["reduce"], steps["commit"])
"""


def memory(args: argparse.Namespace, tmp: Path) -> None:
    """The driver's memory must not grow with frames: 250 and 1,000 bags, then 4x the frames,
    with one label per bag (one sequence each) and with the drives' own label runs."""
    print("driver memory (one fresh process per line; local pool of 2 workers):")
    print(
        f"{'labels':<8}{'bags':>6}{'frames':>8}{'images':>8}{'sequences':>11}"
        f"{'Python peak MB':>16}{'VmHWM MB':>10}{'reduce s':>10}{'commit s':>10}"
    )
    small = make_fleet(tmp / "mem6", 1000, 6, (32, 24))
    large = make_fleet(tmp / "mem24", 1000, 24, (32, 24))
    cases = [("fixed", small[:250], 6), ("fixed", small, 6), ("fixed", large, 24)]
    cases += [("topic", small, 6), ("topic", large, 24)]
    for kind, bags, frames in cases:
        listing = tmp / "bags.json"
        listing.write_text(json.dumps([str(b) for b in bags]))
        out = tmp / f"memout_{kind}_{len(bags)}_{frames}"
        argv = [str(Path(__file__).parent), str(listing), str(out), kind]
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_CODE, *argv], capture_output=True, text=True, check=True
        )
        written, sequences, peak, hwm, reduce_s, commit_s = done.stdout.split()[-6:]
        print(
            f"{kind:<8}{len(bags):>6}{frames:>8}{written:>8}{sequences:>11}"
            f"{int(peak) / 1e6:16.1f}{int(hwm) / 1e3:10.1f}{float(reduce_s):10.3f}"
            f"{float(commit_s):10.3f}"
        )
        shutil.rmtree(out)


def seek_cost(path: Path, topic: str, repeats: int = 15) -> tuple[float, float]:
    """Median (wall, CPU) seconds to open a bag and read its first image message at or after
    a time inside it: the fixed cost a time window pays that a whole bag pays once."""
    from tl_perception.bag.reader import iter_messages, open_bag

    with open_bag(path) as reader:
        first, last = reader.start_time, reader.end_time
    walls, cpus = [], []
    for k in range(repeats):
        start = first + (last - first) * (k + 1) // (repeats + 1)
        wall, cpu = time.perf_counter(), time.process_time()
        with open_bag(path) as reader:
            next(iter_messages(reader, path, [topic], start))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def windows(args: argparse.Namespace, tmp: Path) -> None:
    """One large bag per storage format, whole and in windows: the fixed cost of a window
    (measured directly, and as the extra CPU of many windows over one) against its work."""
    print(
        f"time windows: one bag of {args.big_frames} frames 640x480 bgr8 per format, one "
        "worker; CPU seconds of the units (less sensitive than wall to a loaded machine)"
    )
    print(
        f"{'storage':<9}{'MB':>6}{'seek s':>8}{'plan CPU':>10}{'whole CPU':>10}"
        f"{'CPU/MiB':>9}{'windows':>9}{'CPU':>8}{'extra/window':>14}{'1% at MiB':>11}"
    )
    for storage in STORAGES:
        path = tmp / (f"big.{storage}.bag" if storage == "ros1" else f"big_{storage}")
        spec = DriveSpec(
            kind="signs", frames=args.big_frames, seed=1, size=(640, 480), storage=storage
        )
        write_synthetic_bag(path, spec, overwrite=True)
        files = [path] if path.is_file() else list(path.iterdir())
        mib = sum(f.stat().st_size for f in files) / (1 << 20)
        _seek_wall, seek_cpu = seek_cost(path, IMAGE_TOPIC)
        cpu = {}
        counts = {}
        for unit_mib in (1024, 8):
            out = tmp / "win_out"
            shutil.rmtree(out, ignore_errors=True)
            setup = Setup(workers=1, unit_bytes=unit_mib << 20)
            report = extract(options([path], out, setup))
            units = report.timings.units
            plan_cpu = sum(c for _s, c in units["plan"])
            parts = units.get("write", []) + units.get("finish", [])
            cpu[unit_mib] = sum(c for _s, c in parts)
            counts[unit_mib] = len(units.get("write", []))
        per_mib = cpu[1024] / mib
        extra = (cpu[8] - cpu[1024]) / (counts[8] - 1)
        one_percent = max(seek_cpu, extra) / (0.01 * per_mib)
        print(
            f"{storage:<9}{mib * 1.048576:6.0f}{seek_cpu:8.3f}{plan_cpu:10.2f}{cpu[1024]:10.2f}"
            f"{per_mib:9.3f}{counts[8]:9d}{cpu[8]:8.2f}{extra:14.4f}{one_percent:11.0f}"
        )
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=64)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="the driver's memory instead")
    parser.add_argument("--windows", action="store_true", help="the cost of a window instead")
    parser.add_argument("--big-frames", type=int, default=600)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; load: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        if args.memory:
            memory(args, Path(tmp))
        elif args.windows:
            windows(args, Path(tmp))
        else:
            speed(args, Path(tmp))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
