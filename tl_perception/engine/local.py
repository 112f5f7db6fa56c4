"""The local engines: units in this process (`workers` 1), or in a pool of worker processes.

The pool is ours rather than `concurrent.futures.ProcessPoolExecutor` because a dead worker must
cost only the unit it was running: the executor breaks the whole pool and cannot say which unit
killed it, so a bag that crashes its decoder would take its neighbours down with it. Here each
worker holds one unit at a time over its own pipe; when its process dies (its sentinel fires)
that unit alone is run again in a fresh process, up to `max_retries` times, then reported as
failed. Workers are started with `forkserver` (forking a process whose OpenCV/TensorFlow threads
hold locks can deadlock the child), ignore Ctrl-C (the driver stops them), and die with the
forkserver, which dies with the driver: a driver killed with SIGKILL leaves no worker writing
behind it.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from tl_perception.engine.base import (
    MAX_RETRIES,
    Job,
    Outcome,
    R,
    S,
    T,
    Tagged,
    call_unit,
    died,
    outcome_of,
)

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT_S = 5.0


class InProcessEngine:
    """Units one after another in this process: `--workers 1`, the simplest thing to debug."""

    workers = 1

    def map_unordered(self, job: Job[S, T, R], items: Iterable[T]) -> Iterator[Outcome[T, R]]:
        for item in items:
            yield outcome_of(item, call_unit(job, item))

    def close(self) -> None:
        """Nothing to stop."""


@dataclass
class _Ticket:
    item: Any
    attempts: int = 0  # runs started


@dataclass
class _Slot:
    process: BaseProcess
    conn: Connection
    jobs: set[int] = field(default_factory=set)  # jobs this process has been sent
    busy: _Ticket | None = None


class PoolEngine:
    """`workers` processes on this machine, one unit in flight per process."""

    def __init__(self, workers: int, max_retries: int = MAX_RETRIES) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._max_retries = max_retries
        self._ids = itertools.count()
        self._workers = max(1, workers)
        self._slots: list[_Slot] = []  # started as units need them, kept for the next job

    @property
    def workers(self) -> int:
        return self._workers

    def map_unordered(self, job: Job[S, T, R], items: Iterable[T]) -> Iterator[Outcome[T, R]]:
        job_id = next(self._ids)
        source = iter(items)
        retry: deque[_Ticket] = deque()
        finished = False
        try:
            self._fill(job_id, job, source, retry)
            while busy := [s for s in self._slots if s.busy is not None]:
                outcomes = self._collect(busy, retry)
                self._fill(job_id, job, source, retry)  # before the caller looks at outcomes
                yield from outcomes
            finished = True
        finally:
            if not finished:  # stopped early: Ctrl-C, a fatal unit error, the caller gave up
                self.close()

    def _fill(
        self, job_id: int, job: Job[Any, Any, Any], source: Iterator[Any], retry: deque[_Ticket]
    ) -> None:
        """Give every idle worker a unit (units to run again first, then new ones), starting
        workers up to `workers` while there are units for them."""
        index = 0
        while index < self._workers:
            if index < len(self._slots) and self._slots[index].busy is not None:
                index += 1
                continue
            ticket = retry.popleft() if retry else None
            if ticket is None:
                item = next(source, _END)
                if item is _END:
                    return
                ticket = _Ticket(item)
            if index == len(self._slots):
                self._slots.append(self._spawn())
            self._send(index, job_id, job, ticket)
            index += 1

    def _send(self, index: int, job_id: int, job: Job[Any, Any, Any], ticket: _Ticket) -> None:
        slot = self._slots[index]
        try:
            if job_id not in slot.jobs:
                slot.conn.send(("job", job_id, job))
                slot.jobs.add(job_id)
            slot.conn.send(("run", job_id, ticket.item))
        except OSError:  # it died while idle: a fresh process takes the unit
            self._slots[index] = slot = self._spawn()
            slot.conn.send(("job", job_id, job))
            slot.jobs.add(job_id)
            slot.conn.send(("run", job_id, ticket.item))
        ticket.attempts += 1
        slot.busy = ticket

    def _collect(self, busy: list[_Slot], retry: deque[_Ticket]) -> list[Outcome[Any, Any]]:
        """Wait for at least one busy worker to answer or die; the outcomes that came back."""
        ready = set(wait([s.conn for s in busy] + [s.process.sentinel for s in busy]))
        outcomes: list[Outcome[Any, Any]] = []
        for slot in busy:
            ticket = slot.busy
            assert ticket is not None
            if slot.conn in ready:
                try:
                    tagged: Tagged = slot.conn.recv()
                except (EOFError, OSError):
                    pass  # it died while answering: handled as a death below
                else:
                    slot.busy = None
                    outcomes.append(outcome_of(ticket.item, tagged))
                    continue
            elif slot.process.sentinel not in ready:
                continue
            lost = self._replace(slot)
            if ticket.attempts <= self._max_retries:
                retry.append(ticket)
            else:
                reason = died("worker process", ticket.attempts, lost)
                outcomes.append(Outcome(ticket.item, failure=reason))
        return outcomes

    def _replace(self, slot: _Slot) -> str:
        """Start a fresh process in a dead worker's place; how the dead one ended."""
        slot.process.join(_STOP_TIMEOUT_S)
        code = slot.process.exitcode
        with contextlib.suppress(OSError):
            slot.conn.close()
        self._slots[self._slots.index(slot)] = self._spawn()
        if code is not None and code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _spawn(self) -> _Slot:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(theirs,), daemon=True)
        process.start()
        theirs.close()
        return _Slot(process, ours)

    def close(self) -> None:
        """Stop idle workers politely, kill busy ones (their units are abandoned)."""
        for slot in self._slots:
            with contextlib.suppress(OSError):
                if slot.busy is None:
                    slot.conn.send(("stop",))
                else:
                    slot.process.terminate()
        for slot in self._slots:
            slot.process.join(_STOP_TIMEOUT_S)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(_STOP_TIMEOUT_S)
            with contextlib.suppress(OSError):
                slot.conn.close()
            slot.busy = None
        self._slots = [s for s in self._slots if s.process.is_alive()]


_END = object()


def _worker_main(conn: Connection) -> None:
    """A pool worker: receive jobs and units, send back tagged outcomes, until told to stop or
    the driver's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _die_with_parent()
    jobs: dict[int, Job[Any, Any, Any]] = {}
    started: set[Any] = set()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        if message[0] == "job":
            _, job_id, job = message
            jobs[job_id] = job
            if job.init is not None and job.init not in started:
                job.init()
                started.add(job.init)
            continue
        _, job_id, item = message
        conn.send(call_unit(jobs[job_id], item))


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (the forkserver) exits."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent is already gone
            os._exit(1)
