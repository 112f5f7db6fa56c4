"""Faults a car and a bag replay really produce, against the real node over DDS (issue 16).

Capture problems (another crop policy, a dataset.json or manifest truncated by a power cut, a
directory that is not a capture, no permission, a full disk at the first write) never stop the
node: it serves with the capture off, one WARN line and `capture` = `off: <reason>` in
/diagnostics. The permission and full-disk cases run the console script as another process:
without DAC override (`setpriv`, when the tests run as root) and on a full tmpfs of its own
(`unshare --user --map-root-user --mount`), so the kernel itself refuses, nothing is mocked.

Boxes that lie in ways only the pipeline sees (an id repeated in a frame, a crop over the
cycle's pixel budget, one camera flooding boxes beside another) are proven without a graph in
test_pipeline.py; here stay the faults that need the node: clock jumps in a looped bag replay,
detections of another camera's frame (warned in the log and /diagnostics), a risky tolerance.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rclpy.parameter import Parameter

from tl_perception.crop import CropPolicy
from tl_perception.dataset import MANIFEST_FILE, SUMMARY_FILE
from tl_perception.loop.capture import CaptureConfig, CaptureContext, CaptureItem, HardFrameCapture

from support.helpers import color_image
from support.node_bundles import PATCHES, ROI_SIZE, Det, box_of, patch_frame
from support.node_harness import (
    NODE_SCRIPT,
    RAW_LABELS,
    Probe,
    detection_array,
    node_in_process,
    probe,
    raw_image,
    roi_node_and_probe,
    start_node_process,
    stop_process,
    wait_for_outputs,
    wait_until,
)

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


# ------------------------------------------------------------------ a looped bag replay
LOOP_FRAMES, LOOP_PAIRED, LOOP_PERIOD_NS = 16, 10, 50_000_000  # 20 Hz; detector stops at 10
LOOP_GREEN = 5  # the sign's patch turns green at this frame
LOOP_QUEUE = 4  # sync_queue: the last images of a loop fill it
LOOP_BOX = (60, 40, 40, 40)  # x, y, w, h of the sign's patch


def loop_bag(path: Path, detections_offset_ns: int) -> Path:
    """0.8 s of camera: a red sign, green from frame 5 on; the detector (one box, track "s")
    stopped after frame 9, so the camera's last 6 frames fill the pairing queue unpaired."""
    from tl_perception.bag.writer import Det, Msg, write_bag
    from tl_perception.crop import Box

    from support.bagutil import T0

    messages = []
    for i in range(LOOP_FRAMES):
        t_ns = T0 + i * LOOP_PERIOD_NS
        colour = "red" if i < LOOP_GREEN else "green"
        rgb = patch_frame((120, 160), [(colour, *LOOP_BOX)], seed=i)
        messages.append(Msg("/cam", t_ns, "image", (rgb, "rgb8")))
        if i < LOOP_PAIRED:
            det = Det(Box.from_xywh(*LOOP_BOX), id="s")
            stamp = t_ns + detections_offset_ns
            messages.append(Msg("/det", t_ns + 5_000_000, "detections", [det], stamp_ns=stamp))
    return write_bag(path, "mcap", messages)


def loops_of(bodies: list[dict[str, Any]]) -> list[list[tuple[int, str]]]:
    """(frame index, published class) per loop of the replay, in arrival order."""
    from support.bagutil import T0

    loops: list[list[tuple[int, str]]] = []
    last = LOOP_FRAMES
    for body in bodies:
        stamp = body["header"]["stamp"]
        index = (stamp["sec"] * 10**9 + stamp["nanosec"] - T0) // LOOP_PERIOD_NS
        if index < last:
            loops.append([])
        last = index
        loops[-1].extend((index, d["results"][0]["class_id"]) for d in body["detections"])
    return loops


