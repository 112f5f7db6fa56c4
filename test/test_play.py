"""`play` publishes a bag's frames over real DDS to a subscriber in this process."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from bagutil import T0, frames, label, pattern

from tl_perception.bag.writer import SEC, write_bag

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
