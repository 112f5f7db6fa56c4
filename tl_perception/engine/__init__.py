"""Running independent units of work on this machine or on a Ray cluster, with one API.

The units themselves live where their work belongs (`bag/` for extraction, `train/` for training
runs); an engine only runs them: `open_engine(spec)` gives an `Engine` whose `map_unordered(job,
items)` yields one `Outcome` per item in completion order, with at most `workers` units in
flight, per-unit `Resources`, retries of units whose worker died, and failures (bad input) kept
apart from fatal errors (see `base.py`). Because results come back in any order, callers reduce
them deterministically; that is what makes a cluster's output equal a single machine's.

Importing this package imports neither Ray nor any worker-side library: `rayengine` (and Ray)
are imported only when `kind == "ray"` is asked for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tl_perception.engine.base import (
    ENGINES,
    MAX_RETRIES,
    Engine,
    EngineSpec,
    Job,
    Outcome,
    Resources,
)
from tl_perception.errors import TlPerceptionError

__all__ = [
    "ENGINES",
    "MAX_RETRIES",
    "Engine",
    "EngineSpec",
    "Job",
    "Outcome",
    "Resources",
    "open_engine",
]


@contextlib.contextmanager
def open_engine(spec: EngineSpec) -> Iterator[Engine]:
    """The engine `spec` names, closed (workers stopped, a Ray it started shut down) on exit.

    Raises:
        TlPerceptionError: an unknown kind or worker count; for Ray: not installed, or a cluster
            that does not answer (one line, before anything is written).
    """
    if spec.workers is not None and spec.workers < 1:
        raise TlPerceptionError(f"--workers {spec.workers}: need at least 1")
    engine: Engine
    if spec.kind == "local":
        from tl_perception.engine.local import InProcessEngine, PoolEngine

        workers = spec.workers or os.cpu_count() or 1
        engine = InProcessEngine() if workers == 1 else PoolEngine(workers, spec.max_retries)
    elif spec.kind == "ray":
        from tl_perception.engine.rayengine import RayEngine

        engine = RayEngine(spec)
    else:
        raise TlPerceptionError(f"unknown engine {spec.kind!r}; use one of {', '.join(ENGINES)}")
    try:
        yield engine
    finally:
        engine.close()
