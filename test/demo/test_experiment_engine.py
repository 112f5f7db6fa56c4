"""`experiment` on an engine: a tiny grid of real cells (a width-0.25 MobileNet at 32 px with
random weights, heads on cached features) run in this process and as Ray tasks on the session's
shared Ray gives the same table; failed cells are recorded, finished ones skipped on a re-run;
resources reach Ray; concurrent feature-cache writers do not corrupt the cache."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tl_perception.cli import main
from tl_perception.demo.experiment import (
    RESULTS_MD,
    STATE_FILE,
    TIMING_FIELDS,
    BackboneSpec,
    ExperimentOptions,
    failed_cells,
    run_experiment,
)
from tl_perception.demo.table import results_markdown
from tl_perception.engine import EngineSpec, Job, Resources, open_engine
from tl_perception.train.cache import FeatureCache

from support.helpers import color_image
from support.rayutil import local_ray_session

#: One worker runs every module that starts a Ray (test/conftest.py).
pytestmark = pytest.mark.xdist_group("ray")

BACKBONE = "mobilenet:0.25"
#: inception_v3 takes 75 px and more: its cells fail inside the cell, the others go on.
TOO_SMALL = "input size 32 is not valid for inception_v3"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[set[int]]:
    """One local Ray of 2 CPUs for the session's Ray tests (see rayutil)."""
    yield from local_ray_session()


