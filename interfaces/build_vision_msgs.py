"""Build interfaces/vision_msgs into the running virtual environment (`make venv` calls it).

vision_msgs has no PyPI wheel, but the `ros-jazzy-*` wheels in requirements.txt carry the whole
rosidl tool chain, so the message package is generated and compiled here with the system cmake
and C/C++ compiler, then installed into the venv like any ROS package. Run it with the venv's
Python. It does nothing when a vision_msgs from outside the venv imports (a sourced ROS install
always wins) or when this same source is already installed; `--force` rebuilds.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "vision_msgs"
BUILD_DIR = HERE.parent / "build" / "vision_msgs"  # build/ is git-ignored
MARKER = "tl_perception_source.sha256"  # in <venv>/share/vision_msgs: which source is installed
# Python modules and CMake packages the build needs (all from requirements.txt).
PYTHON_MODULES = ("numpy", "catkin_pkg", "ament_package", "rosidl_adapter", "rosidl_generator_py")
CMAKE_PACKAGES = ("ament_cmake", "rosidl_default_generators", "std_msgs", "geometry_msgs")
# The wheels' exported CMake targets name the include directories of the machine that built them.
WHEEL_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/_?core/include"
)
WHEEL_PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")


class BuildError(Exception):
    """Something the build needs is missing or a build step failed (one line for the user)."""


def source_fingerprint(source: Path = SOURCE) -> str:
    """Hash of everything that defines the package, so a changed .msg triggers a rebuild."""
    digest = hashlib.sha256()
    files = [source / "package.xml", source / "CMakeLists.txt", *sorted(source.glob("msg/*.msg"))]
    for path in files:
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def installed_state(prefix: Path) -> tuple[str, Path | None]:
    """('missing' | 'external' | 'ours' | 'stale', where vision_msgs imports from)."""
    # Not from this script's directory, whose vision_msgs/ (the source) would pass for a package.
    search = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    spec = importlib.machinery.PathFinder.find_spec("vision_msgs", search)
    if spec is None or spec.origin is None or not spec.origin.endswith("__init__.py"):
        return "missing", None
    location = Path(spec.origin).resolve().parent
    if not location.is_relative_to(prefix.resolve()):
        return "external", location
    marker = prefix / "share" / "vision_msgs" / MARKER
    fresh = marker.is_file() and marker.read_text().strip() == source_fingerprint()
    return ("ours" if fresh else "stale"), location


def missing_prerequisites(prefix: Path) -> list[str]:
    """Human-readable names of the tools, headers and packages that are not there."""
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake")
    if not (os.environ.get("CC") or any(shutil.which(c) for c in ("cc", "gcc", "clang"))):
        missing.append("a C compiler (cc)")
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("c++", "g++", "clang++"))):
        missing.append("a C++ compiler (c++)")
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        missing.append(f"the Python headers ({include}/Python.h; e.g. python3.11-dev)")
    modules = [m for m in PYTHON_MODULES if importlib.util.find_spec(m) is None]
    packages = [p for p in CMAKE_PACKAGES if not (prefix / "share" / p / "cmake").is_dir()]
    if modules or packages:
        missing.append(
            f"{', '.join(modules + packages)} in {prefix} (pip install -r requirements.txt)"
        )
    return missing


def rewrite_wheel_include_paths(prefix: Path) -> int:
    """Point the wheels' exported CMake include paths at this interpreter and numpy; idempotent."""
    import numpy

    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    rewritten = 0
    for path in sorted((prefix / "share").glob("*/cmake/*.cmake")):
        text = path.read_text()
        new = WHEEL_NUMPY_INCLUDE.sub(numpy_include, text)
        new = WHEEL_PYTHON_INCLUDE.sub(python_include, new)
        if new != text:
            path.write_text(new)
            rewritten += 1
    return rewritten


def build_environment(prefix: Path) -> dict[str, str]:
    """Only this venv: its CMake packages, its tools first on PATH, no foreign PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["AMENT_PREFIX_PATH"] = str(prefix)
    env["CMAKE_PREFIX_PATH"] = str(prefix)
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_step(name: str, command: list[str], env: dict[str, str], log: Path) -> None:
    """Run one cmake step, appending to `log`; on failure show its tail and name the log."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        print("\n".join(tail), file=sys.stderr)
        raise BuildError(f"vision_msgs {name} failed (exit {result.returncode}); full log: {log}")


def build(prefix: Path, build_dir: Path = BUILD_DIR) -> None:
    """Configure, build and install interfaces/vision_msgs into `prefix`, then check the import."""
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    log = build_dir / "build.log"
    env = build_environment(prefix)
    configure = [
        "cmake",
        "-S",
        str(SOURCE),
        "-B",
        str(build_dir),
        f"-DCMAKE_INSTALL_PREFIX={prefix}",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DBUILD_TESTING=OFF",
    ]
    run_step("configure", configure, env, log)
    jobs = str(os.cpu_count() or 2)
    run_step("build", ["cmake", "--build", str(build_dir), "--parallel", jobs], env, log)
    run_step("install", ["cmake", "--install", str(build_dir)], env, log)
    check = "import vision_msgs.msg as m; print(m.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BuildError(f"vision_msgs installed but does not import: {result.stderr.strip()}")
    (prefix / "share" / "vision_msgs" / MARKER).write_text(source_fingerprint() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if installed")
    args = parser.parse_args(argv)
    prefix = Path(sys.prefix)
    try:
        if sys.prefix == sys.base_prefix:
            raise BuildError(f"run this with a virtual environment's Python, not {sys.executable}")
        state, location = installed_state(prefix)
        if state == "external":
            print(f"vision_msgs: using {location} (outside {prefix}; nothing to build)")
            return 0
        if state == "ours" and not args.force:
            print(f"vision_msgs: already built into {prefix}")
            return 0
        missing = missing_prerequisites(prefix)
        if missing:
            raise BuildError(
                f"cannot build vision_msgs into {prefix}: missing {'; '.join(missing)}. "
                "Install them (Debian/Ubuntu: apt-get install cmake g++) and rerun make venv, "
                "or skip it with make venv VISION_MSGS=0 (the node then publishes JSON)"
            )
        started = time.monotonic()
        rewritten = rewrite_wheel_include_paths(prefix)
        print(f"vision_msgs: building into {prefix} (include paths fixed in {rewritten} files)")
        build(prefix)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"vision_msgs: built and installed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
