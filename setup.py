"""ament_python package that is also pip-installable.

`install_requires` stays free of the heavy libraries on purpose: in a ROS 2 workspace they come
from rosdep (package.xml), and Humble's entry-point scripts refuse to start when a declared
requirement is not a pip distribution. A virtual environment installs `requirements.txt`.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tl_perception"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    extras_require={
        "ml": [
            "numpy",
            "opencv-python-headless",
            "PyYAML",
            "rosbags",
            "rosbags-image",
            "tensorflow-cpu",
            "keras>=3",
            "ai-edge-litert",
            "matplotlib",
        ],
        "ray": ["ray>=2.60"],  # extract --engine ray (imported only when asked for)
        "ros": [
            "ros-jazzy-rclpy[fastrtps]",
            "ros-jazzy-sensor-msgs",
            "ros-jazzy-std-msgs",
            "ros-jazzy-diagnostic-msgs",
        ],
    },
    zip_safe=True,
    maintainer="tl_perception developers",
    maintainer_email="tl-perception@example.com",
    description="Transfer-learned traffic sign and vehicle classification for ROS 2: "
    "bag to dataset to fine-tuned model to a classifier node.",
    license="Apache-2.0",
    tests_require=["pytest"],
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "tl-perception = tl_perception.cli:main",
            "classifier_node = tl_perception.ros.classifier_node:main",
            "extract_dataset = tl_perception.cli:extract_main",
            "finetune = tl_perception.cli:finetune_main",
        ],
    },
)
