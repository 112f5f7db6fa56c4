"""`experiment`: fine-tune and evaluate every cell (backbone x strategy x seed) on one dataset.

This reproduces the seed's comparison (VGG / GoogLeNet / ResNet with feature extraction) on the
user's own data, for all four strategies and any number of seeds. Each cell is one unit of work
(`cells.run_cell`) that an engine runs: in this process (`--workers 1`), in a local pool, or as
a Ray task asking for `--cpus-per-cell`/`--gpus-per-cell`. Cells share one feature cache on the
shared path (its shards are written atomically, so concurrent cells may fill it), so the frozen
backbone runs over each image about once per backbone. Each finished or failed cell is recorded
in `experiment.json` as its outcome arrives, so an interrupted run resumes where it stopped and
a re-run skips finished cells (as long as the options that shape a result are unchanged) and
retries failed ones. The table is reduced on the driver in grid order, never completion order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tl_perception.backbones import BackboneSpec
from tl_perception.dataset import read_dataset
from tl_perception.demo.cells import BUNDLES_DIR, TIMING_FIELDS, failed_row, run_cell
from tl_perception.demo.grid import CACHE_DIR, Cell, ExperimentOptions
from tl_perception.demo.table import RESULTS_PNG, auto_choices, plot_results, results_markdown
from tl_perception.engine import Job, open_engine
from tl_perception.errors import DatasetError, TlPerceptionError, TrainingError
from tl_perception.fsutil import atomic_write_json, atomic_write_text
from tl_perception.train.config import STRATEGY_CHOICES

__all__ = [
    "BUNDLES_DIR",
    "CACHE_DIR",
    "RESULTS_MD",
    "RESULTS_PNG",
    "STATE_FILE",
    "TIMING_FIELDS",
    "BackboneSpec",
    "Cell",
    "ExperimentOptions",
    "auto_choices",
    "failed_cells",
    "plot_results",
    "results_markdown",
    "run_experiment",
]

STATE_FILE = "experiment.json"
RESULTS_MD = "results.md"
STATE_VERSION = 2

Log = Callable[[str], None]


def run_experiment(options: ExperimentOptions, log: Log = print) -> dict[str, Any]:
    """Run every cell not finished before, then write results.md and results.png; the state.

    A cell that fails is recorded with its reason (see `failed_cells`) and the others go on.

    Raises:
        TlPerceptionError: options no cell can run with, or an engine that cannot start (one
            line, before any cell runs).
    """
    cells = options.cells()
    _check_options(options, cells)
    options.out.mkdir(parents=True, exist_ok=True)
    state_path = options.out / STATE_FILE
    state = _load_state(state_path)
    todo = _cells_to_run(options, cells, state, log)
    if todo:
        _run_cells(options, todo, state, log)
    if "auto" not in options.strategies:
        for backbone in options.backbones:
            _record_race_choice(options, backbone, state)
    atomic_write_json(state_path, state)  # key-sorted: the same whatever order cells ended in
    rows = _table_rows(state, cells)
    atomic_write_text(options.out / RESULTS_MD, results_markdown(options, rows))
    plot_results(rows, options.out / RESULTS_PNG)
    log(f"wrote {options.out / RESULTS_MD} and {options.out / RESULTS_PNG}")
    return state


def failed_cells(options: ExperimentOptions, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of this grid's cells that failed, in grid order."""
    rows = (state["cells"].get(cell.key, {}) for cell in options.cells())
    return [row for row in rows if row.get("failed")]


def _check_options(options: ExperimentOptions, cells: Sequence[Cell]) -> None:
    """Refuse, before anything runs, what would fail every cell the same way."""
    for strategy in options.strategies:
        if strategy not in STRATEGY_CHOICES:
            raise TrainingError(
                f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGY_CHOICES)}"
            )
    if not options.seeds or len(set(options.seeds)) != len(options.seeds):
        raise TrainingError(f"seeds {list(options.seeds)}: give at least one, each once")
    if options.resources.num_cpus <= 0 or options.resources.num_gpus < 0:
        raise TrainingError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
    for cell in cells:
        options.config(cell)
    _check_test_data(options)


def _check_test_data(options: ExperimentOptions) -> None:
    if options.test_dataset is not None:
        read_dataset(options.test_dataset)
        return
    splits = read_dataset(options.dataset).splits()
    if options.test_split not in splits:
        raise DatasetError(
            f"dataset {str(options.dataset)!r} has no {options.test_split!r} split "
            f"({', '.join(splits) or 'it is a plain class-per-folder tree'}); pass --test "
            "DATASET2 with held-out images, or extract with --split"
        )


