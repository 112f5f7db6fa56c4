"""Fuzz what `extract`, `finetune` and `read_dataset` read besides bags: label CSVs, manifests,
dataset.json and image files. Each is refused with one line and exit 2, or used consistently;
nothing is ever written half. Seeded and bounded in time; real files, the real CLI.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tl_perception.bag.writer import write_bag
from tl_perception.cli import main
from tl_perception.dataset import MANIFEST_FILE, SUMMARY_FILE, read_dataset, read_manifest
from tl_perception.errors import DatasetError
from tl_perception.images import rgb_to_compressed

from support.bagutil import frames, label, pattern

SEED = 11


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and any(n in err[0] for n in names), err[0]
    return err[0]


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames over 2 s, labels on /label."""
    msgs = frames("/cam", [pattern(i) for i in range(20)])
    msgs += [label("/label", 0.0, "red"), label("/label", 0.95, "green")]
    root = tmp_path_factory.mktemp("bag")
    return write_bag(root / "drive", "mcap", sorted(msgs, key=lambda m: m.t_ns))


@pytest.fixture(scope="module")
def dataset(bag: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset") / "ds"
    argv = ["extract", str(bag), "--topic", "/cam", "--label-topic", "/label", "--out", str(out)]
    assert main([*argv, "--split", "0.5,0.5,0", "--workers", "1"]) == 0
    return out


CSV_PIECES = [
    "start,end,label", "0,1,stop", "0.5,1.5,go", "1,0.5,back", "-1,1,neg", "0,1,", "0,1, ",
    "x,1,a", "0,y,a", "nan,1,a", "0,inf,far", "0,1e309,huge", "0,1", "0,1,a,extra", '0,1,"quoted',
    '0,1,"a, b"', "0,1,стоп", "0,1,../../x", "\ufeffstart,end,label", "", " ", "0;1;a", "0,1,a\x00",
]  # fmt: skip


def _random_csv(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    lines = [rng.choice(CSV_PIECES) for _ in range(rng.randint(0, 5))]
    text = rng.choice(["\n", "\r\n", "\r"]).join(lines)
    data = text.encode("utf-8")
    if rng.random() < 0.1:
        data = data.replace(b"a", b"\xff")  # not UTF-8
    return data


def test_label_csv_fuzz_exits_2_with_one_line_or_extracts(bag, tmp_path, capsys):
    rng = random.Random(SEED)
    deadline = time.monotonic() + 6.0
    codes = {0: 0, 2: 0}
    for case in range(400):
        if time.monotonic() > deadline and case >= 40:
            break
        table = tmp_path / f"labels{case}.csv"
        table.write_bytes(_random_csv(rng))
        out = tmp_path / f"out{case}"
        before = _snapshot(tmp_path)
        code = main(["extract", str(bag), "--topic", "/cam", "--label-csv", str(table),
                     "--out", str(out), "--workers", "1"])  # fmt: skip
        codes[code] += 1
        if code == 2:
            _one_error_line(capsys, table.name, bag.name)
            assert _snapshot(tmp_path) == before
        else:
            assert code == 0
            capsys.readouterr()
            rows = read_manifest(out)
            assert rows and all(r["label"].strip() for r in rows)
            assert len(read_dataset(out).samples) == len(rows)
            shutil.rmtree(out)
        table.unlink()
    assert codes[0] >= 5 and codes[2] >= 20, codes


MANIFEST_VALUES = [
    "", "..", "../x.png", "/etc/passwd", "train/../../x.png", "train/red/../../../x.png", "val",
    "bogus", "\x00", "a\\b.png", "train/red/.hidden.png", "train/red/x.txt", "x" * 300,
    "train/red", "train/red/missing.png", "test/red/x.png", '"', "стоп",
]  # fmt: skip


def _mutate_manifest(text: str, rng: random.Random) -> bytes:
    lines = text.splitlines()
    action = rng.randrange(8)
    if action == 0 and len(lines) > 1:  # a row twice
        lines.insert(rng.randrange(1, len(lines)), rng.choice(lines[1:]))
    elif action == 1:  # a field replaced
        i = rng.randrange(1, len(lines))
        fields = lines[i].split(",")
        fields[rng.randrange(len(fields))] = rng.choice(MANIFEST_VALUES)
        lines[i] = ",".join(fields)
    elif action == 2:  # a column dropped from the header
        header = lines[0].split(",")
        header.pop(rng.randrange(len(header)))
        lines[0] = ",".join(header)
    elif action == 3:  # fields missing or extra
        i = rng.randrange(1, len(lines))
        lines[i] = (
            lines[i].rsplit(",", rng.randint(1, 3))[0] if rng.random() < 0.5 else lines[i] + ",x"
        )
    elif action == 4:  # truncated
        data = "\n".join(lines).encode()
        return data[: rng.randrange(len(data))]
    elif action == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    elif action == 6:
        return "\n".join(lines).encode().replace(b"red", b"r\xffd", 1)
    else:
        return "\n".join(lines).replace(",", "\x00", 1).encode()
    return ("\n".join(lines) + "\n").encode()


SUMMARIES = [
    b"", b"{", b"[]", b"null", b'{"format": "tl_perception.dataset"}',
    b'{"format": "tl_perception.dataset", "version": 99, "status": "complete"}',
    b'{"format": "tl_perception.dataset", "version": "2", "status": "complete"}',
    b'{"format": "tl_perception.dataset", "version": true, "status": "complete"}',
    b'{"format": "tl_perception.dataset", "version": 2, "status": "incomplete"}',
    b'{"format": "something.else", "version": 2}', b"\xff\xfe",
]  # fmt: skip


def _check_read(root: Path) -> str:
    """read_dataset either refuses with one DatasetError line or lists only real files."""
    try:
        index = read_dataset(root)
    except DatasetError as err:
        assert str(err) and "\n" not in str(err), repr(err)
        return "refused"
    for sample in index.samples:
        assert sample.path.is_file() and sample.path.resolve().is_relative_to(root.resolve())
    return "read"


def test_manifest_and_summary_fuzz_refuse_with_one_line_and_change_nothing(
    dataset, bag, tmp_path, capsys
):
    rng = random.Random(SEED)
    manifest = (dataset / MANIFEST_FILE).read_text(encoding="utf-8")
    outcomes = {"refused": 0, "read": 0}
    deadline = time.monotonic() + 6.0
    for case in range(300):
        if time.monotonic() > deadline and case >= 40:
            break
        root = tmp_path / f"ds{case}"
        shutil.copytree(dataset, root)
        if case % 4 == 3:
            (root / SUMMARY_FILE).write_bytes(rng.choice(SUMMARIES))
        elif case % 4 == 2:
            rows = read_manifest(root)
            (root / rng.choice(rows)["path"]).unlink()  # a listed image is gone
        else:
            (root / MANIFEST_FILE).write_bytes(_mutate_manifest(manifest, rng))
        outcome = _check_read(root)
        outcomes[outcome] += 1
        before = _snapshot(root)
        code = main(["extract", str(bag), "--topic", "/cam", "--label-topic", "/label", "--out",
                     str(root), "--split", "0.5,0.5,0", "--workers", "1"])  # fmt: skip
        if code == 2:
            _one_error_line(capsys, root.name)
            assert _snapshot(root) == before, "a refused re-run changed the dataset"
        else:  # a re-run may repair what it can (a deleted image is written again)
            assert code == 0 and outcome in ("read", "refused"), capsys.readouterr().err
            capsys.readouterr()
            assert _check_read(root) == "read"
        shutil.rmtree(root)
    assert outcomes["refused"] >= 20 and outcomes["read"] >= 1, outcomes


def test_deleted_image_is_rewritten_by_the_same_command(dataset, bag, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    manifest = (root / MANIFEST_FILE).read_text(encoding="utf-8")
    (root / read_manifest(root)[3]["path"]).unlink()
    with pytest.raises(DatasetError, match="missing"):
        read_dataset(root)
    argv = ["extract", str(bag), "--topic", "/cam", "--label-topic", "/label", "--out", str(root)]
    assert main([*argv, "--split", "0.5,0.5,0", "--workers", "1"]) == 0
    assert (root / MANIFEST_FILE).read_text(encoding="utf-8") == manifest
    assert len(read_dataset(root).samples) == 20


def _huge_png() -> bytes:
    png = rgb_to_compressed(np.zeros((8, 8, 3), np.uint8), "png")
    return png[:16] + (60000).to_bytes(4, "big") * 2 + png[24:]


def test_finetune_on_a_broken_dataset_exits_2_and_writes_nothing(dataset, tmp_path, capsys):
    """The trainer reads every dataset through `read_dataset`: a damaged one is one line."""
    cases = {}
    broken = tmp_path / "manifest"
    shutil.copytree(dataset, broken)
    text = (broken / MANIFEST_FILE).read_text(encoding="utf-8").splitlines()
    (broken / MANIFEST_FILE).write_text("\n".join([text[0], text[1].replace("train/", "../", 1)]))
    cases[broken] = MANIFEST_FILE
    version = tmp_path / "version"
    shutil.copytree(dataset, version)
    summary = json.loads((version / SUMMARY_FILE).read_text(encoding="utf-8"))
    (version / SUMMARY_FILE).write_text(json.dumps({**summary, "version": 99}))
    cases[version] = "version 99"
    undecodable = tmp_path / "undecodable"
    for i, name in enumerate(("a", "b")):
        for k in range(2):
            path = undecodable / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_huge_png() if (i + k) % 2 else b"\x89PNG\r\n\x1a\n broken")
    cases[undecodable] = "readable"
    for root, message in cases.items():
        bundle = tmp_path / f"bundle_{root.name}"
        before = _snapshot(tmp_path)
        code = main(["finetune", str(root), "--out", str(bundle), "--weights", "none",
                     "--strategy", "from_scratch", "--epochs", "1"])  # fmt: skip
        assert code == 2
        line = _one_error_line(capsys, root.name, MANIFEST_FILE, SUMMARY_FILE)
        assert message in line, line
        assert _snapshot(tmp_path) == before and not bundle.exists()
