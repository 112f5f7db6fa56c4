"""Crash-safe writes: everything lands under a temporary name first and is renamed into place.

An interrupted run therefore leaves either the old file or the new one, never half of either.
That holds for a process that dies; a *power cut* can still lose data the kernel had not written
yet, and after one an unsynced rename may point at an empty file. Writes that must survive a
power cut (a capture's dataset.json, manifest and images on a car) are therefore *durable*:
`durable=True`, or any atomic write inside `with durable_writes():`, fsyncs the file before the
rename and the directory after it (and every directory it had to create), so once the call
returns the new content is on the disk. Durable writes cost an fsync each, so extraction and
training, which can simply run again, do not use them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which would race with threads.
_UMASK = _read_umask()
#: Modes of files and directories we create: the usual ones, not mkstemp's private 0600.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


#: Whether atomic writes in this context are durable (see `durable_writes`).
_DURABLE: contextvars.ContextVar[bool] = contextvars.ContextVar("durable_writes", default=False)


@contextlib.contextmanager
def durable_writes() -> Iterator[None]:
    """Make every atomic write of this thread (context) durable until the block ends.

    For callers that write through another module's writer (e.g. `dataset.write_dataset`),
    which need not know that its files must survive a power cut.
    """
    token = _DURABLE.set(True)
    try:
        yield
    finally:
        _DURABLE.reset(token)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so the names created, renamed or removed in it are on the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(path: str | os.PathLike[str], *, durable: bool = False) -> None:
    """`mkdir -p path`; `durable`: fsync the parent of every directory it creates."""
    path = Path(path)
    if path.is_dir():
        return
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    if durable:
        for created in reversed(missing):
            fsync_directory(created.parent)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    durable: bool | None = None,
    **open_args: Any,
) -> Iterator[IO[Any]]:
    """A file to stream into under a temporary name beside `path`, renamed into place when the
    block ends without an error (and removed when it raises).

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600, so
    bundles and datasets stay readable by the other users of a robot. `durable` (None: inside
    `durable_writes()` or not) fsyncs the file before the rename and the directory after it.
    `mode` is a write mode ("wb", "w"); `open_args` go to `open` (encoding, newline).
    """
    path = Path(path)
    durable = _DURABLE.get() if durable is None else durable
    make_directories(path.parent, durable=durable)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(path.parent)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, durable: bool | None = None
) -> Path:
    """Write `data` to `path` through a temporary file in the same directory (`atomic_open`)."""
    with atomic_open(path, "wb", durable=durable) as fh:
        fh.write(data)
    return Path(path)


def atomic_save_figure(figure: Any, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """Render a matplotlib figure to PNG in memory, write it atomically, and close it.

    `savefig` goes to `Figure.savefig` (e.g. `dpi`, `bbox_inches`). Closing frees the figure
    that pyplot would otherwise keep alive for the rest of the process.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", **savefig)
    finally:
        plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (model files are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def user_cache_dir() -> Path:
    """`${XDG_CACHE_HOME:-~/.cache}/tl_perception`: one root for every cache of the project.

    Read at call time, so a user or a test may set `XDG_CACHE_HOME` late.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tl_perception"


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, durable: bool | None = None
) -> Path:
    """Write UTF-8 text atomically (`durable` as in `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, durable: bool | None = None
) -> Path:
    """Write pretty, key-sorted JSON atomically (stable diffs, readable by hand)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write_text(path, text, durable=durable)


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and deleted only after the new one is in place,
    so a failure at any point leaves the previous directory intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
    os.chmod(stage, DIR_MODE)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    try:
        os.replace(stage, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
