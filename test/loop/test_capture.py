"""Hard-frame capture, `label` and `merge`: real PNG files, real threads, real bags, no mocks."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.bag.writer import write_bag
from tl_perception.cli import main
from tl_perception.crop import Box, CropPolicy, crop_roi
from tl_perception.dataset import (
    LOCK_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
    read_dataset,
    read_manifest,
)
from tl_perception.errors import CaptureError, DatasetError
from tl_perception.images import read_image_file
from tl_perception.loop.capture import CaptureConfig, CaptureContext, CaptureItem, HardFrameCapture

from support.bagutil import frames
from support.datasets import existing_dataset, write_csv
from support.finetune_helpers import tiny
from support.helpers import color_image
from support.strace import fsynced

CONTEXT = CaptureContext("/bundles/colors", "ab" * 32, ("blue", "green", "red"))
SEC = 1_000_000_000


class Clock:
    """A clock the test moves by hand: the rate limit is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def item(
    seed: int, camera: str = "front", t_s: float = 0.0, score: float = 0.3, **kw
) -> CaptureItem:
    rgb = kw.pop("rgb", None)
    if rgb is None:
        rgb = color_image(kw.pop("color", "red"), (24, 32), seed=seed)
    stamp_ns = 1_700_000_000 * SEC + round(t_s * SEC)
    return CaptureItem(
        rgb, camera, (stamp_ns // SEC, stamp_ns % SEC), kw.pop("predicted", "red"), score, **kw
    )


def capture(tmp_path: Path, **kw) -> HardFrameCapture:
    config = CaptureConfig(
        kw.pop("directory", tmp_path / "cap"),
        kw.pop("capture_below", 0.5),
        kw.pop("max_per_minute", 1000),
        kw.pop("max_total", 1000),
        kw.pop("queue_size", 64),
    )
    return HardFrameCapture(config, kw.pop("context", CONTEXT), **kw)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_FILE]


def test_capture_writes_png_rows_and_a_dataset_read_dataset_reads(tmp_path: Path) -> None:
    offered = [item(i, "front" if i % 2 else "rear/cam", t_s=i * 0.5) for i in range(6)]
    with capture(tmp_path) as cap:
        assert all(cap.offer(it) for it in offered)
        assert not cap.offer(item(9, score=0.5))  # at the threshold: not hard
    counts = cap.counts()
    assert counts["written"] == 6 and counts["below_threshold"] == 6 and counts["offered"] == 7
    assert counts["pending"] == 0 and counts["write_errors"] == 0
    root = tmp_path / "cap"
    assert not temp_files(root)
    index = read_dataset(root)
    assert index.class_names == ("unlabeled",) and len(index.samples) == 6
    rows = {r["stamp_ns"]: r for r in read_manifest(root)}
    for it in offered:
        row = rows[str(it.stamp_ns)]
        assert row["path"].startswith("train/unlabeled/") and row["label"] == ""
        assert row["camera"] == it.camera and row["predicted"] == "red"
        assert float(row["score"]) == pytest.approx(0.3) and row["model"] == "ab" * 6
        assert row["sha256"] == hashlib.sha256(it.rgb.tobytes()).hexdigest()
        assert (row["width"], row["height"]) == ("32", "24")
        assert np.array_equal(read_image_file(root / row["path"]), it.rgb)
    # 0.5 s apart per camera: one burst, one sequence per camera
    assert len({r["sequence"] for r in rows.values()}) == 2
    summary = json.loads((root / SUMMARY_FILE).read_text())
    assert summary["status"] == "complete" and summary["crop_policy"] is None
    assert summary["options"]["capture"]["models"]["ab" * 6]["class_names"] == list(
        CONTEXT.class_names
    )
    assert summary["sources"][0]["kind"] == "capture" and summary["sources"][0]["images"] == 6


def test_rate_limit_is_a_sliding_minute(tmp_path: Path) -> None:
    clock = Clock()
    with capture(tmp_path, max_per_minute=5, clock=clock) as cap:
        taken = [cap.offer(item(i)) for i in range(8)]  # t = 0 s
        clock.now += 30
        taken += [cap.offer(item(10 + i, t_s=30)) for i in range(3)]  # t = 30 s: window full
        clock.now += 30.001  # the first five left the window
        taken += [cap.offer(item(20 + i, t_s=60)) for i in range(8)]
    assert taken == [True] * 5 + [False] * 6 + [True] * 5 + [False] * 3
    counts = cap.counts()
    assert counts["written"] == 10 and counts["skipped_rate_limit"] == 9
    assert len(read_manifest(tmp_path / "cap")) == 10


