"""`extract`: bags -> a labelled, leakage-free dataset directory (see docs/extract.md).

The work is cut into units that an engine runs anywhere (`tl_perception.engine`: this process,
a local pool, or Ray), and the driver here only reduces their small results:

1. plan wave, one unit per bag (`units.plan_unit`): hash, validate, plan; a bag that cannot be
   read is recorded as failed and the others go on; if none can be read, its error is raised;
2. driver: bad input is refused (the same bag twice, a re-run with other options), every label
   gets a class directory and every sequence a split (`reduce.py`), each bag its share;
3. write wave, one unit per time window of a bag (`units.window_unit`), and per bag the unit
   that dedups, names and moves its images into the dataset (`finish.finish_bag`);
4. driver: the new manifest is the merge of the old one and every bag's sorted rows, streamed
   (`commit.py`), then dataset.json; the work directory is removed.

Outcomes are consumed in completion order but reduced in an order fixed by the bags' names,
so the dataset does not depend on the engine, the worker count or timing. Every unit writes a
marker last (`workdir.py`), so a run that was interrupted (Ctrl-C, a killed driver) is resumed
by the same command. Nothing in the dataset changes before step 3; a failure while writing
(a full disk) removes what this run wrote, so the dataset is as it was.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tl_perception.bag.commit import merged_rows, remove_placed, rows_files, write_old_paths
from tl_perception.bag.existing import (
    Existing,
    check_distinct,
    check_rerun,
    read_existing,
)
from tl_perception.bag.finish import Assignment, BagResult
from tl_perception.bag.frames import init_worker
from tl_perception.bag.options import UNIT_BYTES, ExtractOptions, check_options
from tl_perception.bag.outdir import (
    class_dirs_on_disk,
    first_missing,
    remove_new_empty_dirs,
    remove_stale_temps,
    remove_trash,
    undo_setup,
)
from tl_perception.bag.progress import Progress
from tl_perception.bag.reduce import assignment_of, reduce_plans, unpaired_csv_rows
from tl_perception.bag.report import ExtractReport, RunTimings, nothing_kept
from tl_perception.bag.sortedrows import Spill, read_rows
from tl_perception.bag.units import (
    FinishTask,
    PlanResult,
    PlanTask,
    Shared,
    WindowTask,
    finish_unit,
    plan_unit,
    window_done,
    window_unit,
)
from tl_perception.bag.workdir import (
    WorkDir,
    bag_key,
    digest,
    fingerprint,
    read_marker,
    remove_tree,
)
from tl_perception.dataset import (
    SUMMARY_FILE,
    SummaryFields,
    begin_summary,
    write_sorted_manifest,
    write_summary,
)
from tl_perception.engine import Engine, Job, open_engine
from tl_perception.errors import BagError, DatasetError, TlPerceptionError

__all__ = ["UNIT_BYTES", "ExtractOptions", "ExtractReport", "RunTimings", "extract"]


def extract(options: ExtractOptions, progress: bool = False) -> ExtractReport:
    """Run an extraction.

    Raises:
        BagError, DatasetError: bad input, found before anything is written (every bag failed,
            the same bag twice, a re-run with other options...); or a failure while writing
            (then this run's images are removed again), or no image kept at all.
        EngineError: the engine cannot start (Ray missing, a cluster that does not answer).
    """
    started, cpu = time.monotonic(), time.process_time()
    check_options(options)
    _check_paths(options)
    # Units run in other processes (other machines, other working directories): absolute paths.
    options = replace(
        options, out=options.out.absolute(), bags=tuple(map(Path.absolute, options.bags))
    )
    existing = read_existing(options.out)
    with open_engine(options.engine_spec()) as engine:
        report = _Run(options, existing, engine, progress).run()
    report.seconds = time.monotonic() - started
    report.timings.driver_cpu = time.process_time() - cpu
    return report


def _check_paths(options: ExtractOptions) -> None:
    """One path given twice would plan one bag twice (a copy is found by content later)."""
    seen: dict[Path, Path] = {}
    for path in options.bags:
        first = seen.setdefault(path.resolve(), path)
        if first is not path:
            raise DatasetError(
                f"bags {str(first)!r} and {str(path)!r} have identical content; give each bag once"
            )


class _Run:
    """One extraction run on one engine."""

    def __init__(
        self, options: ExtractOptions, existing: Existing, engine: Engine, progress: bool
    ) -> None:
        self.options = options
        self.existing = existing
        self.engine = engine
        self.progress = progress
        self.work = WorkDir.of(options.out)
        self.shared = Shared(options, self.work)
        self.content = options.content_hash()
        self.report = ExtractReport(options.out)
        self.timings = self.report.timings
        self._failed_keys: set[str] = set()  # bags a window of which failed

    def run(self) -> ExtractReport:
        out = self.options.out
        created = first_missing(out)
        had_work = self.work.root.exists()
        out.mkdir(parents=True, exist_ok=True)
        remove_trash(out)
        self.work.make()
        with self.work.locked():
            try:
                with self.timings.step("plan"):
                    plans = self._plan_all()
                self._check(plans)
            except TlPerceptionError:
                undo_setup(self.work, created, had_work)
                raise
            self._write(plans, created)
            remove_tree(self.work.root)
        return self.report

    def _write(self, plans: list[PlanResult], created: Path | None) -> None:
        """Steps 2 (after the checks) to 4; on a failure the dataset is rolled back."""
        out = self.options.out
        dirs_before = class_dirs_on_disk(out)
        if self.existing.summary is None:
            begin_summary(out)
        try:
            with self.timings.step("reduce"):
                reduction = reduce_plans(self.options, plans, self.existing)
                keys = {p.source.name: p.key for p in plans}
                old = write_old_paths(self.existing, self.work, keys)
                assignments = {
                    p.key: assignment_of(reduction, p, old.get(p.key), self.content) for p in plans
                }
                remove_stale_temps(out)
                self._remove_leftovers(assignments)
            with self.timings.step("write"):
                results = self._write_all(plans, assignments)
            with self.timings.step("commit"):
                self._commit(plans, results)
        except (TlPerceptionError, OSError) as err:
            self._roll_back(created, dirs_before)
            if isinstance(err, OSError):
                raise DatasetError(f"cannot write the dataset {str(out)!r}: {err}") from err
            raise

    # -- plan wave ------------------------------------------------------------------------

    def _plan_all(self) -> list[PlanResult]:
        """Every bag planned (or found planned by an interrupted run); failures recorded."""
        plans: dict[str, PlanResult] = {}
        tasks = []
        for path in self.options.bags:
            key = bag_key(path)
            unit_digest = digest("plan", self.content, _fingerprint(path))
            cached = read_marker(self.work.plan(key), unit_digest)
            if cached is not None and self.work.plan(key).is_file():
                plans[key] = PlanResult.from_json(cached)
            else:
                tasks.append(PlanTask(key, path, unit_digest))
        bar = Progress(len(self.options.bags), self.progress, "plan")
        bar.resumed(len(plans))
        job = Job(plan_unit, self.shared, failures=(BagError,))
        try:
            for outcome in self.engine.map_unordered(job, tasks):
                self.timings.unit("plan", outcome)
                if outcome.value is not None:
                    plans[outcome.item.key] = outcome.value
                    bar.update()
                else:
                    self._failed(outcome.item.path, outcome.failure)
                    bar.update(failed=1)
        finally:
            bar.close()
        return sorted(plans.values(), key=lambda p: p.source.name)

    def _failed(self, path: Path, reason: str | None) -> None:
        self.report.failed.append((str(path.resolve()), reason or "failed"))

    def _check(self, plans: list[PlanResult]) -> None:
        """Refusals that need every bag's name, before anything is written to the dataset."""
        if not plans:
            raise BagError(self._none_readable())
        sources = [p.source for p in plans]
        check_distinct(sources)
        check_rerun(self.options, self.existing, sources)

    def _none_readable(self) -> str:
        order = {str(p.resolve()): i for i, p in enumerate(self.options.bags)}
        failed = sorted(self.report.failed, key=lambda f: order.get(f[0], 0))
        reason = failed[0][1]
        if len(failed) == 1:
            return reason
        return f"{reason} (and {len(failed) - 1} more of the {len(failed)} bags failed)"

    # -- write wave -----------------------------------------------------------------------

    def _remove_leftovers(self, assignments: dict[str, Assignment]) -> None:
        """An interrupted run's bags that are not finished for this run's inputs (or whose
        images were deleted since): their images leave the dataset, and they are redone."""
        stale = []
        for rows_file in sorted((self.work.root / "rows").glob("*.csv")):
            assignment = assignments.get(rows_file.stem)
            done = assignment is not None and read_marker(rows_file, assignment.digest)
            if not done or not _all_present(self.options.out, rows_file):
                stale.append(rows_file)
        remove_placed(self.existing, self.work, stale)
        for rows_file in stale:
            rows_file.unlink()
            rows_file.with_name(f"{rows_file.stem}.done.json").unlink(missing_ok=True)
            # Its windows' temp files may have been moved (and just removed): decode again.
            shutil.rmtree(self.work.stage(rows_file.stem), ignore_errors=True)

    def _write_all(
        self, plans: list[PlanResult], assignments: dict[str, Assignment]
    ) -> dict[str, BagResult]:
        """Every bag decoded and finished (or found finished); failures recorded."""
        results: dict[str, BagResult] = {}
        windows: list[WindowTask] = []
        finishes: dict[str, FinishTask] = {}
        for plan in plans:
            assignment = assignments[plan.key]
            cached = read_marker(self.work.rows(plan.key), assignment.digest)
            if cached is not None:
                results[plan.key] = BagResult.from_json(cached)
            elif len(plan.windows) == 1:
                windows.append(WindowTask(plan, 0, "", finish=assignment))
            else:
                windows.extend(self._window_tasks(plan))
                finishes[plan.key] = FinishTask(plan, assignment)
        bar = Progress(
            len(windows) + len(finishes) + len(results),
            self.progress,
            "write",
            frames_total=sum(p.frames for p in plans),
        )
        bar.resumed(len(results), sum(p.frames for p in plans if p.key in results))
        try:
            self._run_windows(windows, results, bar)
            self._run_finishes(finishes, results, bar)
        finally:
            bar.close()
        return results

    def _window_tasks(self, plan: PlanResult) -> list[WindowTask]:
        """The windows of a bag of several that are not decoded yet."""
        tasks = []
        for index, window in enumerate(plan.windows):
            unit_digest = digest("window", self.content, plan.source.sha256, index, asdict(window))
            if not window_done(self.work, plan.key, index, unit_digest):
                tasks.append(WindowTask(plan, index, unit_digest))
        return tasks

    def _run_windows(
        self, tasks: list[WindowTask], results: dict[str, BagResult], bar: Progress
    ) -> None:
        job = Job(window_unit, self.shared, failures=(BagError,), init=init_worker)
        for outcome in self.engine.map_unordered(job, tasks):
            self.timings.unit("write", outcome)
            plan = outcome.item.plan
            done = outcome.value
            if done is None:
                if plan.key not in self._failed_keys:
                    self._failed_keys.add(plan.key)
                    self._failed(plan.path, outcome.failure)
                bar.update(failed=1)
                continue
            if done.bag is not None:
                results[plan.key] = done.bag
            bar.update(frames=done.frames)

    def _run_finishes(
        self, finishes: dict[str, FinishTask], results: dict[str, BagResult], bar: Progress
    ) -> None:
        tasks = [t for key, t in sorted(finishes.items()) if key not in self._failed_keys]
        bar.update(units=len(finishes) - len(tasks))
        job = Job(finish_unit, self.shared, failures=(BagError,))
        for outcome in self.engine.map_unordered(job, tasks):
            self.timings.unit("finish", outcome)
            if outcome.value is None:
                self._failed(outcome.item.plan.path, outcome.failure)
                bar.update(failed=1)
                continue
            results[outcome.item.plan.key] = outcome.value
            bar.update()

    # -- commit ---------------------------------------------------------------------------

    def _commit(self, plans: list[PlanResult], results: dict[str, BagResult]) -> None:
        """The new manifest (old rows merged with every finished bag's), then dataset.json."""
        done = [p for p in plans if p.key in results]
        self._count(done, results)
        lost = rows_files(self.work, {p.key for p in plans} - set(results))
        remove_placed(self.existing, self.work, lost)  # bags that failed while being finished
        out = self.options.out
        spill = Spill(self.work.spill)
        rows = merged_rows(self.existing, rows_files(self.work, results), spill)
        manifest = write_sorted_manifest(out, rows, replace_empty=False)
        if manifest.total == 0:  # an empty dataset is of no use: say why
            raise DatasetError(nothing_kept(self.options, [p.path for p in plans], self.report))
        summary = self.existing.summary or {}
        records = {s["name"]: s for s in summary.get("sources", [])}
        records.update({p.source.name: p.source.record() for p in done})
        fields = SummaryFields(
            sources=records.values(),
            options=summary.get("options") or self.options.record(),
            last_run=self.report.last_run(self.options),
            crop_policy=self.options.policy_record(),
        )
        write_summary(out, manifest, fields)

    def _count(self, done: list[PlanResult], results: dict[str, BagResult]) -> None:
        report = self.report
        for plan in done:
            result = results[plan.key]
            report.skipped.update(plan.skipped)
            report.skipped.update(result.skipped)
            report.boxes_skipped.update(plan.boxes_skipped)
            report.boxes_skipped.update(result.boxes_skipped)
            report.messages.update(plan.messages)
            for class_dir, split, n in result.kept:
                report.kept[(class_dir, split)] += n
        for what, n in unpaired_csv_rows(self.options, done).items():
            report.messages[what] += n
        report.failed.sort()

    def _roll_back(self, created: Path | None, dirs_before: set[Path]) -> None:
        """Undo a failed write wave: the dataset is as it was before (or absent, if new)."""
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
            return
        out = self.options.out
        remove_placed(self.existing, self.work, sorted((self.work.root / "rows").glob("*.csv")))
        remove_new_empty_dirs(out, dirs_before)
        remove_tree(self.work.root)
        if self.existing.summary is None:  # `out` existed but was empty
            (out / SUMMARY_FILE).unlink(missing_ok=True)


def _fingerprint(path: Path) -> list[Any] | None:
    try:
        return fingerprint(path)
    except OSError:
        return None  # the plan unit says what is wrong with it


def _all_present(out: Path, rows_file: Path) -> bool:
    """Whether every image a finished bag's rows list is still on disk."""
    return all((out / row[0]).is_file() for row in read_rows(rows_file))