def write_tree(root: Path) -> Path:
    """root/{train,val,test}/<colour>/*.png: 6, 2 and 3 noisy 32x32 images per colour."""
    seed = 0
    for split, count in {"train": 6, "val": 2, "test": 3}.items():
        for name in ("red", "green", "blue"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                seed += 1
                rgb = color_image(name, (32, 32), seed=seed)
                cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def grid(dataset: Path, out: Path, engine: EngineSpec) -> ExperimentOptions:
    """2 backbones x 2 strategies x 2 seeds; the slow parts of a cell that the table does not
    need (val report, LiteRT export) are off."""
    return ExperimentOptions(
        dataset=dataset,
        out=out,
        backbones=(BackboneSpec.parse(BACKBONE), BackboneSpec("inception_v3")),
        strategies=("feature_extraction", "truncate"),
        epochs=4,
        input_size=32,
        weights="none",
        seeds=(0, 1),
        extra={"evaluate": False, "export_tflite": False, "learning_rate": 0.05},
        engine=engine,
    )


@dataclasses.dataclass
class Run:
    options: ExperimentOptions
    state: dict[str, Any]
    log: list[str]


@pytest.fixture(scope="module")
def runs(ray_local: set[int], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The grid in this process (--workers 1) and on Ray with 2 cells at once."""
    root = tmp_path_factory.mktemp("grid")
    dataset = write_tree(root / "colors")
    out: dict[str, Run] = {}
    for name, engine in (("local", EngineSpec("local", 1)), ("ray", EngineSpec("ray", 2))):
        options = grid(dataset, root / name, engine)
        log: list[str] = []
        out[name] = Run(options, run_experiment(options, log=log.append), log)
    return out


def comparable(run: Run) -> dict[str, Any]:
    """experiment.json without timing fields, its paths relative to the run's directory."""
    text = (run.options.out / STATE_FILE).read_text(encoding="utf-8")
    state = json.loads(text.replace(str(run.options.out), "OUT"))
    for row in state["cells"].values():
        for name in TIMING_FIELDS:
            row.pop(name, None)
    return state


def masked_table(run: Run) -> str:
    """results.md with the train-time column of the cell table blanked."""
    lines = []
    for line in (run.options.out / RESULTS_MD).read_text(encoding="utf-8").splitlines():
        cells = line.split("|")
        if len(cells) == 10 and not line.startswith("|---"):  # a row of the cell table
            cells[6] = " (time) "
        lines.append("|".join(cells))
    return "\n".join(lines)


def model_weights(bundle: Path) -> list[np.ndarray]:
    import keras

    return list(keras.models.load_model(bundle / "model.keras", compile=False).get_weights())


@pytest.mark.slow
def test_a_grid_on_ray_gives_the_local_table_with_failed_cells_recorded(runs):
    local, ray = comparable(runs["local"]), comparable(runs["ray"])
    assert set(local["cells"]) == {c.key for c in runs["local"].options.cells()}
    assert local == ray
    assert masked_table(runs["local"]) == masked_table(runs["ray"])
    failed = failed_cells(runs["ray"].options, runs["ray"].state)
    assert len(failed) == 4
    assert all(row["backbone"] == "inception_v3" and TOO_SMALL in row["failed"] for row in failed)
    table = (runs["ray"].options.out / RESULTS_MD).read_text(encoding="utf-8")
    assert f"- inception_v3 / truncate / seed 1: {TOO_SMALL}" in table
    assert re.search(rf"\| {BACKBONE} \| truncate \| 2 \| \d\.\d{{3}} ± \d\.\d{{3}} \|", table)
    # The figures are equal because the trained weights are, to the last bit.
    finished = [k for k, row in runs["ray"].state["cells"].items() if not row.get("failed")]
    assert len(finished) == 4
    for key in finished:
        pair = [model_weights(Path(runs[n].state["cells"][key]["bundle"])) for n in runs]
        assert all(np.array_equal(a, b) for a, b in zip(*pair, strict=True)), key


@pytest.mark.slow
def test_a_rerun_skips_finished_cells_and_retries_failed_ones(runs):
    run = runs["ray"]
    bundles = [Path(r["bundle"]) for r in run.state["cells"].values() if not r.get("failed")]
    mtimes = [(b / "model.keras").stat().st_mtime_ns for b in bundles]
    log: list[str] = []
    options = dataclasses.replace(run.options, engine=EngineSpec("local", 1))
    state = run_experiment(options, log=log.append)
    assert sum(line.endswith(": done before, skipped") for line in log) == 4
    trained = [line for line in log if line.endswith(": training")]
    assert len(trained) == 4 and all("inception_v3" in line for line in trained)
    assert not any(line.startswith(f"{BACKBONE}: probing") for line in log)  # kept too
    assert [(b / "model.keras").stat().st_mtime_ns for b in bundles] == mtimes
    assert len(failed_cells(options, state)) == 4


def assigned(_shared: None, _item: int) -> dict[str, float]:
    """A unit: the resources Ray gave the task running it."""
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def test_resources_reach_ray_and_too_much_is_refused_before_any_cell(ray_local, tmp_path, capsys):
    import ray

    module = sys.modules[__name__]  # Ray's workers cannot import a test module: send `assigned`
    ray.cloudpickle.register_pickle_by_value(module)
    try:
        with open_engine(EngineSpec("ray", 1)) as engine:
            job = Job(assigned, None, resources=Resources(num_cpus=2))
            assert [o.value for o in engine.map_unordered(job, [0])] == [{"CPU": 2.0}]
    finally:
        ray.cloudpickle.unregister_pickle_by_value(module)
    dataset = write_tree(tmp_path / "colors")
    out = tmp_path / "out"
    argv = ["experiment", str(dataset), "--out", str(out), "--weights", "none"]
    assert main([*argv, "--engine", "ray", "--cpus-per-cell", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "asks for 3 CPUs and 0 GPUs" in err and "the largest: 2 CPUs" in err
    assert len(err.splitlines()) == 1
    assert not (out / "bundles").exists()


def test_cli_seeds_engine_flags_and_the_exit_code_of_failed_cells(tmp_path, capsys):
    dataset = write_tree(tmp_path / "colors")
    argv = ["experiment", str(dataset), "--out", str(tmp_path / "out"), "--input-size", "32"]
    assert main([*argv, "--seed", "1", "--seeds", "0,1"]) == 2
    assert "give --seed or --seeds, not both" in capsys.readouterr().err
    assert main([*argv, "--ray-address", "localhost:1"]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err
    assert main([*argv, "--seeds", "0,0"]) == 2
    capsys.readouterr()
    # Every cell fails inside itself (inception_v3 needs 75 px): recorded, exit 1, not 2.
    grid_argv = ["--backbones", "inception_v3", "--strategies", "truncate", "--seeds", "3,4"]
    assert main([*argv, *grid_argv, "--weights", "none"]) == 1
    captured = capsys.readouterr()
    assert "2 of 2 cells failed" in captured.err
    assert f"inception_v3 / truncate / seed 4: {TOO_SMALL}" in captured.out


def test_several_seeds_show_mean_and_sd_per_pair(tmp_path):
    options = ExperimentOptions(
        dataset=tmp_path, out=tmp_path, backbones=(), strategies=(), seeds=(0, 1, 2)
    )
    rows = [
        {
            "backbone": "b",
            "strategy": "truncate",
            "seed": seed,
            "trained_strategy": "truncate",
            "test_accuracy": acc,
            "val_accuracy": None,
            "train_seconds": 1.0,
            "trainable_params": 10,
        }
        for seed, acc in ((0, 0.5), (1, 0.7))
    ]
    rows.append({"backbone": "b", "strategy": "truncate", "seed": 2, "failed": "out of memory"})
    table = results_markdown(options, rows)
    assert "| b | truncate | 2 (1 failed) | 0.600 ± 0.141 | 0.500 – 0.700 |" in table
    assert "| b | truncate | 2 | failed | n/a | n/a | n/a | n/a |" in table
    assert "- b / truncate / seed 2: out of memory" in table


def write_shards(root: str, worker: int) -> int:
    """A unit: write 20 shards of the same 40 keys (as concurrent cells do), then read every
    key back through a fresh cache; how many vectors it checked."""
    key = {"backbone": "test", "layer": "pool"}
    hashes = [f"{i:064x}" for i in range(40)]
    expected = np.arange(40 * 16, dtype=np.float32).reshape(40, 16)
    cache = FeatureCache(Path(root), key)
    for start in range(0, 40, 2):
        cache.save_many(hashes[start : start + 2], "v0", expected[start : start + 2])
        cache.save_many(hashes[start : start + 4], "v0", expected[start : start + 4])
    fresh = FeatureCache(Path(root), key)
    for digest, vector in zip(hashes, expected, strict=True):
        found = fresh.load(digest, "v0")
        assert found is not None and np.array_equal(found, vector), (worker, digest)
    return len(hashes)


def test_concurrent_cache_writers_leave_a_whole_cache(tmp_path):
    with open_engine(EngineSpec("local", 2)) as engine:
        outcomes = list(engine.map_unordered(Job(write_shards, str(tmp_path)), range(6)))
    assert [o.value for o in outcomes] == [40] * 6, [o.failure for o in outcomes]
    assert not list(tmp_path.rglob("*.tmp"))  # every temporary file was renamed into place
    assert write_shards(str(tmp_path), -1) == 40
