"""`classifier_node` as `ros2 run` starts it: a console script with --ros-args."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rclpy.qos import ReliabilityPolicy

from support import REPO
from support.helpers import color_image
from support.node_harness import (
    NODE_SCRIPT,
    probe,
    raw_image,
    start_node_process,
    stop_process,
)

PARAMS_FILE = REPO / "config" / "classify.yaml"
FASTDDS_PROFILE = REPO / "config" / "fastdds_large_frames.xml"


@pytest.fixture(scope="module", autouse=True)
def _console_script() -> None:
    if not NODE_SCRIPT.is_file():
        pytest.skip(f"{NODE_SCRIPT} not installed; run `make venv` (pip install -e .)")


@pytest.mark.slow
def test_console_script_with_params_file_classifies_and_stops_on_sigint(
    color_bundle: Path,
) -> None:
    proc = start_node_process(
        ["--params-file", str(PARAMS_FILE), "-p", f"model_path:={color_bundle}", "-p", "top_k:=2"]
    )
    try:
        with probe() as p:
            p.wait_for_subscriber(p.image_pub, timeout=30.0)
            result = p.publish_until_result(
                lambda s: raw_image(color_image("blue"), "bgr8", s), p.image_pub, 42, timeout=30.0
            )
        assert result["results"][0]["class_id"] == "blue"
        assert len(result["results"]) == 2
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out


def test_missing_bundle_at_start_up_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    proc = start_node_process(["-p", f"model_path:={tmp_path / 'missing'}"])
    out, _ = proc.communicate(timeout=60.0)
    assert proc.returncode == 2, out
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "missing" in errors[0] and "not a model bundle" in errors[0]
    assert "Traceback" not in out


def test_empty_model_path_says_how_to_pass_one() -> None:
    proc = start_node_process([])
    out, _ = proc.communicate(timeout=60.0)
    assert proc.returncode == 2
    assert "model_path:=" in out and "Traceback" not in out


def test_fastdds_profile_is_valid_xml_with_a_10_mb_shm_segment() -> None:
    root = ET.parse(FASTDDS_PROFILE).getroot()
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    shm = [
        d
        for d in root.iterfind(".//f:transport_descriptor", ns)
        if d.findtext("f:type", "", ns) == "SHM"
    ]
    assert len(shm) == 1
    assert int(shm[0].findtext("f:segment_size", "0", ns)) >= 10 * 1024 * 1024
    participant = root.find(".//f:participant", ns)
    assert participant is not None and participant.get("is_default_profile") == "true"


@pytest.mark.slow
def test_node_with_the_fastdds_profile_receives_a_vga_frame(
    color_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "RMW_FASTRTPS_USE_QOS_FROM_XML": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    proc = start_node_process(["-p", f"model_path:={color_bundle}", "-p", "qos:=sensor_data"], env)
    try:
        with probe(reliability=ReliabilityPolicy.BEST_EFFORT) as p:
            p.wait_for_subscriber(p.image_pub, timeout=30.0)
            result = p.publish_until_result(
                lambda s: raw_image(color_image("red", (480, 640)), "bgr8", s),
                p.image_pub,
                7,
                timeout=30.0,
            )
        assert result["results"][0]["class_id"] == "red"
    finally:
        out = stop_process(proc)
    assert "XMLPARSER" not in out and "Error" not in out, out


# ------------------------------------------------------------------ broken bundles at start-up
@pytest.fixture(scope="module")
def broken(color_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every bundle_breakers case, plus a Lambda bundle and a network taking absurd images."""
    from support.bundle_breakers import (
        broken_bundles,
        make_huge_input_bundle,
        make_lambda_bundle,
        make_other_shapes,
    )

    root = tmp_path_factory.mktemp("broken_at_start")
    made = broken_bundles(
        color_bundle, root / "cases", root / "foreign_code_ran", make_other_shapes(root / "o")
    )
    made["lambda_layer"], _marker = make_lambda_bundle(root / "lambda")
    made["absurd_network_input"] = make_huge_input_bundle(root / "huge")
    return made


def _one_error_line(out: str) -> str:
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert len(errors) == 1, out[-3000:]
    assert "cannot start" in errors[0] and "Traceback" not in out, out[-3000:]
    return errors[0]


@pytest.mark.parametrize("case", ["lambda_layer", "truncated_zip", "tflite_of_another_input_size"])
def test_console_script_refuses_a_broken_bundle_with_exit_2_and_one_line(
    broken: dict[str, Path], case: str
) -> None:
    marker = broken["lambda_layer"].parent / "lambda_ran"
    proc = start_node_process(["-p", f"model_path:={broken[case]}", "-p", "output_format:=json"])
    out, _ = proc.communicate(timeout=120.0)
    assert proc.returncode == 2, out[-3000:]
    assert str(broken[case]) in _one_error_line(out)
    assert not marker.exists(), "starting the node ran the Lambda's code"


def test_main_refuses_every_broken_bundle_with_exit_2_and_one_line(
    broken: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    """`main()` in this process, for every fuzz case (a process per case would take minutes)."""
    from tl_perception.ros.classifier_node import main

    marker = broken["lambda_layer"].parent / "lambda_ran"
    failures = {}
    for name, path in broken.items():
        code = main(["classifier_node", "--ros-args", "-p", f"model_path:={path}"])
        out = capfd.readouterr()
        text = out.out + out.err
        errors = [line for line in text.splitlines() if "ERROR" in line]
        if code != 2 or len(errors) != 1 or "Traceback" in text:
            failures[name] = (code, text[-600:])
    assert not failures, failures
    assert (
        not marker.exists()
        and not (broken["truncated_zip"].parent.parent / "foreign_code_ran").exists()
    )