def test_max_total_counts_what_is_already_there(tmp_path: Path) -> None:
    clock = Clock()
    with capture(tmp_path, max_total=4, clock=clock) as cap:
        assert sum(cap.offer(item(i, t_s=i)) for i in range(7)) == 4
    assert cap.counts()["skipped_total_limit"] == 3
    first_source = cap.source
    logs: list[str] = []
    with capture(tmp_path, max_total=4, log=logs.append) as again:  # resumed: already full
        assert not again.offer(item(50, t_s=50))
    assert again.counts()["existing"] == 4 and again.counts()["skipped_total_limit"] == 1
    assert "already holds 4 images" in logs[0]
    with capture(tmp_path, max_total=6) as more:
        assert sum(more.offer(item(60 + i, t_s=60 + i)) for i in range(5)) == 2
    rows = read_manifest(tmp_path / "cap")
    assert len(rows) == 6 and {r["bag"] for r in rows} == {first_source}
    assert more.source == first_source


def test_resume_removes_what_an_interrupted_write_left(tmp_path: Path) -> None:
    cap = capture(tmp_path)
    cap.close()
    folder = tmp_path / "cap" / "train" / "unlabeled"
    folder.mkdir(parents=True)
    orphan = folder / f"{cap.source}_front_1.png"  # renamed into place, row never written
    orphan.write_bytes(b"png")
    (folder / f".{cap.source}_front_2.png.abc.tmp").write_bytes(b"half")
    (folder / "someone_elses.png").write_bytes(b"png")
    with capture(tmp_path) as again:
        assert again.source == cap.source and again.offer(item(0))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [Path(r["path"]).name for r in read_manifest(tmp_path / "cap")] + ["someone_elses.png"]
    )


def test_offer_never_blocks_and_counts_overflow_while_the_writer_is_stalled(
    tmp_path: Path,
) -> None:
    cap = capture(tmp_path, queue_size=3, start=False)  # a writer that does not write (yet)
    slowest = 0.0
    results = []
    for i in range(50):
        started = time.perf_counter()
        results.append(cap.offer(item(i, t_s=i)))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.05 and results == [True] * 3 + [False] * 47
    assert cap.counts()["overflow"] == 47 and cap.counts()["pending"] == 3
    assert cap.close(timeout=10)
    assert cap.counts()["written"] == 3 and not cap.offer(item(99))
    assert len(read_manifest(tmp_path / "cap")) == 3 and not temp_files(tmp_path / "cap")


def test_offer_stays_fast_while_the_writer_encodes_big_frames(tmp_path: Path) -> None:
    big = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    durations = []
    with capture(tmp_path, queue_size=2) as cap:
        for i in range(40):
            started = time.perf_counter()
            cap.offer(item(i, t_s=i, rgb=big))
            durations.append(time.perf_counter() - started)
    counts = cap.counts()
    assert max(durations) < 0.05, max(durations)
    assert counts["overflow"] > 0 and counts["written"] + counts["overflow"] == 40


def test_disk_errors_are_counted_and_logged_once(tmp_path: Path) -> None:
    logs: list[str] = []
    cap = capture(tmp_path, log=logs.append)
    (tmp_path / "cap" / "train").write_text("a file where the split directory should be")
    assert all(cap.offer(item(i, t_s=i)) for i in range(4))
    assert cap.close(timeout=10)
    counts = cap.counts()
    assert counts["write_errors"] == 4 and counts["written"] == 0
    assert len(logs) == 1 and "further errors are only counted" in logs[0]
    assert "\n" not in logs[0]
    assert not temp_files(tmp_path / "cap")


