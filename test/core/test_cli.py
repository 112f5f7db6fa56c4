"""The umbrella CLI lists every room's command and `--help` stays instant (no heavy imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tl_perception.cli import main

COMMANDS = ("extract", "inspect", "finetune", "evaluate", "export", "play", "synth", "demo")


def test_help_lists_every_command_without_importing_heavy_libraries() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from tl_perception.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'rclpy', 'cv2') if m in sys.modules]\n"
        "print(heavy)\n"
        "print(out.getvalue())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    first, _, rest = result.stdout.partition("\n")
    assert first == "[]", f"--help imported {first}"
    for command in (*COMMANDS, "experiment"):
        assert command in rest


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: tl-perception" in capsys.readouterr().err


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "no_bundle"), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tl-perception evaluate: error:")


def test_choices_defined_in_heavy_modules_are_still_checked_at_parse_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """export's --quantize and evaluate's --backend come from inference/ (which imports OpenCV),
    read only when the option is given."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "bundle", "--quantize", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4' (choose from float16, int8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "bundle", "data", "--backend", "tpu"])
    assert "(choose from auto, litert, keras)" in capsys.readouterr().err
