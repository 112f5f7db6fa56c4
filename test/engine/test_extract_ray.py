"""`extract --engine ray` on a real Ray: one `ray.init(num_cpus=2)` for the session, and a
two-node `ray.cluster_utils.Cluster` whose second node is removed mid-run. The dataset tree must
equal the one `--workers 1` writes in this process, byte for byte, whatever dies on the way."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tl_perception.bag.workdir import WORK_DIR
from tl_perception.cli import main
from tl_perception.dataset import SUMMARY_FILE

from support.fleetutil import extract_argv, make_fleet, reference_tree, tree_digest
from support.rayutil import assert_no_daemons_left, local_ray_session, ray_units

ray = pytest.importorskip("ray")
#: One worker runs every module that starts a Ray (test/conftest.py).
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[set[int]]:
    """One local Ray of 2 CPUs for the session's Ray tests (see rayutil)."""
    yield from local_ray_session()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_fleet(tmp_path_factory.mktemp("fleet"), 6)


@pytest.fixture(scope="module")
def reference(fleet: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return reference_tree(fleet, tmp_path_factory.mktemp("reference") / "out")


def test_ray_at_any_worker_count_and_order_writes_the_local_tree(
    ray_local, fleet, reference, tmp_path
):
    for workers, bags in (("1", fleet), ("2", list(reversed(fleet)))):
        out = tmp_path / f"ray{workers}"
        assert main([*extract_argv(bags, out), "--engine", "ray", "--workers", workers]) == 0
        assert tree_digest(out) == reference, workers


def test_a_corrupt_bag_on_ray_gives_the_local_report(ray_local, fleet, tmp_path, capsys):
    broken = tmp_path / "broken.bag"
    data = next(p for p in fleet if p.suffix == ".bag").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        code = main([*extract_argv([*fleet, broken], out), "--engine", engine, "--workers", "2"])
        captured = capsys.readouterr()
        report = [line for line in captured.out.splitlines() if " in " not in line]
        results[engine] = (code, report, captured.err, tree_digest(out))
    assert results["ray"] == results["local"]
    code, report, err, _tree = results["ray"]
    assert code == 1 and "1 of 7 bags failed" in err
    assert any(line.startswith(f"failed: {broken}: ") for line in report)


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)))
    thread.start()
    return thread, codes


def _wait_for(condition, thread: threading.Thread, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert thread.is_alive() and time.monotonic() < deadline, "the run ended first"
        time.sleep(0.002)


def test_a_ray_worker_killed_mid_task_is_retried(ray_local, fleet, reference, tmp_path):
    out = tmp_path / "out"
    thread, codes = _run_in_thread([*extract_argv(fleet, out), "--engine", "ray", "--workers", "2"])
    rows = out / WORK_DIR / "rows"
    _wait_for(lambda: bool(list(rows.glob("*.done.json"))) and bool(ray_units()), thread)
    os.kill(ray_units()[0], signal.SIGKILL)
    thread.join(120)
    assert codes == [0]
    assert tree_digest(out) == reference


@pytest.mark.slow
def test_a_node_that_dies_mid_run_costs_nothing(ray_local, fleet, reference, tmp_path):
    """The last Ray test: the session's Ray makes way for a two-node cluster."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    fast_failure = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": fast_failure, **_node_quiet()},
    )
    try:
        doomed = cluster.add_node(num_cpus=1, **_node_quiet())
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        out = tmp_path / "out"
        argv = [*extract_argv(fleet, out), "--engine", "ray", "--workers", "2"]
        argv += ["--ray-address", cluster.address]
        raylet = doomed.all_processes["raylet"][0].process.pid
        thread, codes = _run_in_thread(argv)
        rows = out / WORK_DIR / "rows"
        _wait_for(lambda: bool(list(rows.glob("*.done.json")) and ray_units(raylet)), thread)
        cluster.remove_node(doomed, allow_graceful=False)  # while it runs a unit
        thread.join(180)
        assert codes == [0]
        assert tree_digest(out) == reference
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
        assert "failed" not in summary["last_run"]
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert_no_daemons_left(ray_local)


def _node_quiet() -> dict[str, object]:
    return {"include_dashboard": False, "object_store_memory": 80 << 20}
