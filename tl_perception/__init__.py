"""tl_perception: rosbag -> labelled dataset -> fine-tuned classifier -> ROS 2 node.

Importing the package is cheap: TensorFlow, OpenCV and rclpy are imported by the rooms
that need them.
"""

__version__ = "0.1.0"
