"""`tl_perception.engine` on this machine: the in-process engine and the local pool, with real
worker processes that really die (SIGKILL), and what a plain run never imports (Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tl_perception.engine import EngineSpec, Job, open_engine
from tl_perception.errors import BagError

from support import REPO, child_env


def square(shared: int, item: int) -> int:
    """A unit: bad input for 3, a bug for 13."""
    if item == 3:
        raise BagError(f"item {item} is corrupt\nsecond line")
    if item == 13:
        raise ValueError("a bug")
    return item * item + shared


def die_once(marker_dir: str, item: int) -> int:
    """A unit whose process is killed the first time it runs item 2, and always for item 5."""
    marker = Path(marker_dir) / f"{item}.ran"
    if item == 5 or (item == 2 and not marker.exists()):
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return item


def worker_pid(_shared: None, _item: int) -> int:
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_every_item_once_failures_kept_apart(workers):
    with open_engine(EngineSpec("local", workers)) as engine:
        assert engine.workers == workers
        job = Job(square, 1, failures=(BagError,))
        outcomes = list(engine.map_unordered(job, range(8)))
    assert sorted(o.item for o in outcomes) == list(range(8))
    failed = [o for o in outcomes if not o.ok]
    assert [(o.item, o.failure) for o in failed] == [(3, "item 3 is corrupt second line")]
    assert {o.item: o.value for o in outcomes if o.ok} == {i: i * i + 1 for i in range(8) if i != 3}


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_that_is_not_a_failure_stops_the_map(workers):
    with open_engine(EngineSpec("local", workers)) as engine:
        job = Job(square, 0, failures=(BagError,))
        with pytest.raises(ValueError, match="a bug"):
            list(engine.map_unordered(job, range(20)))


def test_a_unit_whose_process_dies_runs_again_and_one_that_always_dies_fails(tmp_path):
    with open_engine(EngineSpec("local", 2, max_retries=2)) as engine:
        outcomes = {o.item: o for o in engine.map_unordered(Job(die_once, str(tmp_path)), range(7))}
        assert {i: o.value for i, o in outcomes.items() if o.ok} == {
            i: i for i in range(7) if i != 5
        }
        assert outcomes[5].failure == (
            "worker process died 3 times while running it (killed by signal SIGKILL)"
        )
        # The pool is whole again: two live workers run the next job.
        pids = {o.value for o in engine.map_unordered(Job(worker_pid, None), range(6))}
        assert len(pids) <= 2


def spans(directory: str, item: int) -> int:
    """A unit that records when it ran (CLOCK_MONOTONIC is one clock for all processes)."""
    started = time.monotonic()
    time.sleep(0.01)
    Path(directory, f"{item}.span").write_text(f"{started} {time.monotonic()}")
    return item


@pytest.mark.serial  # the two workers' spans must overlap
def test_units_in_flight_are_bounded_by_the_workers(tmp_path):
    pulled = []
    consumed = 0
    held = 0

    def items() -> Iterator[int]:
        for i in range(30):
            pulled.append(i)
            yield i

    with open_engine(EngineSpec("local", 2)) as engine:
        for _outcome in engine.map_unordered(Job(spans, str(tmp_path)), items()):
            consumed += 1
            held = max(held, len(pulled) - consumed)
    assert consumed == 30
    assert held <= 4  # in flight, plus finished ones not yet handed to the caller
    events = sorted(
        (float(t), step)
        for span in tmp_path.glob("*.span")
        for t, step in zip(span.read_text().split(), (1, -1), strict=True)
    )
    running = [sum(step for _t, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2  # both workers were used, never more at once


def test_a_pool_that_is_closed_leaves_no_worker_behind():
    with open_engine(EngineSpec("local", 2)) as engine:
        pids = {o.value for o in engine.map_unordered(Job(worker_pid, None), range(4))}
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), pid


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        env=child_env(**env),
        timeout=120,
    )


def test_help_the_node_and_a_local_extraction_never_import_ray(tmp_path):
    bag = tmp_path / "b"
    code = f"""
import sys
from support.bagutil import frames, pattern
from tl_perception.bag.writer import write_bag
from tl_perception.cli import main
write_bag({str(bag)!r}, "mcap", frames("/cam", [pattern(i) for i in range(3)]))
for argv in (["--help"], ["extract", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
assert "ray" not in sys.modules, "--help imported ray"
import tl_perception.ros.classifier_node
assert "ray" not in sys.modules, "the node imported ray"
code = main(["extract", {str(bag)!r}, "--topic", "/cam", "--label", "a", "--out",
             {str(tmp_path / "out")!r}, "--workers", "2", "--no-progress"])
assert code == 0, code
assert "ray" not in sys.modules, "a local extraction imported ray"
print("no ray")
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "no ray" in result.stdout


def test_engine_ray_without_ray_installed_says_how_to_install_it(tmp_path):
    out = tmp_path / "out"
    code = f"""
import sys
sys.modules["ray"] = None  # what an environment without Ray looks like to `import ray`
from tl_perception.cli import main
sys.exit(main(["extract", {str(tmp_path)!r}, "--topic", "/cam", "--label", "a",
               "--out", {str(out)!r}, "--engine", "ray"]))
"""
    result = _python(code)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'tl_perception[ray]'" in lines[0], result.stderr
    assert not out.exists()


def test_an_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path, capsys):
    import socket

    from tl_perception.cli import main

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}", "nonsense"):
        argv = ["extract", str(tmp_path), "--topic", "/cam", "--label", "a", "--out", str(out)]
        assert main([*argv, "--engine", "ray", "--ray-address", address]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--ray-address" in err[0], err
        assert not out.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