def test_roi_crops_record_box_track_and_crop_policy(tmp_path: Path) -> None:
    policy = CropPolicy(context=0.1)
    context = CaptureContext("/bundles/signs", "cd" * 32, ("stop", "yield"), policy)
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = [Box.from_xywh(10, 20, 30, 30), Box.from_xywh(90, 40, 40, 36)]
    with capture(tmp_path, context=context) as cap:
        for t in range(3):
            for k, box in enumerate(boxes):
                rgb = crop_roi(frame, box, policy)
                assert cap.offer(item(0, t_s=t * 0.1, rgb=rgb, box=box, track=f"obj{k}"))
    rows = read_manifest(tmp_path / "cap")
    assert len(rows) == 6
    assert {r["sequence"].split(":id:", 1)[1].split(":")[0] for r in rows} == {"obj0", "obj1"}
    assert len({r["sequence"] for r in rows}) == 2  # 0.1 s apart: one run per track
    row = next(r for r in rows if r["track"] == "obj1")
    assert (float(row["box_x"]), float(row["box_y"]), float(row["box_w"])) == (90, 40, 40)
    index = read_dataset(tmp_path / "cap")
    assert index.crop_policy == policy
    with pytest.raises(CaptureError, match="holds crops cut with"):
        capture(tmp_path, context=CONTEXT)  # a whole-frame model cannot continue this capture


def open_when_free(tmp_path: Path, timeout: float = 10.0) -> HardFrameCapture:
    """A new capture of the same directory, once the previous writer has let it go."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return capture(tmp_path)
        except CaptureError as err:
            if "in use" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_writer_still_busy_at_close_never_keeps_the_directory(tmp_path: Path) -> None:
    """close() while the writer has a full queue to write: past the timeout it drops what is
    left (counted) and lets the directory go, so a later capture of this process opens it."""
    big = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    cap = capture(tmp_path, queue_size=4)
    assert cap.offer(item(0, rgb=big))  # seconds of PNG encoding for the writer
    deadline = time.monotonic() + 10
    while cap.counts()["pending"] and time.monotonic() < deadline:
        time.sleep(0.001)  # until the writer took it and is encoding it
    assert all(cap.offer(item(i, t_s=i)) for i in range(1, 5))  # the queue is full again
    assert not cap.close(timeout=0.0)  # the writer is far from done
    again = open_when_free(tmp_path)
    counts = cap.counts()
    assert counts["written"] + counts["abandoned"] == 5 and counts["pending"] == 0
    assert len(read_manifest(tmp_path / "cap")) == counts["written"] == again.counts()["existing"]
    assert again.offer(item(9, t_s=9.0))
    assert again.close(timeout=10) and again.counts()["written"] == 1
    assert not temp_files(tmp_path / "cap")


def test_the_node_capture_opens_again_after_a_writer_that_outlived_its_close(
    tmp_path: Path, color_bundle: Path
) -> None:
    """The node's capture (ros/hard_frames.py, ROS-free): a deactivate whose writer is still
    busy, then an activate in the same process, which must capture again, not fail "in use by
    another capture (pid <its own>)"."""
    import logging

    from tl_perception.bundle import read_bundle
    from tl_perception.ros.hard_frames import HardFrames

    bundle = read_bundle(color_bundle)
    config = CaptureConfig(tmp_path / "cap", 0.99, 1000, 1000)
    frames = HardFrames(config, False, logging.getLogger("capture"), close_timeout_s=0.0)
    frames.open(lambda: bundle)
    big = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    assert frames.offer(item(0, rgb=big, score=0.1), bundle)
    deadline = time.monotonic() + 10
    while frames.report().values["capture_pending"] != "0" and time.monotonic() < deadline:
        time.sleep(0.001)  # the writer took it and is encoding it
    assert all(frames.offer(item(i, t_s=i, score=0.1), bundle) for i in range(1, 5))
    frames.close()  # the deactivate: its writer is far from done
    frames.open(lambda: bundle)  # the next activate waits for it, then opens the directory
    values = frames.report().values
    assert values["capture"] == str(tmp_path / "cap"), values["capture"]
    frames.close()
    values = frames.report().values
    assert int(values["capture_written"]) + int(values["capture_abandoned"]) == 5


def test_crops_of_one_track_are_sequences_bounded_in_time(tmp_path: Path) -> None:
    """A fixed ROI (`roi0`) lives as long as the node: its crops must not all be one sequence
    (one split of a merge). A track is a run of crops no more than 5 s apart, also after a
    restart."""
    box = Box.from_xywh(0, 0, 10, 10)
    with capture(tmp_path) as cap:
        for t in (0.0, 1.0, 2.0, 30.0, 31.0, 100.0):
            assert cap.offer(item(int(t), t_s=t, box=box, track="roi0"))
        assert cap.offer(item(7, t_s=1.5, box=box, track="roi1"))
    with capture(tmp_path) as resumed:
        assert resumed.offer(item(8, t_s=102.0, box=box, track="roi0"))  # joins the last run
    rows = sorted(read_manifest(tmp_path / "cap"), key=lambda r: int(r["stamp_ns"]))
    runs = [r["sequence"] for r in rows if r["track"] == "roi0"]
    assert len(runs) == 7 and len(set(runs)) == 3
    assert runs[0] == runs[1] == runs[2] != runs[3] == runs[4] != runs[5] == runs[6]
    assert {r["sequence"] for r in rows if r["track"] == "roi1"}.isdisjoint(runs)


