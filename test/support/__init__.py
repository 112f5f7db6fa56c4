"""What the tests share: builders of real data (images, bags, bundles, datasets), the node and
pipeline harnesses, and Ray helpers. No test module imports another; what two need lives here.

The package is found through pytest's `pythonpath = ["test"]` (pyproject.toml). A child process
a test starts does not inherit pytest's sys.path: give it `child_env()`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root and its test/ directory (the folder `support` is imported from).
REPO = Path(__file__).resolve().parents[2]
TEST_ROOT = REPO / "test"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child Python that imports `support` (and the package
    from this checkout), plus `extra`."""
    path = os.pathsep.join([str(TEST_ROOT), str(REPO)])
    if os.environ.get("PYTHONPATH"):
        path = os.pathsep.join([path, os.environ["PYTHONPATH"]])
    return {**os.environ, "PYTHONPATH": path, **extra}
