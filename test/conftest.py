"""Test-process environment and shared fixtures.

Every pytest process gets its own ROS_DOMAIN_ID (processes on one domain see each other even with
localhost-only discovery), localhost discovery, and a temporary ROS_LOG_DIR. This runs at import,
before any test imports rclpy; subprocesses inherit it.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

_LOG_DIR = tempfile.mkdtemp(prefix="tl_perception_roslog_")
os.environ["ROS_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 101))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"  # Humble's spelling of the same setting
os.environ["ROS_LOG_DIR"] = _LOG_DIR
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` (real data and weights) as CI lays it beside the clone."""
    if not (SHARED / "weights").is_dir():
        pytest.skip(f"real data and weights not found at {SHARED} (CI places ../shared)")
    return SHARED


@pytest.fixture(scope="session")
def keras_home(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the shared Keras cache so `weights='imagenet'` resolves offline."""
    home = tmp_path_factory.mktemp("keras_home")
    shutil.copytree(shared_dir / "weights" / "keras-cache", home, dirs_exist_ok=True)
    for sub in home.rglob("*"):
        sub.chmod(0o755 if sub.is_dir() else 0o644)
    os.environ["KERAS_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def color_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny, trained bundle that tells red, green and blue images apart (32x32)."""
    from support.helpers import make_color_bundle

    return make_color_bundle(tmp_path_factory.mktemp("bundles") / "color")
