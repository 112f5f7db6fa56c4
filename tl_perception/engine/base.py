"""What every engine shares: the job a caller hands over, the outcome of each unit, and the one
function that runs a unit wherever it runs (this process, a pool worker or a Ray worker).

A *unit* is an independent piece of work (a bag of a fleet, a time window of a large bag, a
training run). The caller gives a `Job` (the unit function, what every unit shares, the
resources one unit needs) and an iterable of items; the engine yields one `Outcome` per item in
**completion order**, so the caller must reduce them deterministically (sort by a key of the
item), which is what makes the result independent of the engine, its worker count and timing.

Three ways a unit can end, and what the engine does with each:
- it returns: `Outcome.value`;
- it raises one of `Job.failures` (bad input: a corrupt bag): `Outcome.failure` holds the one-line
  reason and the other units go on; the unit is not retried (it would fail again);
- its process (or node) dies: the unit is run again elsewhere, up to `EngineSpec.max_retries`
  times, then it is a failure too ("worker process died ..."). Any other exception is a bug or
  a fatal condition (a full disk): it stops the whole map and is re-raised in the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tl_perception.errors import one_line

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

ENGINES: tuple[str, ...] = ("local", "ray")
#: How often a unit whose process or node died is run again before it counts as failed.
MAX_RETRIES = 3


@dataclass(frozen=True)
class Resources:
    """What one unit needs of a worker; Ray schedules by it, the local pool runs one unit per
    process whatever it asks (a unit that needs a GPU locally must find it itself)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class EngineSpec:
    """Where units run.

    `kind` "local": `workers` processes on this machine (1: in this process, no pool);
    "ray": `workers` tasks at once on a Ray cluster at `address` (None: `RAY_ADDRESS`, else a
    local Ray started with this machine's CPUs and shut down at the end). `workers` None: every
    CPU (the machine's, or the Ray cluster's).
    """

    kind: str = "local"
    workers: int | None = 1
    address: str | None = None
    max_retries: int = MAX_RETRIES


@dataclass(frozen=True)
class Job(Generic[S, T, R]):
    """A unit function and what all its units share (sent once per worker, not per unit).

    `fn(shared, item)` must be a module-level function (it is pickled by reference). `init`
    runs once in each worker process before its first unit (e.g. one OpenCV thread per process).
    """

    fn: Callable[[S, T], R]
    shared: S
    resources: Resources = Resources()
    failures: tuple[type[BaseException], ...] = ()
    init: Callable[[], None] | None = None


@dataclass(frozen=True)
class Outcome(Generic[T, R]):
    """How one unit ended: `value` when it returned, else `failure` (one line); its last run's
    wall and CPU seconds in the worker (0 when its worker died: nothing came back)."""

    item: T
    value: R | None = None
    failure: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


class Engine(Protocol):
    """Runs jobs; `workers` is how many units run at once (the bound on units in flight)."""

    @property
    def workers(self) -> int: ...

    def map_unordered(self, job: Job[S, T, R], items: Iterable[T]) -> Iterator[Outcome[T, R]]:
        """One outcome per item, in completion order. At most `workers` units are in flight,
        and `items` is pulled only as units finish, so a long iterable costs no memory."""
        ...

    def close(self) -> None:
        """Stop every worker this engine started (idempotent)."""
        ...


#: What a unit run sends back: ("ok", value), ("failed", one-line reason) or ("error",
#: exception), then its wall and CPU seconds.
Tagged = tuple[str, Any, float, float]


def call_unit(job: Job[Any, Any, Any], item: Any) -> Tagged:
    """Run one unit and say how it ended, as plain data every engine can carry back."""
    started, cpu = time.perf_counter(), time.process_time()
    kind: str
    payload: Any
    try:
        kind, payload = "ok", job.fn(job.shared, item)
    except job.failures as err:
        kind, payload = "failed", one_line(err)
    except Exception as err:  # re-raised in the caller: a bug or a fatal condition
        kind, payload = "error", err
    return (kind, payload, time.perf_counter() - started, time.process_time() - cpu)


def outcome_of(item: T, tagged: Tagged) -> Outcome[T, Any]:
    """The caller's side of `call_unit`; an "error" is re-raised here."""
    kind, payload, seconds, cpu = tagged
    if kind == "error":
        raise payload
    if kind == "failed":
        return Outcome(item, failure=str(payload), seconds=seconds, cpu_seconds=cpu)
    return Outcome(item, value=payload, seconds=seconds, cpu_seconds=cpu)


def died(what: str, attempts: int, detail: str) -> str:
    """The failure of a unit whose worker kept dying."""
    times = "once" if attempts == 1 else f"{attempts} times"
    return f"{what} died {times} while running it ({detail})"
