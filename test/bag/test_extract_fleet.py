"""`extract` of a fleet on the local engines: the same dataset tree, byte for byte, whatever the
worker count, the order of the bags or how bags are cut into windows; a corrupt bag recorded and
the rest extracted; a worker process killed mid-run; a driver killed with SIGKILL and resumed;
Ctrl-C. Real bags (rosbags writers), real worker processes, the real CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.bag.progress import Progress
from tl_perception.bag.workdir import WORK_DIR
from tl_perception.cli import main
from tl_perception.dataset import SUMMARY_FILE, read_dataset, read_manifest
from tl_perception.errors import DatasetError

from support import REPO
from support.fleetutil import drive, extract_argv, make_fleet, reference_tree, tree_digest


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_fleet(tmp_path_factory.mktemp("fleet"), 6)


@pytest.fixture(scope="module")
def reference(fleet: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return reference_tree(fleet, tmp_path_factory.mktemp("reference") / "out")


def test_the_reference_is_a_complete_dataset(reference, fleet):
    assert not any(path.startswith(WORK_DIR) for path in reference)
    assert {"manifest.csv", "dataset.json"} <= set(reference)
    splits = {path.split("/")[0] for path in reference if "/" in path}
    assert splits == {"train", "val", "test"}
    assert sum(path.endswith(".png") for path in reference) > 6 * 10


def test_workers_bag_order_and_windows_do_not_change_one_byte(fleet, reference, tmp_path):
    reversed_order = tmp_path / "reversed"
    assert main([*extract_argv(list(reversed(fleet)), reversed_order), "--workers", "3"]) == 0
    assert tree_digest(reversed_order) == reference
    windows = tmp_path / "windows"
    options = ExtractOptions(
        tuple(fleet),
        "/cam",
        windows,
        LabelSpec("topic", topic="/label"),
        split=(0.6, 0.2, 0.2),
        dedup=4,
        workers=2,
        unit_bytes=8_000,  # about 3 frames: every bag is cut into several time windows
    )
    extract(options)
    assert tree_digest(windows) == reference


def test_windows_of_crops_with_negatives_equal_whole_bags(tmp_path):
    from tl_perception.bag.boxes import BoxSpec
    from tl_perception.bag.roiplan import RoiOptions
    from tl_perception.crop import CropPolicy
    from tl_perception.synth.writer import IMAGE_TOPIC, DriveSpec, write_synthetic_bag

    bags = []
    for seed in (1, 2):
        bags.append(tmp_path / f"road{seed}")
        write_synthetic_bag(bags[-1], DriveSpec(kind="road", frames=30, seed=seed, size=(128, 96)))
    rois = RoiOptions(BoxSpec("topic", topic="/detections"), CropPolicy(), negatives=2)
    digests = []
    for name, workers, unit_bytes in (("whole", 1, 1 << 30), ("windows", 2, 40_000)):
        out = tmp_path / name
        options = ExtractOptions(
            tuple(bags),
            IMAGE_TOPIC,
            out,
            LabelSpec("boxes"),
            rois=rois,
            dedup=2,
            split=(0.6, 0.2, 0.2),
            workers=workers,
            unit_bytes=unit_bytes,
        )
        report = extract(options)
        assert report.written > 50 and report.kept[("background", "train")] > 0
        digests.append(tree_digest(out))
    assert digests[0] == digests[1]


def _truncated(bag: Path, target: Path) -> Path:
    """A copy of a bag whose storage file is cut in half."""
    shutil.copytree(bag, target)
    storage = next(p for p in target.iterdir() if p.suffix in (".mcap", ".db3"))
    data = storage.read_bytes()
    storage.write_bytes(data[: len(data) // 2])
    return target


def test_a_corrupt_bag_is_recorded_failed_and_the_rest_is_extracted(
    fleet, reference, tmp_path, capsys
):
    broken = _truncated(fleet[0], tmp_path / "broken")
    out = tmp_path / "out"
    argv = [*extract_argv([*fleet, broken], out), "--workers", "2"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "1 of 7 bags failed" in err[0], err
    (failed,) = [line for line in captured.out.splitlines() if line.startswith("failed: ")]
    assert failed.startswith(f"failed: {broken}: cannot read bag {str(broken)!r}")
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert summary["last_run"]["failed"] == [
        {"path": str(broken), "reason": failed.split(": ", 2)[2]}
    ]
    digest = tree_digest(out)
    assert digest.pop(SUMMARY_FILE) != reference[SUMMARY_FILE]
    assert digest == {k: v for k, v in reference.items() if k != SUMMARY_FILE}
    # Mended, the same command retries it (no --append needed) and adds it.
    shutil.rmtree(broken)
    drive(broken, "mcap", seed=50)
    assert main(argv) == 0
    rows = read_manifest(out)
    assert len({r["bag"] for r in rows}) == 7
    assert "failed" not in json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))["last_run"]


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            found[int(stat.parent.name)] = (parent, (stat.parent / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return found


def _pool_workers() -> list[int]:
    """Pids of this process's pool workers: the children of its multiprocessing forkserver."""
    table = _processes()
    servers = {
        p for p, (parent, cmd) in table.items() if parent == os.getpid() and b"forkserver" in cmd
    }
    return sorted(p for p, (parent, _cmd) in table.items() if parent in servers)


