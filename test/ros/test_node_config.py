"""The node's parameter table and its rules, without rclpy (ros/config.py)."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from tl_perception.crop import Box
from tl_perception.errors import NodeConfigError, RoiConfigError
from tl_perception.ros.config import (
    CLASS_NAMES,
    PARAMETERS,
    SERVING_MODEL_PATH,
    NodeConfig,
    convert_values,
)


def test_the_table_is_the_config_s_fields_with_their_ros_defaults() -> None:
    assert list(PARAMETERS) == [f.name for f in fields(NodeConfig)]
    config = NodeConfig()
    for name, spec in PARAMETERS.items():
        value = getattr(config, name)
        assert spec.default == ([] if spec.kind != "value" else value), name
        assert spec.description, name
    assert config.rois == () and config.cameras == () and not config.crops_rois


def test_values_are_converted_once_arrays_boxes_and_choices() -> None:
    config = NodeConfig.from_values(
        {"roi_source": "fixed", "rois": [10, 20, 30, 40], "cameras": ["a", "b"]}
    )
    assert config.rois[0].id == "roi0" and config.rois[0].box == Box(25.0, 40.0, 30.0, 40.0)
    assert config.cameras == ("a", "b") and config.crops_rois
    with pytest.raises(NodeConfigError, match=r"^parameter smoothing = 'median' is not one of"):
        NodeConfig.from_values({"smoothing": "median"})
    with pytest.raises(NodeConfigError, match="must be an array of numbers"):
        NodeConfig.from_values({"rois": ["x"]})
    with pytest.raises(RoiConfigError, match=r"^parameter rois must hold x, y, w, h"):
        NodeConfig.from_values({"rois": [1, 2, 3]})
    with pytest.raises(NodeConfigError, match="parameter cameras has duplicates"):
        NodeConfig.from_values({"cameras": ["a", "a"]})
    assert convert_values({CLASS_NAMES: ["x"], SERVING_MODEL_PATH: "/b", "top_k": 3}) == {
        "top_k": 3
    }


def test_fixed_needs_rois_is_one_rule_at_configure_and_at_a_run_time_set() -> None:
    message = r"^roi_source 'fixed' needs boxes: -p rois:="
    with pytest.raises(NodeConfigError, match=message):
        NodeConfig.from_values({"roi_source": "fixed"})
    config = NodeConfig.from_values({"roi_source": "fixed", "rois": [0, 0, 8, 8]})
    with pytest.raises(NodeConfigError, match=message):
        config.with_changes({"rois": []})
    assert len(config.rois) == 1  # a refused set changes nothing


def test_a_run_time_set_is_a_new_frozen_config() -> None:
    config = NodeConfig()
    changed = config.with_changes({"top_k": 2, "max_rate_hz": 5.0})
    assert (changed.top_k, changed.max_rate_hz) == (2, 5.0) and config.top_k == 5
    with pytest.raises(FrozenInstanceError):
        changed.top_k = 3


def test_derived_settings_come_from_the_same_values(tmp_path: Path) -> None:
    fixed = NodeConfig.from_values(
        {"roi_source": "fixed", "rois": [0, 0, 8, 8] * 3, "cameras": ["a", "b"], "max_rois": 4}
    )
    assert fixed.max_batch() == 4  # 3 boxes x 2 cameras, capped by max_rois
    assert NodeConfig.from_values({"cameras": ["a", "b", "c"]}).max_batch() == 3
    assert NodeConfig.from_values({"roi_source": "detections"}).max_batch() == 32
    assert NodeConfig().capture() is None
    capture = NodeConfig.from_values({"capture_dir": str(tmp_path), "capture_below": 0.3})
    settings = capture.capture()
    assert settings is not None and (settings.directory, settings.capture_below) == (tmp_path, 0.3)
    smoothing = NodeConfig.from_values({"smoothing": "none", "switch_frames": 3})
    assert smoothing.smoothing_config().mode == "none"
    assert smoothing.smoothing_config().switch_frames == 3