@pytest.mark.parametrize(
    ("mode", "offset_ms", "tolerance_s"), [("exact", 0, 0.0), ("near", 3, 0.01)]
)
def test_a_looped_bag_replay_pairs_again_right_after_every_jump_back(
    color_bundle: Path, tmp_path: Path, mode: str, offset_ms: int, tolerance_s: float
) -> None:
    """`tl-perception play --loops 3` (ros2 bag play --loop's stamps): each loop's clock jumps
    back 0.8 s while a full queue of the last loop's images waits for detections. Every pair of
    every loop is made (exact and approximate pairing), the smoothing restarts (frame 0's red is
    published at once, not held by the green before the jump), and what is dropped is counted."""
    pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs")
    bag = loop_bag(tmp_path / "loop", offset_ms * 1_000_000)
    ns = f"/loop{mode}"
    overrides = {
        "model_path": str(color_bundle),
        "roi_source": "detections",
        "qos": "reliable",
        "sync_tolerance_s": tolerance_s,
        "sync_queue": LOOP_QUEUE,
    }
    with roi_node_and_probe(overrides, ns) as (_node, p):
        cmd = [sys.executable, "-m", "tl_perception.cli", "play", str(bag), "--loops", "3"]
        cmd += ["--remap", f"/cam:={ns}/image", "--remap", f"/det:={ns}/detections"]
        cmd += ["--wait-subscribers", "1", "--wait-timeout", "30"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        final = {"paired_frames": str(3 * LOOP_PAIRED), "received_frames": str(3 * LOOP_FRAMES)}

        def settled(d: dict[str, str]) -> bool:  # the last pair classified (or replaced) too
            done = int(d["processed_frames"]) + int(d["dropped_frames"])
            return final.items() <= d.items() and done == 3 * LOOP_PAIRED

        diag = wait_until(lambda: (d := p.latest_diagnostics()) and settled(d) and d, 20.0)
        with p._lock:
            bodies = list(p.default.detections)
    assert diag["stamp_jumps_back"] == "2"
    # nothing vanished: every image was classified, replaced by a newer pair, or counted
    received = int(diag["received_frames"])
    unaccounted = received - int(diag["unpaired_images"]) - int(diag["waiting_images"])
    assert unaccounted == int(diag["processed_frames"]) + int(diag["dropped_frames"])
    loops = loops_of(bodies)
    assert len(loops) == 3, loops
    for later in loops[1:]:
        first_index, first_class = later[0]
        assert first_index <= 1, later  # paired again within a frame or two of the jump
        assert first_class == "red" and all(c == "red" for i, c in later if i < LOOP_GREEN), later


# ------------------------------------------------------------------ boxes that lie
def roi_frame(seed: int) -> np.ndarray:
    return patch_frame(ROI_SIZE, list(PATCHES.values()), seed=seed)


def send(
    cam: Any, sec: int, boxes: list[Det], image_frame: str = "camera", det_frame: str = "camera"
) -> None:
    cam.image_pub.publish(raw_image(roi_frame(sec), "rgb8", sec, frame_id=image_frame))
    cam.detections_pub.publish(detection_array(sec, boxes, frame_id=det_frame))


def classes(body: dict[str, Any]) -> list[str]:
    return [d["results"][0]["class_id"] for d in body["detections"]]


def diag_where(p: Probe, check: Callable[[dict[str, str]], bool], camera: str = "") -> dict:
    def latest() -> dict[str, str] | None:
        return p.latest_camera_diagnostics(camera) if camera else p.latest_diagnostics()

    return wait_until(lambda: (d := latest()) and check(d) and d, 10.0)


def counter(p: Probe, key: str) -> int:
    """A counter of the latest /diagnostics (0 before it first appears)."""
    return int(diag_where(p, lambda d: "input_topic" in d).get(key, 0))


@pytest.fixture(scope="module")
def roi_node(color_bundle: Path) -> Iterator[tuple[Any, Probe]]:
    """One ROI node with the default smoothing (ema, switch_frames 2) and its probe."""
    pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs")
    overrides = {"model_path": str(color_bundle), "roi_source": "detections", "qos": "reliable"}
    with roi_node_and_probe(overrides, "/lies") as both:
        yield both


def test_detections_of_another_camera_frame_are_refused_counted_and_warned_once(
    roi_node: tuple[Any, Probe], capfd: pytest.CaptureFixture[str]
) -> None:
    node, p = roi_node
    mismatches, refused = counter(p, "frame_id_mismatches"), counter(p, "frame_id_refused")
    boxes = [box_of("r", "r")]
    for sec in (200, 201):  # the rear camera's image with the front camera's boxes
        send(p.default, sec, boxes, image_frame="rear", det_frame="front")
    body = p.default.publish_until_detections(lambda s: send(p.default, s, boxes), 202)
    assert classes(body) == ["red"]  # a matching pair still classifies
    assert p.detections_for(200) is None and p.detections_for(201) is None
    diag = diag_where(p, lambda d: int(d["frame_id_mismatches"]) == mismatches + 2)
    assert int(diag["frame_id_refused"]) == refused + 2
    warned = [d for d in p.diagnostics if "another frame_id" in d["_message"]]
    assert warned and warned[-1]["_level"] == "1"
    # empty frame_ids state nothing; frame_id_must_match false classifies mismatches anyway
    body = p.default.publish_until_detections(
        lambda s: send(p.default, s, boxes, det_frame=""), 203
    )
    assert classes(body) == ["red"]
    node.set_parameters([Parameter("frame_id_must_match", value=False)])
    try:
        body = p.default.publish_until_detections(
            lambda s: send(p.default, s, boxes, image_frame="rear", det_frame="front"), 204
        )
        assert classes(body) == ["red"]
    finally:
        node.set_parameters([Parameter("frame_id_must_match", value=True)])
    diag = diag_where(p, lambda d: int(d["frame_id_mismatches"]) >= mismatches + 3)
    assert int(diag["frame_id_refused"]) == refused + 2
    lines = [line for line in capfd.readouterr().err.splitlines() if "[WARN]" in line]
    assert len([line for line in lines if "frame_id 'front'" in line]) == 1, lines


def test_a_sync_tolerance_of_half_the_measured_period_warns(
    color_bundle: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Greedy nearest pairing can cross pairs once the tolerance reaches half the frame
    period: the node measures the period from the image stamps and says so (WARN, once)."""
    pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs")
    overrides = {
        "model_path": str(color_bundle),
        "roi_source": "detections",
        "qos": "reliable",
        "sync_tolerance_s": 0.06,
    }
    with roi_node_and_probe(overrides, "/tol") as (_node, p):
        for i in range(6):  # 10 Hz of stamps
            msg = raw_image(roi_frame(i), "rgb8", 50)
            msg.header.stamp.nanosec = i * 100_000_000
            p.image_pub.publish(msg)
        diag = diag_where(p, lambda d: "pairs can cross" in d["_message"])
        assert diag["measured_frame_period_s"] == "0.1" and diag["_level"] == "1"
    lines = capfd.readouterr().err.splitlines()
    assert len([line for line in lines if "[WARN]" in line and "pairs can cross" in line]) == 1
