"""Hot reload: the serving model, and one thread that loads the requested one beside it.

`Reloader` owns the classifier slot: what serves (`current`, one reference, so the worker sees
the old model or the new one, whole), the reload thread, the request mailbox and the reload
state. `request(path)` makes `path` the newest request and returns at once; the thread loads
requests one at a time. Each request carries a sequence number, and the rules are:

- the last request wins: a request replaced in the mailbox before the thread took it is never
  loaded, and a load that finishes after a newer request came is thrown away;
- a stale failure changes nothing: a load that fails after a newer request came leaves the state
  to the newer one (`status` only ever says `failed` about the newest request);
- a broken bundle never stops the serving model, and the thread outlives any bundle;
- `stop` makes every request stale (what is loading finishes and is thrown away).

After a swap `on_swap(new, old)` runs on the reload thread (the node publishes the new class
names and label info and reopens the capture there); swaps are therefore one at a time, in
request order. ROS-free: the loader and the logger are parameters, so the rules are unit-tested
with loaders that block or fail on command.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tl_perception.errors import BundleError, one_line
from tl_perception.ros.handoff import LatestFrameSlot

#: `status` when no reload is pending and the last request is serving.
RELOAD_IDLE = "idle"
#: How long `stop` waits for a load in progress.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Serving:
    """The model that classifies and the bundle path it was loaded from."""

    classifier: Any
    path: str


def load_classifier(model_path: str, backend: str, num_threads: int, max_batch: int = 1) -> Any:
    """Load and warm up a Classifier for batches of up to `max_batch` crops; BundleError names
    what is wrong with the bundle."""
    from tl_perception.inference import Classifier

    if not model_path:
        raise BundleError("parameter model_path is empty; pass -p model_path:=<bundle directory>")
    classifier = Classifier(model_path, backend=backend, num_threads=num_threads or None)
    classifier.warmup(max_batch=max_batch)
    return classifier


class Reloader:
    """The serving model and its reload thread (see the module docstring for the rules)."""

    def __init__(
        self,
        serving: Serving,
        load: Callable[[str], Any],
        logger: Any,
        on_swap: Callable[[Serving, Serving], None] = lambda new, old: None,
    ) -> None:
        """Start the thread; `load(path)` returns a classifier or raises."""
        self._serving = serving
        self._load = load
        self._logs = logger
        self._on_swap = on_swap
        self._lock = threading.Lock()  # the sequence, the state and the swap
        self._seq = 0
        self._state = RELOAD_IDLE
        self._stop = threading.Event()
        self._requests: LatestFrameSlot[tuple[int, str]] = LatestFrameSlot()
        self._thread = threading.Thread(target=self._loop, name="reload", daemon=True)
        self._thread.start()

    def current(self) -> Serving:
        """What serves now (read once per cycle: a swap between two reads is a new model)."""
        return self._serving

    def status(self) -> str:
        """`idle`, `loading <path>` or `failed <path>: <reason>` (/diagnostics model_reload)."""
        return self._state

    def request(self, path: str) -> None:
        """Make `path` the newest request; any request before it is now stale."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            serving = path == self._serving.path
            self._state = RELOAD_IDLE if serving else f"loading {path}"
        self._requests.put((seq, path))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """End the thread (a load in progress finishes first, and is thrown away)."""
        with self._lock:
            self._seq += 1  # whatever is loading now is stale
            self._state = RELOAD_IDLE
        self._stop.set()
        self._requests.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        """One reload at a time; a request replaced before it was taken is never loaded."""
        while not self._stop.is_set():
            request = self._requests.take(timeout=0.2)
            if request is None:
                continue
            try:
                self._load_and_swap(*request)
            except Exception as err:  # the reload thread must outlive any bundle
                self._logs.error(f"hot reload failed unexpectedly: {one_line(err)}")

    def _load_and_swap(self, seq: int, path: str) -> None:
        """Load `path` next to the serving model and swap it in, unless a newer request came."""
        with self._lock:
            if seq != self._seq or path == self._serving.path:
                return  # superseded, or asks for what already serves
        self._logs.info(f"loading {path!r} in the background")
        try:
            classifier = self._load(path)
        except Exception as err:  # a broken bundle must never stop the serving model
            self._failed(seq, path, err)
            return
        with self._lock:
            if seq != self._seq:
                self._logs.info(f"loaded {path!r}, discarded: a newer request came (or cleanup)")
                return
            old, new = self._serving, Serving(classifier, path)
            self._serving = new  # one assignment: a reader sees old or new, whole
            self._state = RELOAD_IDLE
        self._on_swap(new, old)  # it says what was swapped in

    def _failed(self, seq: int, path: str, err: Exception) -> None:
        """The state says `failed` only for the newest request; a stale failure is only logged."""
        reason = one_line(err)
        with self._lock:
            current = seq == self._seq
            if current:
                self._state = f"failed {path}: {reason}"
            serving = self._serving.path
        log = self._logs.error if current else self._logs.info
        pending = "" if current else " (a newer request is pending)"
        log(f"hot reload of {path!r} failed: {reason}; still serving {serving!r}{pending}")