@pytest.mark.parametrize("damaged", [SUMMARY_FILE, MANIFEST_FILE])
def test_a_file_truncated_by_a_power_cut_is_a_one_line_capture_error(
    tmp_path: Path, damaged: str
) -> None:
    filled = filled_capture(tmp_path, 3)
    path = filled / damaged
    truncated = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(truncated)
    with pytest.raises(DatasetError, match=re.escape(damaged)) as err:
        capture(tmp_path)
    assert "\n" not in str(err.value)
    assert not (filled / LOCK_FILE).exists()  # the directory is not left locked
    assert path.read_bytes() == truncated  # nothing is "repaired" behind the user's back


def test_a_directory_it_may_not_list_is_a_one_line_capture_error(tmp_path: Path) -> None:
    """Write and search but no read permission: the lock can be taken, the listing that checks
    the directory is empty fails. That PermissionError must be a CaptureError naming it, not an
    OSError escaping (the node turns CaptureErrors into "capture off"). Run in a child without
    DAC override, as root would read the directory anyway."""
    import os
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    directory = tmp_path / "cap"
    directory.mkdir()
    directory.chmod(0o300)
    code = (
        "from pathlib import Path\n"
        "from tl_perception.errors import CaptureError\n"
        "from tl_perception.loop.capture import CaptureConfig, CaptureContext, HardFrameCapture\n"
        "try:\n"
        f"    HardFrameCapture(CaptureConfig(Path({str(directory)!r}), 0.5), "
        "CaptureContext('/b', 'ab' * 32, ('red',)))\n"
        "except CaptureError as err:\n"
        "    print('CaptureError:', err)\n"
    )
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        directory.chmod(0o755)
    assert done.returncode == 0, done.stderr[-1500:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("CaptureError: cannot use capture directory")
    assert "Permission denied" in lines[0]
    assert not (directory / LOCK_FILE).exists()  # released again


@pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (it shows the fsyncs)"
)
def test_capture_writes_survive_a_power_cut_fsync_of_images_rows_and_directories(
    tmp_path: Path,
) -> None:
    """Each image, manifest.csv and dataset.json are fsynced before and their directory after
    the rename, so a manifest never lists an image the disk does not hold."""
    code = (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from tl_perception.loop.capture import CaptureConfig, CaptureContext, CaptureItem, "
        "HardFrameCapture\n"
        "ctx = CaptureContext('/b', 'ab' * 32, ('red',))\n"
        "with HardFrameCapture(CaptureConfig(Path('cap'), 0.5), ctx) as cap:\n"
        "    cap.offer(CaptureItem(np.zeros((8, 8, 3), np.uint8), 'front', (1, 2), 'red', 0.1))\n"
    )
    paths = fsynced(code, tmp_path)
    root = str((tmp_path / "cap").resolve())
    png = r"train/unlabeled/\.cap-[0-9a-f]{8}_front_1000000002\.png"
    for name in (re.escape(SUMMARY_FILE), re.escape(MANIFEST_FILE), png):
        assert any(re.fullmatch(rf"{root}/(?:{name}|\.{name})\.[^/]*\.tmp", p) for p in paths), name
    assert {root, f"{root}/train", f"{root}/train/unlabeled"} <= set(paths)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"capture_below": 0.0}, "capture_below must be a score in"),
        ({"capture_below": 1.5}, "capture_below must be a score in"),
        ({"capture_below": float("nan")}, "capture_below must be a score in"),
        ({"max_per_minute": 0}, "max_per_minute must be an integer >= 1"),
        ({"max_total": True}, "max_total must be an integer >= 1"),
        ({"queue_size": 2.5}, "queue_size must be an integer >= 1"),
        ({"directory": ""}, "capture directory must be a path"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path: Path, values: dict, message: str) -> None:
    args = {"directory": tmp_path / "cap", "capture_below": 0.5, **values}
    with pytest.raises(CaptureError, match=message) as err:
        CaptureConfig(**args)
    assert "\n" not in str(err.value)


