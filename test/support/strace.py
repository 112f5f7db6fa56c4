"""What a child Python fsyncs, as the kernel sees it (strace), for the durable-write tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

STRACE = shutil.which("strace")


def fsynced(code: str, cwd: Path) -> list[str]:
    """The paths a Python snippet fsyncs, as strace resolves its file descriptors."""
    assert STRACE is not None
    done = subprocess.run(
        [STRACE, "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return re.findall(r"f(?:data)?sync\(\d+<([^>]*)>\)", done.stderr)