def _children_of(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    table = _processes()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (pp, _cmd) in table.items() if pp == parent]
        found += children
        frontier += children
    return found


def test_a_pool_worker_killed_mid_run_is_replaced_and_nothing_changes(fleet, reference, tmp_path):
    out = tmp_path / "out"
    done = threading.Event()
    codes: list[int] = []

    def run() -> None:
        codes.append(main([*extract_argv(fleet, out), "--workers", "2"]))
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    killed = 0
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        rows = list((out / WORK_DIR / "rows").glob("*.done.json"))
        workers = _pool_workers()
        if rows and workers:  # the write wave runs: every worker holds a unit
            os.kill(workers[0], signal.SIGKILL)
            killed += 1
            break
        time.sleep(0.005)
    thread.join(120)
    assert killed == 1 and codes == [0]
    assert tree_digest(out) == reference


def _cli(argv: list[str]) -> subprocess.Popen[str]:
    code = "import sys; from tl_perception.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(argv: list[str], markers: str, count: int) -> None:
    """Start the CLI and SIGKILL it (and wait for its workers to go) as soon as `count` unit
    markers `work/<markers>/*.done.json` exist."""
    out = Path(argv[argv.index("--out") + 1])
    driver = _cli(argv)
    deadline = time.monotonic() + 60
    while len(list((out / WORK_DIR / markers).glob("*.done.json"))) < count:
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    family = _children_of(driver.pid)
    driver.kill()
    driver.wait(30)
    _wait_gone(family)


def test_a_driver_killed_at_random_points_is_resumed_to_the_same_tree(fleet, reference, tmp_path):
    """SIGKILL during the plan wave, then twice during the write wave, each after a random
    number of finished units; the fourth run finishes with the very tree of one clean run and
    does not redo finished bags."""
    rng = random.Random(15)
    out = tmp_path / "out"
    argv = [*extract_argv(fleet, out), "--workers", "2"]
    _kill_when(argv, "plans", rng.randint(1, len(fleet) - 1))
    first = rng.randint(1, len(fleet) - 3)
    _kill_when(argv, "rows", first)
    _kill_when(argv, "rows", first + rng.randint(1, 2))
    finished = {p.name for p in (out / WORK_DIR / "rows").glob("*.done.json")}
    assert first < len(finished) < len(fleet)
    times = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    resumed = _cli(argv)
    _stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert tree_digest(out) == reference
    untouched = [p for p, t in times.items() if p.exists() and p.stat().st_mtime_ns == t]
    assert len(untouched) >= len(finished), "the resumed run wrote finished bags again"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Worker processes die with their forkserver, which dies with the driver."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes left behind the killed driver: {alive}")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.serial  # SIGINT must land inside the write wave
def test_ctrl_c_stops_the_workers_and_leaves_a_valid_directory(fleet, reference, tmp_path):
    out = tmp_path / "out"
    argv = [*extract_argv(fleet, out), "--workers", "2"]
    driver = _cli(argv)
    deadline = time.monotonic() + 60
    while not list((out / WORK_DIR / "rows").glob("*.done.json")):  # the write wave runs
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.002)
    family = _children_of(driver.pid)
    driver.send_signal(signal.SIGINT)
    _stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .endswith("run the same command to resume (finished bags are kept)")
    )
    _wait_gone(family)
    summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    assert summary["status"] == "incomplete"  # a new dataset: readers are told to re-run
    with pytest.raises(DatasetError, match="did not finish"):
        read_dataset(out)
    assert not [p for p in out.rglob("*.tmp") if WORK_DIR not in p.parts]
    assert main(argv) == 0
    assert tree_digest(out) == reference


def test_a_rerun_with_other_options_after_a_kill_redoes_the_work(fleet, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    _kill_when([*extract_argv(fleet, out), "--workers", "2"], "rows", 2)
    other = ["--seed", "7", "--workers", "2"]
    assert main([*extract_argv(fleet, out), *other]) == 0
    assert main([*extract_argv(fleet, fresh), *other]) == 0
    assert tree_digest(out) == tree_digest(fresh)


def test_progress_says_units_frames_rate_failures_and_eta():
    bar = Progress(10, enabled=False, label="write", frames_total=1000)
    bar.resumed(2, 200)
    bar.started -= 10.0  # as if 10 s had passed
    bar.update(units=3, frames=300, failed=1)
    line = bar.line(time.monotonic())
    assert line.startswith("write [")
    assert "5/10 units" in line and "500 frames" in line and "1 failed" in line
    assert "30.0 frames/s" in line and "ETA 0:00:17" in line


def test_a_hand_shuffled_manifest_is_sorted_and_appended_to_the_same(fleet, tmp_path):
    """The driver streams the old manifest; one not sorted by path (edited by hand) is sorted
    through spill files first, with the same result."""
    first, later = fleet[:4], fleet[4:]
    trees = []
    for name, shuffle in (("sorted", False), ("shuffled", True)):
        out = tmp_path / name
        assert main([*extract_argv(first, out), "--workers", "1"]) == 0
        if shuffle:
            header, *lines = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()
            random.Random(3).shuffle(lines)
            (out / "manifest.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        assert main([*extract_argv(later, out), "--workers", "2", "--append"]) == 0
        trees.append(tree_digest(out))
    assert trees[0] == trees[1]