def test_directory_that_is_not_a_capture_or_is_in_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    with pytest.raises(CaptureError, match=r"not empty and holds no dataset\.json"):
        capture(tmp_path, directory=tmp_path / "notes")
    cap = capture(tmp_path)
    with pytest.raises(CaptureError, match="in use by another capture"):
        capture(tmp_path)
    assert main(["label", str(tmp_path / "cap"), "--from-folders"]) == 2
    cap.close()
    capture(tmp_path).close()  # free again once closed
    malformed = capture(tmp_path)
    assert not malformed.offer(item(0, rgb=np.zeros((4, 4), dtype=np.uint8)))
    assert not malformed.offer(item(1, score=float("nan")))
    malformed.close()
    assert malformed.counts()["invalid"] == 2


# --- label -------------------------------------------------------------------------------------


def filled_capture(tmp_path: Path, n: int = 6) -> Path:
    with capture(tmp_path) as cap:
        for i in range(n):
            assert cap.offer(item(i, t_s=i * 10.0))  # 10 s apart: n sequences
    return tmp_path / "cap"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_label_csv_moves_images_into_class_folders(tmp_path: Path) -> None:
    root = filled_capture(tmp_path)
    paths = sorted(r["path"] for r in read_manifest(root))
    names = [p.rsplit("/", 1)[-1] for p in paths]
    labels = write_csv(
        tmp_path / "labels.csv",
        [(paths[0], "stop"), (names[1], "stop"), (paths[2], "Yield!"), (paths[3], "")],
    )
    assert main(["label", str(root), "--csv", str(labels)]) == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in read_manifest(root)}
    assert rows[names[0]]["path"] == f"train/stop/{names[0]}" and rows[names[1]]["label"] == "stop"
    assert rows[names[2]]["class_dir"].startswith("Yield~") and rows[names[2]]["label"] == "Yield!"
    assert rows[names[3]]["class_dir"] == "unlabeled"
    index = read_dataset(root)
    assert Counter(s.class_name for s in index.samples) == {
        "stop": 2,
        "unlabeled": 3,
        rows[names[2]]["class_dir"]: 1,
    }
    # the same CSV again changes nothing; relabelling moves an image on
    before = snapshot(root)
    assert main(["label", str(root), "--csv", str(labels)]) == 0
    assert snapshot(root) == before
    write_csv(tmp_path / "fix.csv", [(names[1], "yield")])
    assert main(["label", str(root), "--csv", str(tmp_path / "fix.csv")]) == 0
    index = read_dataset(root)
    assert Counter(s.class_name for s in index.samples) == {
        "stop": 1,
        "yield": 1,
        "unlabeled": 3,
        rows[names[2]]["class_dir"]: 1,
    }


def test_interrupted_label_run_is_completed_by_running_it_again(tmp_path: Path) -> None:
    root = filled_capture(tmp_path, n=2)
    first = sorted(r["path"] for r in read_manifest(root))[0]
    (root / "train" / "stop").mkdir()
    name = first.rsplit("/", 1)[-1]
    (root / first).rename(root / "train" / "stop" / name)  # killed after the move
    labels = write_csv(tmp_path / "labels.csv", [(first, "stop")])
    assert main(["label", str(root), "--csv", str(labels)]) == 0
    row = next(r for r in read_manifest(root) if r["path"].endswith(name))
    assert (row["path"], row["label"]) == (f"train/stop/{name}", "stop")
    assert len(read_dataset(root).samples) == 2


