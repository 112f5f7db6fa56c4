"""The Ray engine: each unit is a Ray task, with a bounded window of tasks in flight.

Ray is imported here and only here, when `--engine ray` is asked for. The same `call_unit` runs
inside the task as in a local worker, so a unit's failures and errors come back as values, not
as Ray exceptions; what Ray itself reports is a task whose worker process or node died, which it
has already run again `max_retries` times (`retry_exceptions` stays off: a corrupt bag fails the
same way every time). Backpressure: at most `workers` tasks are submitted at once, the next one
as soon as `ray.wait` returns a finished one (Ray's "limit pending tasks" pattern), so a fleet of
a million bags never sits in the scheduler at once.

What every task shares (`Job.shared`) is put in the object store once per map; each worker
process fetches and unpickles it once, not once per task.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from tl_perception.engine.base import (
    EngineSpec,
    Job,
    Outcome,
    R,
    Resources,
    S,
    T,
    Tagged,
    call_unit,
    died,
    outcome_of,
)
from tl_perception.errors import TlPerceptionError, one_line

INSTALL_HINT = "pip install 'tl_perception[ray]' (or: pip install ray==2.60.0)"
#: The object store of a Ray this engine starts: units exchange small results, never images.
LOCAL_OBJECT_STORE_BYTES = 256 << 20
PROBE_TIMEOUT_S = 5.0


class EngineError(TlPerceptionError):
    """The engine cannot start: Ray missing, a cluster address that does not answer."""


def import_ray() -> Any:
    """The `ray` module, or one line saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise EngineError(
            f"--engine ray needs Ray, which is not installed ({err}): {INSTALL_HINT}"
        ) from None


class RayEngine:
    """Units as Ray tasks on the cluster at `spec.address` (or `RAY_ADDRESS`), or on a local Ray
    started for this run; a Ray this process already initialised is used as it is."""

    def __init__(self, spec: EngineSpec) -> None:
        self._ray = ray = import_ray()
        self._started = False
        self._max_retries = spec.max_retries
        address = spec.address or os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            check_reachable(address)  # also when this process is connected already
        if not ray.is_initialized():
            self._connect(address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self._workers = max(1, spec.workers or cpus)
        self._remote = ray.remote(_ray_unit)

    def _connect(self, address: str | None) -> None:
        ray = self._ray
        quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address is None:
                ray.init(
                    num_cpus=os.cpu_count() or 1,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    include_dashboard=False,
                    **quiet,
                )
                self._started = True
            else:
                ray.init(address=address, **quiet)
        except EngineError:
            raise
        except Exception as err:  # Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise EngineError(f"cannot start {where}: {one_line(err)}") from err

    @property
    def workers(self) -> int:
        return self._workers

    def map_unordered(self, job: Job[S, T, R], items: Iterable[T]) -> Iterator[Outcome[T, R]]:
        ray = self._ray
        check_feasible(job.resources, ray.nodes())
        boxed = [ray.put(job)]  # in a list, so Ray passes the reference, not the value
        task = self._remote.options(
            num_cpus=job.resources.num_cpus,
            num_gpus=job.resources.num_gpus,
            max_retries=self._max_retries,
            retry_exceptions=False,
        )
        source = iter(items)
        in_flight: dict[Any, T] = {}
        finished = False
        try:
            while True:
                while len(in_flight) < self._workers:
                    item = next(source, _END)
                    if item is _END:
                        break
                    in_flight[task.remote(boxed, item)] = item
                if not in_flight:
                    finished = True
                    return
                for ref in self._ready(list(in_flight)):
                    yield self._outcome(ref, in_flight.pop(ref))
        finally:
            if not finished:  # Ctrl-C or a fatal error: stop what still runs
                for ref in in_flight:
                    ray.cancel(ref, force=True)

    def _ready(self, refs: list[Any]) -> list[Any]:
        """At least one finished task, and every other one finished by then: one pass over a
        large window per batch of completions, not per completion."""
        ready, waiting = self._ray.wait(refs, num_returns=1)
        if waiting:
            more, _ = self._ray.wait(waiting, num_returns=len(waiting), timeout=0)
            ready += more
        return list(ready)

    def _outcome(self, ref: Any, item: T) -> Outcome[T, Any]:
        exceptions = self._ray.exceptions
        try:
            tagged: Tagged = self._ray.get(ref)
        except exceptions.RayTaskError as err:  # raised outside call_unit (a BaseException)
            raise err.as_instanceof_cause() from None
        except exceptions.RayError as err:  # worker or node died on every attempt
            attempts = self._max_retries + 1
            return Outcome(item, failure=died("Ray worker", attempts, type(err).__name__))
        return outcome_of(item, tagged)

    def close(self) -> None:
        """Shut down the Ray this engine started (a cluster it joined keeps running)."""
        if self._started:
            self._ray.shutdown()
            self._started = False


_END: Any = object()
_JOBS: dict[str, Job[Any, Any, Any]] = {}  # per worker process: job object id -> job
_STARTED: set[Any] = set()


def _ray_unit(boxed: list[Any], item: Any) -> Tagged:
    """The Ray task: fetch the job once per worker process, run one unit."""
    import ray

    ref = boxed[0]
    key = ref.hex()
    job = _JOBS.get(key)
    if job is None:
        _JOBS.clear()  # one job at a time: the previous map's job is done
        job = _JOBS[key] = ray.get(ref)
    if job.init is not None and job.init not in _STARTED:
        job.init()
        _STARTED.add(job.init)
    return call_unit(job, item)


def check_feasible(resources: Resources, nodes: list[dict[str, Any]]) -> None:
    """Refuse, in one line and before any task is submitted, units that no alive node can
    take: Ray would keep them pending for ever, warning only in its own logs."""
    alive: list[dict[str, float]] = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(
        have.get("CPU", 0) >= resources.num_cpus and have.get("GPU", 0) >= resources.num_gpus
        for have in alive
    ):
        return
    empty: dict[str, float] = {}
    largest = max(alive, key=lambda have: (have.get("CPU", 0), have.get("GPU", 0)), default=empty)
    raise EngineError(
        f"each unit asks for {resources.num_cpus:g} CPUs and {resources.num_gpus:g} GPUs, more "
        f"than any node of the Ray cluster has (the largest: {largest.get('CPU', 0):g} CPUs, "
        f"{largest.get('GPU', 0):g} GPUs)"
    )


def check_reachable(address: str) -> None:
    """Fail fast, in one line, on an address nothing listens at: `ray.init` would wait for
    minutes. `auto` (a cluster started on this machine) is left to Ray."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise EngineError(f"--ray-address {address!r}: {err}") from None
    if not host or port is None:
        raise EngineError(f"--ray-address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise EngineError(
            f"--ray-address {address!r}: no Ray cluster answers there ({one_line(err)}); "
            "start one with `ray start --head` or give its address"
        ) from None
