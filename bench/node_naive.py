"""The baseline: the usual tutorial node. model.predict inside the subscription callback.

Default QoS (reliable, depth 10), decode + resize + `model.predict` + publish in the callback,
one frame at a time. The bench compares the real node against this.
"""

from __future__ import annotations

import json
import sys

import cv2
import keras
import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String


class NaiveClassifier(Node):
    def __init__(self) -> None:
        super().__init__("classifier")
        bundle = self.declare_parameter("model_path", "").value
        self.model = keras.saving.load_model(f"{bundle}/model.keras")
        self.size = tuple(self.model.inputs[0].shape[1:3])
        self.pub = self.create_publisher(String, "classification", 10)
        self.create_subscription(Image, "image", self.image_callback, 10)

    def image_callback(self, msg: Image) -> None:
        bgr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        batch = cv2.resize(rgb, (self.size[1], self.size[0]))[None]
        probs = self.model.predict(batch, verbose=0)[0]
        best = int(np.argmax(probs))
        header = {
            "stamp": {"sec": msg.header.stamp.sec, "nanosec": msg.header.stamp.nanosec},
            "frame_id": msg.header.frame_id,
        }
        result = {
            "header": header,
            "results": [{"class_id": str(best), "score": float(probs[best])}],
        }
        self.pub.publish(String(data=json.dumps(result)))


def main() -> None:
    rclpy.init()
    node = NaiveClassifier()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
