"""Test-process environment and shared fixtures.

Every pytest process gets its own ROS_DOMAIN_ID (processes on one domain see each other even with
localhost-only discovery), localhost discovery, and a temporary ROS_LOG_DIR. This runs at import,
before any test imports rclpy; subprocesses inherit it. Under pytest-xdist the controller draws
one domain and worker gwN takes the N-th after it, so two workers of one run never share one.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

#: ROS 2 domain ids usable on Linux (each maps to its own UDP ports below the ephemeral range).
DOMAINS = range(1, 102)


def _domain_id() -> int:
    """A random domain for a plain run or an xdist controller (which its workers inherit through
    TL_PERCEPTION_TEST_DOMAIN); for worker gwN, the N-th domain after its controller's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # set by xdist before this import
    if worker is None:
        drawn = random.SystemRandom().choice(DOMAINS)
        os.environ["TL_PERCEPTION_TEST_DOMAIN"] = str(drawn)
        return drawn
    base = int(os.environ["TL_PERCEPTION_TEST_DOMAIN"])
    offset = 1 + int(worker.removeprefix("gw"))
    return DOMAINS[(DOMAINS.index(base) + offset) % len(DOMAINS)]


_LOG_DIR = tempfile.mkdtemp(prefix="tl_perception_roslog_")
os.environ["ROS_DOMAIN_ID"] = str(_domain_id())
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


@pytest.fixture(autouse=True, scope="module")
def _ray_ends_with_its_module() -> Iterator[None]:
    """A local Ray that a module's tests started (rayutil.local_ray_session, even from a session
    fixture) is shut down when the module ends: no later module of this process sees it (the
    engine tests assert that an engine left no Ray initialised), whatever order runs them."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist's `--dist loadgroup` (`make test`): a module without a group of its own
    is one group, so it runs on one worker and builds its module fixtures once (the demo run, the
    mirrored trainings); modules marked `xdist_group("ray")` share one worker, so two local Rays
    never run at once (rayutil counts every Ray daemon and unit on the machine)."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
