"""`experiment` trains and evaluates each (backbone, strategy) pair for real on a tiny dataset,
writes its table and chart, and skips finished pairs on re-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest

from tl_perception.cli import main
from tl_perception.demo.experiment import (
    RESULTS_MD,
    RESULTS_PNG,
    STATE_FILE,
    BackboneSpec,
    ExperimentOptions,
    results_markdown,
    run_experiment,
)
from tl_perception.errors import DatasetError, TrainingError

from support.helpers import color_image

CLASSES = ("red", "green", "blue")


def write_tree(root: Path, per_split: dict[str, int]) -> Path:
    """A split tree root/{train,val,test}/<colour>/*.png of 32x32 noisy colour images."""
    seed = 0
    for split, count in per_split.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                bgr = cv2.cvtColor(color_image(name, (32, 32), seed=seed), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(folder / f"{i}.png"), bgr)
    return root


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("exp") / "colors", {"train": 8, "val": 3, "test": 4})


@pytest.mark.slow
def test_experiment_writes_table_and_chart_then_skips_finished_pairs(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    args = [
        "experiment",
        str(tiny_dataset),
        "--backbones",
        "mobilenet_v2:0.35",
        "--strategies",
        "feature_extraction,truncate",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--input-size",
        "32",
        "--weights",
        "none",
    ]
    assert main(args) == 0
    table = (out / RESULTS_MD).read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| mobilenet_v2:0.35 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["feature_extraction", "truncate"]
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert 0.0 <= float(cells[2]) <= 1.0  # test accuracy
        assert float(cells[4]) > 0  # train seconds
        assert int(cells[5].replace(",", "")) > 0  # trainable parameters
        assert re.fullmatch(r"(feature_extraction|truncate|fine_tune|from_scratch)( ✓)?", cells[6])
    assert "## Why auto chose" in table
    assert "set by user" not in table  # the probe's reason, not a fixed strategy's
    assert (out / RESULTS_PNG).read_bytes().startswith(b"\x89PNG")
    state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    pairs = state["cells"]
    assert set(pairs) == {
        f"mobilenet_v2:0.35/{s}/seed0" for s in ("feature_extraction", "truncate")
    }
    assert all(p["test_images"] == 12 for p in pairs.values())
    # auto's pick is read off the cells: the best val accuracy, what its race ranks on
    best = max(pairs.values(), key=lambda p: p["val_accuracy"])  # ties: the grid's first
    assert state["auto"]["mobilenet_v2:0.35"]["strategy"] == best["strategy"]
    assert "what auto's race ranks on" in table
    bundles = {k: Path(p["bundle"]) for k, p in pairs.items()}
    mtimes = {k: (b / "bundle.json").stat().st_mtime_ns for k, b in bundles.items()}

    # Re-run with one more strategy: the finished pairs are skipped, only the new one trains.
    lines: list[str] = []
    options = ExperimentOptions(
        dataset=tiny_dataset,
        out=out,
        backbones=(BackboneSpec("mobilenet_v2", 0.35),),
        strategies=("feature_extraction", "truncate", "auto"),
        epochs=1,
        input_size=32,
        weights="none",
    )
    state = run_experiment(options, log=lines.append)
    assert "[1/3] mobilenet_v2:0.35/feature_extraction: done before, skipped" in lines
    assert "[2/3] mobilenet_v2:0.35/truncate: done before, skipped" in lines
    assert "[3/3] mobilenet_v2:0.35/auto: training" in lines
    assert {k: (b / "bundle.json").stat().st_mtime_ns for k, b in bundles.items()} == mtimes
    auto_row = state["cells"]["mobilenet_v2:0.35/auto/seed0"]
    assert auto_row["trained_strategy"] == auto_row["auto_choice"]
    assert "auto → " in (out / RESULTS_MD).read_text(encoding="utf-8")


def test_plain_tree_without_test_data_is_refused_before_training(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    for name in CLASSES:
        (plain / name).mkdir(parents=True)
        cv2.imwrite(str(plain / name / "a.png"), color_image(name, (8, 8)))
    options = ExperimentOptions(
        dataset=plain,
        out=tmp_path / "out",
        backbones=(BackboneSpec("mobilenet_v2"),),
        strategies=("feature_extraction",),
    )
    with pytest.raises(DatasetError, match=r"has no 'test' split.*pass --test DATASET2"):
        run_experiment(options)
    assert not (tmp_path / "out").exists()


def test_unknown_strategy_and_bad_backbone_alpha_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="alpha after ':' must be a number"):
        BackboneSpec.parse("mobilenet_v2:wide")
    options = ExperimentOptions(
        dataset=tmp_path,
        out=tmp_path / "out",
        backbones=(BackboneSpec("mobilenet_v2"),),
        strategies=("feature_extraction", "distill"),
    )
    with pytest.raises(TrainingError, match="unknown strategy 'distill'"):
        run_experiment(options)


def test_group_regex_reaches_every_pair_and_is_checked_before_training(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    args = ["experiment", str(tiny_dataset), "--out", str(out), "--group-regex", "no_group"]
    assert main([*args, "--weights", "none"]) == 2
    assert "group_regex 'no_group' has no group" in capsys.readouterr().err
    assert not (out / "bundles").exists()
    options = ExperimentOptions(
        dataset=tiny_dataset,
        out=out,
        backbones=(BackboneSpec("mobilenet_v2"),),
        strategies=("feature_extraction",),
        extra={"group_regex": r"^(\d+)"},
    )
    assert r"group_regex: `^(\d+)`" in results_markdown(options, [])
