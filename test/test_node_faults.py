"""Faults a car and a bag replay really produce, against the real node over DDS (issue 16).

Capture problems (another crop policy, a dataset.json or manifest truncated by a power cut, a
directory that is not a capture, no permission, a full disk at the first write) never stop the
node: it serves with the capture off, one WARN line and `capture` = `off: <reason>` in
/diagnostics. The permission and full-disk cases run the console script as another process:
without DAC override (`setpriv`, when the tests run as root) and on a full tmpfs of its own
(`unshare --user --map-root-user --mount`), so the kernel itself refuses, nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import color_image
from node_harness import (
    NODE_SCRIPT,
    RAW_LABELS,
    Probe,
    node_in_process,
    probe,
    raw_image,
    start_node_process,
    stop_process,
    wait_for_outputs,
    wait_until,
)

from tl_perception.capture import CaptureConfig, CaptureContext, CaptureItem, HardFrameCapture
from tl_perception.crop import CropPolicy
from tl_perception.dataset import MANIFEST_FILE, SUMMARY_FILE

CLASSES = ("red", "green", "blue")
WARN_TEXT = "hard-frame capture is off"


def filled_capture(root: Path, crop: CropPolicy | None = None) -> Path:
    """A finished capture of three images, as a node would have left it."""
    context = CaptureContext("/bundles/color", "ab" * 32, CLASSES, crop)
    with HardFrameCapture(CaptureConfig(root, 0.5), context) as capture:
        for i in range(3):
            rgb = color_image("red", (16, 16), seed=i)
            assert capture.offer(CaptureItem(rgb, "", (100 + i, 0), "red", 0.3))
    return root


def truncated(name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = filled_capture(root) / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the power cut
        return root

    return make


def foreign(root: Path) -> Path:
    root.mkdir()
    (root / "holiday.png").write_bytes(b"not ours")
    return root


#: fault -> (how to make the directory, what the reason names)
FAULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "another crop policy": (lambda root: filled_capture(root, CropPolicy()), "crops cut with"),
    "dataset.json truncated": (truncated(SUMMARY_FILE), SUMMARY_FILE),
    "manifest truncated": (truncated(MANIFEST_FILE), MANIFEST_FILE),
    "not a capture": (foreign, "is not empty"),
}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def serves_with_capture_off(p: Probe, sec: int) -> dict[str, str]:
    """The node classifies a frame, and /diagnostics shows the capture off (WARN)."""
    frame = color_image("green", (24, 32), seed=sec)
    body = p.publish_until_result(lambda s: raw_image(frame, "rgb8", s), p.image_pub, sec, 30.0)
    assert body["results"][0]["class_id"] == "green"
    diag = wait_until(
        lambda: (d := p.latest_diagnostics()) and d.get("capture", "").startswith("off: ") and d,
        15.0,
    )
    assert diag["_level"] == "1", diag  # WARN
    return diag


def capture_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "[WARN]" in line and WARN_TEXT in line]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_capture_the_node_cannot_use_leaves_it_serving_with_capture_off(
    color_bundle: Path, tmp_path: Path, fault: str, capfd: pytest.CaptureFixture[str]
) -> None:
    make, reason = FAULTS[fault]
    directory = make(tmp_path / "capture")
    before = snapshot(directory)
    ns = f"/capfault{list(FAULTS).index(fault)}"
    overrides = {"model_path": str(color_bundle), "capture_dir": str(directory), **RAW_LABELS}
    with node_in_process({**overrides, "qos": "reliable"}, namespace=ns) as node:
        assert node.lifecycle_state == "active"
        with probe(namespace=ns) as p:
            p.wait_for_subscriber(p.image_pub)
            wait_for_outputs(node)
            diag = serves_with_capture_off(p, 41)
            assert reason in diag["capture"], diag["capture"]
    assert snapshot(directory) == before  # nothing "repaired" or half written
    warnings = capture_warnings(capfd.readouterr().err)
    assert len(warnings) == 1 and reason in warnings[0], warnings


def run_node_with_capture(
    bundle: Path, directory: Path, ns: str, prefix: list[str]
) -> tuple[dict[str, str], str]:
    """The console script under `prefix`; its /diagnostics once it served a frame, its output."""
    args = ["-r", f"__ns:={ns}", "-p", f"model_path:={bundle}", "-p", f"capture_dir:={directory}"]
    args += ["-p", "qos:=reliable", "-p", "smoothing:=none", "-p", "switch_frames:=1"]
    proc = start_node_process(args, prefix=prefix)
    try:
        with probe(namespace=ns) as p:
            p.wait_for_subscriber(p.image_pub, timeout=60.0)
            diag = serves_with_capture_off(p, 43)
    finally:
        output = stop_process(proc)
    assert proc.returncode == 0, output
    return diag, output


needs_script = pytest.mark.skipif(not NODE_SCRIPT.is_file(), reason="console script not installed")


@needs_script
def test_no_permission_on_the_capture_directory_leaves_the_node_serving(
    color_bundle: Path, tmp_path: Path
) -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores file modes: run the node without DAC override
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    directory = filled_capture(tmp_path / "capture")
    directory.chmod(0)
    try:
        diag, output = run_node_with_capture(color_bundle, directory, "/capperm", prefix)
    finally:
        directory.chmod(0o755)
    assert "Permission denied" in diag["capture"], diag["capture"]
    warnings = capture_warnings(output)
    assert len(warnings) == 1 and "Permission denied" in warnings[0], output


FULL_DISK = (
    'mount -t tmpfs -o size=64k tmpfs "$0" || exit 97; '
    'head -c 61440 /dev/zero > "$0/.fill" || exit 97; exec "$@"'
)


@needs_script
def test_a_full_disk_at_the_first_write_leaves_the_node_serving(
    color_bundle: Path, tmp_path: Path
) -> None:
    """The capture directory is a 64 KiB tmpfs with one page left: the lock file takes it, so
    the capture's first flush (naming it in dataset.json) meets a full disk."""
    unshare = shutil.which("unshare")
    directory = tmp_path / "capture"
    directory.mkdir()
    probe_cmd = [str(unshare), "--user", "--map-root-user", "--mount", "sh", "-c"]
    if unshare is None or os.system(" ".join([*probe_cmd, "'mount -t tmpfs t /mnt'"])):
        pytest.skip("no unshare, or no user+mount namespaces here to mount a small tmpfs")
    prefix = [*probe_cmd, FULL_DISK, str(directory)]
    diag, output = run_node_with_capture(color_bundle, directory, "/capfull", prefix)
    assert "No space left on device" in diag["capture"], diag["capture"]
    warnings = capture_warnings(output)
    assert len(warnings) == 1 and "No space left on device" in warnings[0], output
    assert not any(directory.iterdir())  # the tmpfs went with the node's mount namespace
