"""Hot reload's rules without rclpy: `ros/reload.py` with loaders that block or fail on command.

The loader is the one thing `Reloader` is given (the node passes `load_classifier`); here it is
a function of the test's own that waits until the test releases each load, so every race the
rules speak of (a request while a load runs, a failure after a newer request, a stop while
loading) is made to happen, not hoped for. The DDS tests in test_node.py prove the same rules
end to end with real bundles.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from tl_perception.errors import BundleError
from tl_perception.ros.reload import RELOAD_IDLE, Reloader, Serving

from support.node_harness import wait_until
from support.pipeline_harness import Logs


@dataclass
class Model:
    path: str


@dataclass
class Loads:
    """A loader whose loads each wait for `release(path)`; paths in `broken` then fail."""

    broken: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    _gates: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _gate(self, path: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(path, threading.Event())

    def __call__(self, path: str) -> Model:
        with self._lock:
            self.started.append(path)
        assert self._gate(path).wait(10.0), f"the test never released {path}"
        if path in self.broken:
            raise BundleError(f"{path}: not a model bundle\n(second line)")
        return Model(path)

    def release(self, path: str) -> None:
        self._gate(path).set()

    def wait_started(self, path: str) -> None:
        wait_until(lambda: path in self.started, 5.0)


class Swaps:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, new: Serving, old: Serving) -> None:
        self.seen.append((new.path, old.path))


@pytest.fixture
def reloading() -> Any:
    loads, swaps, logs = Loads(), Swaps(), Logs()
    reloader = Reloader(Serving(Model("/old"), "/old"), loads, logs, swaps)
    yield reloader, loads, swaps, logs
    for path in list(loads._gates) + loads.started:
        loads.release(path)
    reloader.stop()


def test_a_request_loads_beside_the_serving_model_then_swaps(reloading: Any) -> None:
    reloader, loads, swaps, _logs = reloading
    reloader.request("/new")
    assert reloader.status() == "loading /new"
    loads.wait_started("/new")
    assert reloader.current().path == "/old"  # the old model serves while the new one loads
    loads.release("/new")
    wait_until(lambda: reloader.current().path == "/new", 5.0)
    assert reloader.current().classifier == Model("/new")
    assert reloader.status() == RELOAD_IDLE
    wait_until(lambda: swaps.seen == [("/new", "/old")], 5.0)


def test_the_last_request_wins_and_a_replaced_one_is_never_loaded(reloading: Any) -> None:
    reloader, loads, swaps, logs = reloading
    reloader.request("/a")
    loads.wait_started("/a")  # the thread is busy with /a
    reloader.request("/b")  # waits in the mailbox ...
    reloader.request("/c")  # ... and is replaced there
    assert reloader.status() == "loading /c"
    loads.release("/a")  # /a finishes after newer requests came: thrown away
    loads.wait_started("/c")
    assert reloader.current().path == "/old"
    assert logs.having("loaded '/a', discarded", level="info")
    loads.release("/c")
    wait_until(lambda: reloader.current().path == "/c", 5.0)
    assert loads.started == ["/a", "/c"]  # /b was never loaded
    assert swaps.seen == [("/c", "/old")] and reloader.status() == RELOAD_IDLE


def test_a_stale_failure_changes_nothing_and_the_newest_failure_is_the_status(
    reloading: Any,
) -> None:
    reloader, loads, swaps, logs = reloading
    loads.broken |= {"/broken", "/also-broken"}
    reloader.request("/broken")
    loads.wait_started("/broken")
    reloader.request("/good")
    loads.release("/broken")  # fails after /good was requested: stale
    loads.wait_started("/good")
    assert reloader.status() == "loading /good"
    stale = logs.having("hot reload of '/broken' failed", level="info")
    assert stale and "a newer request is pending" in stale[0] and not logs.having("", "error")
    loads.release("/good")
    wait_until(lambda: reloader.current().path == "/good", 5.0)

    reloader.request("/also-broken")  # the newest request fails: the status says so
    loads.release("/also-broken")
    wait_until(lambda: reloader.status().startswith("failed"), 5.0)
    reason = "/also-broken: not a model bundle (second line)"  # one line
    assert reloader.status() == f"failed /also-broken: {reason}"
    assert reloader.current().path == "/good"  # still serving
    errors = logs.having("hot reload of '/also-broken' failed", level="error")
    assert len(errors) == 1 and "still serving '/good'" in errors[0]
    reloader.request("/good")  # asks for what serves: nothing to load, nothing failed
    assert reloader.status() == RELOAD_IDLE
    assert swaps.seen == [("/good", "/old")]


def test_stop_makes_a_load_in_progress_stale_and_ends_the_thread(reloading: Any) -> None:
    reloader, loads, swaps, logs = reloading
    reloader.request("/slow")
    loads.wait_started("/slow")
    stopper = threading.Thread(target=reloader.stop)
    stopper.start()  # waits for the load in progress
    wait_until(lambda: reloader.status() == RELOAD_IDLE, 5.0)  # nothing is pending any more
    assert stopper.is_alive()
    loads.release("/slow")
    stopper.join(10.0)
    assert not stopper.is_alive()
    assert reloader.current().path == "/old" and swaps.seen == []
    assert logs.having("loaded '/slow', discarded", level="info")
    assert not [t for t in threading.enumerate() if t.name == "reload" and t.is_alive()]


def test_the_thread_outlives_an_on_swap_that_raises() -> None:
    loads, logs = Loads(), Logs()

    def explode(new: Serving, old: Serving) -> None:
        raise RuntimeError("the on-swap callback broke")

    reloader = Reloader(Serving(Model("/old"), "/old"), loads, logs, explode)
    try:
        reloader.request("/x")
        loads.release("/x")
        wait_until(lambda: logs.having("hot reload failed unexpectedly", "error"), 5.0)
        reloader.request("/y")  # the thread still takes requests
        loads.release("/y")
        wait_until(lambda: reloader.current().path == "/y", 5.0)
    finally:
        loads.release("/y")
        reloader.stop()