def _load_state(path: Path) -> dict[str, Any]:
    """experiment.json, or a fresh state; a version 1 file (pairs of one seed) is carried over,
    so its finished pairs are not trained again."""
    state: Any = None
    if path.is_file():
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            state = None
    fresh = {"format": "tl_perception.experiment", "version": STATE_VERSION, "cells": {}}
    if not isinstance(state, dict):
        return fresh
    if isinstance(state.get("cells"), dict):
        return state
    if isinstance(state.get("pairs"), dict):
        return fresh | {"auto": state.get("auto", {}), "cells": _cells_of_v1(state["pairs"])}
    return fresh


def _cells_of_v1(pairs: dict[str, Any]) -> dict[str, Any]:
    cells = {}
    for key, row in pairs.items():
        seed = row.get("settings", {}).get("seed", 0)
        cells[f"{key}/seed{seed}"] = row | {"seed": seed}
    return cells


def _is_finished(options: ExperimentOptions, cell: Cell, row: dict[str, Any] | None) -> bool:
    if not row or row.get("failed") or row.get("settings") != options.settings(cell):
        return False
    return Path(row.get("bundle", "")).is_dir()


def _cells_to_run(
    options: ExperimentOptions, cells: Sequence[Cell], state: dict[str, Any], log: Log
) -> list[tuple[int, Cell]]:
    """(grid number, cell) of every cell not finished with these settings; logs the others."""
    one_seed = len(options.seeds) == 1
    todo = []
    for number, cell in enumerate(cells, start=1):
        if _is_finished(options, cell, state["cells"].get(cell.key)):
            log(f"[{number}/{len(cells)}] {cell.label(one_seed)}: done before, skipped")
        else:
            todo.append((number, cell))
    return todo


def _run_cells(
    options: ExperimentOptions, todo: list[tuple[int, Cell]], state: dict[str, Any], log: Log
) -> None:
    """Run `todo` on the options' engine; record each outcome in the state file on arrival."""
    total = len(options.cells())
    one_seed = len(options.seeds) == 1
    numbers = {cell: number for number, cell in todo}
    state_path = options.out / STATE_FILE
    job = Job(run_cell, options, resources=options.resources, failures=(TlPerceptionError,))
    with open_engine(options.engine) as engine:
        log(
            f"{len(todo)} of {total} cells to run, {engine.workers} at once ({options.engine.kind})"
        )
        for outcome in engine.map_unordered(job, _announced(todo, total, one_seed, log)):
            cell = outcome.item
            row = outcome.value if outcome.ok else failed_row(cell, outcome.failure or "")
            assert row is not None
            state["cells"][cell.key] = row | {"settings": options.settings(cell)}
            atomic_write_json(state_path, state)
            log(f"[{numbers[cell]}/{total}] {cell.label(one_seed)}: {_summary(row)}")


def _announced(
    todo: list[tuple[int, Cell]], total: int, one_seed: bool, log: Log
) -> Iterator[Cell]:
    """The cells, each logged as the engine takes it."""
    for number, cell in todo:
        log(f"[{number}/{total}] {cell.label(one_seed)}: training")
        yield cell


def _summary(row: dict[str, Any]) -> str:
    if row.get("failed"):
        return f"failed: {row['failed']}"
    return f"test accuracy {row['test_accuracy']:.3f}, train {row['train_seconds']:.1f} s"


def _table_rows(state: dict[str, Any], cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """The grid's rows in grid order, each finished one with what auto would choose for its
    backbone (from auto's probe, when the grid trains no `auto` cell)."""
    rows = []
    for cell in cells:
        row = dict(state["cells"][cell.key])
        known = state.get("auto", {}).get(row["backbone"], {})
        if not row.get("failed") and not row.get("auto_choice") and known.get("strategy"):
            row["auto_choice"], row["auto_reason"] = known["strategy"], known.get("reason")
        rows.append(row)
    return rows


def _record_race_choice(
    options: ExperimentOptions, backbone: BackboneSpec, state: dict[str, Any]
) -> None:
    """What `--strategy auto` would pick for `backbone`, read off the trained cells.

    auto races the strategies on the val split and keeps the best val accuracy; the grid has
    already trained each strategy to its end on that same split (first seed), so the cell
    with the best val accuracy is auto's pick, without training anything again. (The race
    stops losers early and prunes from_scratch on small data, which can only cost a loser.)
    """
    rows = [
        state["cells"][cell.key]
        for cell in options.cells()
        if cell.backbone == backbone and cell.seed == options.seeds[0]
    ]
    scored = [r for r in rows if not r.get("failed") and r.get("val_accuracy") is not None]
    if not scored:
        return
    order = {name: i for i, name in enumerate(STRATEGY_CHOICES)}
    best = min(scored, key=lambda r: (-r["val_accuracy"], order.get(r["strategy"], 99)))
    others = ", ".join(f"{r['strategy']} {r['val_accuracy']:.4f}" for r in scored if r is not best)
    state.setdefault("auto", {})[backbone.label] = {
        "strategy": best["strategy"],
        "reason": (
            f"best val accuracy {best['val_accuracy']:.4f} of the trained cells, what auto's "
            f"race ranks on" + (f" ({others})" if others else "")
        ),
    }