def test_label_bad_csv_exits_2_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = filled_capture(tmp_path, n=3)
    first = read_manifest(root)[0]["path"]
    before = snapshot(root)
    cases = [
        (
            write_csv(tmp_path / "a.csv", [(first, "stop"), ("train/unlabeled/nope.png", "x")]),
            "is not an image of",
        ),
        (
            write_csv(tmp_path / "b.csv", [(first, "stop")], header="path,label,comment"),
            "unknown column(s) ['comment']",
        ),
        (
            write_csv(tmp_path / "c.csv", [(first, "stop"), (first, "yield")]),
            "already labelled on line 2",
        ),
        (write_csv(tmp_path / "d.csv", [(first, "stop,extra")]), "expected 2 fields"),
        (tmp_path / "missing.csv", "cannot read --csv"),
    ]
    for path, message in cases:
        assert main(["label", str(root), "--csv", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert snapshot(root) == before


def test_label_from_folders_picks_up_hand_moves_and_deletions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = filled_capture(tmp_path, n=4)
    paths = sorted(r["path"] for r in read_manifest(root))
    (root / "train" / "stop").mkdir()
    for rel in paths[:2]:
        (root / rel).rename(root / "train" / "stop" / rel.rsplit("/", 1)[-1])
    with pytest.raises(DatasetError, match="missing"):
        read_dataset(root)  # the manifest no longer matches until it is re-synced
    assert main(["label", str(root), "--from-folders"]) == 0
    index = read_dataset(root)
    assert Counter(s.class_name for s in index.samples) == {"stop": 2, "unlabeled": 2}
    assert {r["label"] for r in read_manifest(root)} == {"stop", ""}
    (root / paths[3]).unlink()  # a useless capture, deleted by hand
    capsys.readouterr()
    assert main(["label", str(root), "--from-folders"]) == 0
    assert "dropped 1 rows whose image was deleted" in capsys.readouterr().out
    assert len(read_manifest(root)) == 3
    (root / "train" / "Bad Name").mkdir()
    (root / paths[2]).rename(root / "train" / "Bad Name" / paths[2].rsplit("/", 1)[-1])
    assert main(["label", str(root), "--from-folders"]) == 2


# --- merge -------------------------------------------------------------------------------------


BURSTS = {  # burst -> (camera, colour, start s, frames); 0.5 s apart within a burst
    "front-a": ("front", "red", 0.0, 5),
    "front-b": ("front", "green", 30.0, 4),
    "rear-a": ("rear", "blue", 0.0, 4),
    "rear-b": ("rear", "red", 60.0, 3),
}


def labelled_capture(tmp_path: Path, copied: Path) -> tuple[Path, dict[str, str]]:
    """The bursts of `BURSTS`, one more frame in burst front-b whose pixels are those of the
    dataset image `copied`, and two frames never labelled; labelled with a CSV.

    Returns the capture and the burst of each labelled file name.
    """
    known = read_image_file(copied)
    burst_at: dict[tuple[str, int], str] = {}
    with capture(tmp_path) as cap:
        for burst, (camera, color, start, n) in BURSTS.items():
            for k in range(n):
                it = item(20_000 + len(burst_at), camera, start + k * 0.5, color=color)
                assert cap.offer(it)
                burst_at[(camera, it.stamp_ns)] = burst
        dup = item(0, "front", 31.25, rgb=known)
        assert cap.offer(dup)
        burst_at[("front", dup.stamp_ns)] = "front-b"
        for k in range(2):
            assert cap.offer(item(5000 + k, "rear", 90.0 + k, color="blue"))
    root = tmp_path / "cap"
    burst_of, entries = {}, []
    for row in read_manifest(root):
        burst = burst_at.get((row["camera"], int(row["stamp_ns"])))
        if burst is not None:
            burst_of[row["path"].rsplit("/", 1)[-1]] = burst
            entries.append((row["path"], BURSTS[burst][1]))
    labels = write_csv(tmp_path / "labels.csv", entries)
    assert main(["label", str(root), "--csv", str(labels)]) == 0
    return root, burst_of


def merged_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """extract -> capture -> label CSV -> merge, checked; returns the merged dataset."""
    dataset = existing_dataset(tmp_path)
    before = {r["path"]: r for r in read_manifest(dataset)}
    copied = next(r for r in before.values() if r["class_dir"] == "green")
    root, burst_of = labelled_capture(tmp_path, dataset / copied["path"])
    capsys.readouterr()
    assert main(["merge", str(root), "--into", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "duplicate_of_dataset" in out and "unlabeled" in out, out
    rows = read_manifest(dataset)
    assert all(before[r["path"]]["split"] == r["split"] for r in rows if r["path"] in before)
    added = [r for r in rows if r["path"] not in before]
    assert len(added) == 16, out  # 17 labelled captures, one a copy of a dataset image
    assert all(r["camera"] and r["predicted"] and r["score"] and r["model"] for r in added)
    splits_of_sequence: dict[str, set[str]] = {}
    for row in rows:
        splits_of_sequence.setdefault(row["sequence"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits_of_sequence.values())
    splits_of_burst: dict[str, set[str]] = {}
    for row in added:
        burst = burst_of[row["path"].rsplit("/", 1)[-1]]
        splits_of_burst.setdefault(burst, set()).add(row["split"])
    assert len(splits_of_burst) == 4 and all(len(s) == 1 for s in splits_of_burst.values())
    assert splits_of_burst["front-b"] == {copied["split"]}  # near its copy, never across splits
    summary = json.loads((dataset / SUMMARY_FILE).read_text())
    record = next(s for s in summary["sources"] if s.get("kind") == "capture")
    assert record["images"] == 16 and record["path"] == str(root.resolve())
    assert summary["last_run"]["skipped"] == {"duplicate_of_dataset": 1, "unlabeled": 2}
    manifest = (dataset / MANIFEST_FILE).read_text()
    assert main(["merge", str(root), "--into", str(dataset)]) == 0  # again: nothing to add
    assert (dataset / MANIFEST_FILE).read_text() == manifest
    # the node captures more of burst front-a; merged later, it joins that burst's split
    with capture(tmp_path) as cap:
        more = [item(30_000 + k, "front", 2.5 + k * 0.5, color="red") for k in range(2)]
        assert all(cap.offer(it) for it in more)
    stamps = {str(it.stamp_ns) for it in more}
    entries = [(r["path"], "red") for r in read_manifest(root) if r["stamp_ns"] in stamps]
    assert main(["label", str(root), "--csv", str(write_csv(tmp_path / "more.csv", entries))]) == 0
    capsys.readouterr()
    assert main(["merge", str(root), "--into", str(dataset)]) == 0
    assert "already_in_dataset" in capsys.readouterr().out
    late = [r for r in read_manifest(dataset) if r["stamp_ns"] in stamps]
    assert len(late) == 2 and {r["split"] for r in late} == splits_of_burst["front-a"]
    assert read_dataset(dataset).class_names == ("blue", "green", "red")
    return dataset


def test_round_trip_capture_label_merge_keeps_bursts_in_one_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    merged_round_trip(tmp_path, capsys)


def test_round_trip_then_finetune_accepts_the_merged_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_perception.bundle import read_bundle
    from tl_perception.train.finetune import finetune

    dataset = merged_round_trip(tmp_path, capsys)
    result = finetune(dataset, tmp_path / "bundle", tiny(tmp_path), log=lambda _: None, verbose=0)
    bundle = read_bundle(result.bundle_path)
    assert bundle.class_names == ("blue", "green", "red")
    assert (
        CaptureContext.from_bundle(bundle).bundle_sha256
        == hashlib.sha256(bundle.model_path.read_bytes()).hexdigest()
    )


def test_merge_refuses_another_crop_policy_and_unlabelled_captures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = existing_dataset(tmp_path)
    before = snapshot(dataset)
    crops = CaptureContext("/b", "ef" * 32, ("red",), CropPolicy())
    with capture(tmp_path, directory=tmp_path / "crops", context=crops) as cap:
        cap.offer(item(1))
    assert main(["merge", str(tmp_path / "crops"), "--into", str(dataset)]) == 2
    assert "one dataset has one crop policy" in capsys.readouterr().err
    unlabelled = filled_capture(tmp_path, n=2)
    assert main(["merge", str(unlabelled), "--into", str(dataset)]) == 2
    assert "has no labelled image (2 unlabeled)" in capsys.readouterr().err
    assert main(["merge", str(dataset), "--into", str(unlabelled)]) == 2
    assert "is a capture" in capsys.readouterr().err
    assert snapshot(dataset) == before


def test_label_also_labels_an_extract_unlabeled_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [color_image(c, (24, 32), seed=i) for i, c in enumerate(("red", "red", "blue"))]
    bag = write_bag(tmp_path / "unlabelled_drive", "mcap", frames("/cam", images))
    out = tmp_path / "frames"
    extract(ExtractOptions((bag,), "/cam", out, LabelSpec("none")))
    paths = sorted(r["path"] for r in read_manifest(out))
    labels = write_csv(tmp_path / "l.csv", [(paths[0], "red"), (paths[1], "red")])
    assert main(["label", str(out), "--csv", str(labels)]) == 0
    index = read_dataset(out)
    assert Counter(s.class_name for s in index.samples) == {"red": 2, "unlabeled": 1}
    assert "1 images are still unlabeled" in capsys.readouterr().out
    assert main(["merge", str(out), "--into", str(existing_dataset(tmp_path))]) == 2
    assert "is not a capture directory" in capsys.readouterr().err
