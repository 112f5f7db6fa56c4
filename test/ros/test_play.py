"""`play` publishes a bag's frames over real DDS to a subscriber in this process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tl_perception.bag.writer import write_bag
from tl_perception.stamps import SEC

from support.bagutil import T0, frames, label, pattern

rclpy = pytest.importorskip("rclpy", reason="play needs rclpy")


def test_play_delivers_frames_in_order_with_recorded_stamps(tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image
    from std_msgs.msg import String

    msgs = frames("/cam", [pattern(i) for i in range(6)], period_s=0.05, encoding="bgr8")
    msgs += frames("/jpeg", [pattern(i) for i in range(3)], kind="compressed", encoding="jpeg")
    msgs.append(label("/label", 0.0, "red"))
    bag = write_bag(tmp_path / "b", "mcap", sorted(msgs, key=lambda m: m.t_ns))

    rclpy.init()
    node = rclpy.create_node("play_listener")
    got: dict[str, list] = {"img": [], "jpeg": [], "label": []}
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/replay/cam", got["img"].append, qos)
    node.create_subscription(CompressedImage, "/jpeg", got["jpeg"].append, qos)
    node.create_subscription(String, "/label", got["label"].append, qos)
    cmd = [sys.executable, "-m", "tl_perception.cli", "play", str(bag), "--rate", "2"]
    cmd += ["--remap", "/cam:=/replay/cam", "--wait-subscribers", "1", "--wait-timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (
            len(got["img"]) < 6 or len(got["jpeg"]) < 3 or not got["label"]
        ):
            rclpy.spin_once(node, timeout_sec=0.1)
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    assert proc.returncode == 0, output
    stamps = [m.header.stamp.sec * SEC + m.header.stamp.nanosec for m in got["img"]]
    assert stamps == [T0 + round(i * 0.05 * SEC) for i in range(6)]
    assert [m.encoding for m in got["img"]] == ["bgr8"] * 6
    assert bytes(got["img"][0].data)[:3] == bytes(pattern(0)[0, 0, ::-1])
    assert len(got["jpeg"]) == 3 and got["jpeg"][0].format == "jpeg"
    assert [m.data for m in got["label"]] == ["red"]


def test_play_rejects_unknown_topic(tmp_path):
    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [pattern(0)]))
    cmd = [sys.executable, "-m", "tl_perception.cli", "play", str(bag), "--topic", "/nope"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "'/nope' not in bag" in done.stderr


def test_play_publishes_detection_arrays_field_for_field(tmp_path):
    """A road drive's detector boxes reach a subscriber with every field as the bag has it."""
    pytest.importorskip("vision_msgs.msg", reason="Detection2DArray needs vision_msgs")
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs.msg import Detection2DArray

    from tl_perception.bag.reader import iter_messages, open_bag
    from tl_perception.synth.detector import DetectorNoise
    from tl_perception.synth.writer import DETECTIONS_TOPIC, DriveSpec, write_synthetic_bag

    bag = tmp_path / "road"
    noise = DetectorNoise(miss=0.0, false_positives=1.0, jitter=0.05)
    spec = DriveSpec(kind="road", frames=12, size=(96, 72), seed=3, detector_noise=noise)
    write_synthetic_bag(bag, spec)
    with open_bag(bag) as reader:
        recorded = [
            reader.deserialize(raw, conn.msgtype)
            for conn, _t, raw in iter_messages(reader, bag, [DETECTIONS_TOPIC])
        ]
    assert sum(len(m.detections) for m in recorded) > 0

    rclpy.init()
    node = rclpy.create_node("play_detections_listener")
    got: list = []
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Detection2DArray, "/replay/detections", got.append, qos)
    cmd = [sys.executable, "-m", "tl_perception.cli", "play", str(bag), "--rate", "4"]
    cmd += ["--topic", DETECTIONS_TOPIC, "--remap", f"{DETECTIONS_TOPIC}:=/replay/detections"]
    cmd += ["--wait-subscribers", "1", "--wait-timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and len(got) < len(recorded):
            rclpy.spin_once(node, timeout_sec=0.1)
        output = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    assert proc.returncode == 0, output
    assert [_detections(m) for m in got] == [_detections(m) for m in recorded]


def _detections(msg) -> tuple:
    """Every field of a Detection2DArray (rosbags or rclpy) as plain values."""

    def hypothesis(r) -> tuple:
        pose = r.pose.pose
        return (
            r.hypothesis.class_id,
            r.hypothesis.score,
            (pose.position.x, pose.position.y, pose.position.z),
            (pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w),
            tuple(float(c) for c in r.pose.covariance),
        )

    def detection(d) -> tuple:
        box = d.bbox
        return (
            (d.header.stamp.sec, d.header.stamp.nanosec, d.header.frame_id),
            d.id,
            (box.center.position.x, box.center.position.y, box.center.theta),
            (box.size_x, box.size_y),
            tuple(hypothesis(r) for r in d.results),
        )

    stamp = msg.header.stamp
    return (stamp.sec, stamp.nanosec, msg.header.frame_id), tuple(
        detection(d) for d in msg.detections
    )


def test_loops_replay_the_bag_with_its_recorded_stamps_and_loop_stops_on_sigint(tmp_path):
    """`--loops 2` plays everything twice, the same stamps each time (the clock jumps back, as
    with `ros2 bag play --loop`); `--loop` plays until Ctrl-C (then the CLI's "interrupted",
    exit 130)."""
    import signal

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    bag = write_bag(tmp_path / "b", "mcap", frames("/cam", [pattern(i) for i in range(4)]))
    rclpy.init()
    node = rclpy.create_node("play_loops_listener")
    got: list = []
    node.create_subscription(
        Image, "/cam", got.append, QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    )
    base = [sys.executable, "-m", "tl_perception.cli", "play", str(bag), "--rate", "4"]
    base += ["--wait-subscribers", "1", "--wait-timeout", "20"]

    def spin_until(done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            rclpy.spin_once(node, timeout_sec=0.1)

    try:
        forever = twice = subprocess.Popen(
            [*base, "--loops", "2"], stdout=subprocess.PIPE, text=True
        )
        spin_until(lambda: len(got) >= 8, 40)
        out = twice.communicate(timeout=30)[0]
        assert twice.returncode == 0, out
        stamps = [m.header.stamp.sec * SEC + m.header.stamp.nanosec for m in got]
        assert stamps == [T0 + round(i * 0.1 * SEC) for i in range(4)] * 2

        got.clear()
        forever = subprocess.Popen([*base, "--loop"], stdout=subprocess.PIPE, text=True)
        spin_until(lambda: len(got) >= 10, 40)  # a third loop began
        forever.send_signal(signal.SIGINT)
        out = forever.communicate(timeout=30)[0]
        assert forever.returncode == 130 and len(got) >= 10, out
    finally:
        for proc in (twice, forever):
            proc.kill()
        node.destroy_node()
        rclpy.try_shutdown()
