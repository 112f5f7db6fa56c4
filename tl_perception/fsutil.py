"""Crash-safe writes: everything lands under a temporary name first and is renamed into place.

An interrupted run therefore leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which would race with threads.
_UMASK = _read_umask()
#: Modes of files and directories we create: the usual ones, not mkstemp's private 0600.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory.

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600, so
    bundles and datasets stay readable by the other users of a robot.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write pretty, key-sorted JSON atomically (stable diffs, readable by hand)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
