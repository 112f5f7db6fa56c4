"""Fuzz `inspect` and `extract` with broken bags: truncated, bit-flipped, overwritten and empty
ROS 1 / sqlite3 / MCAP files, and messages that are not what their type says.

Every outcome must be exit 0 with a consistent dataset, or exit 2 with one line on stderr that
names the bag and nothing left behind (no output directory, no temp file, nothing beside the bag).
Seeded and bounded in time; real bags written with rosbags, the real CLI in this process.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from tl_perception.bag.writer import IMAGE, STRING, BagWriter, Msg, write_bag
from tl_perception.cli import main
from tl_perception.dataset import read_dataset, read_manifest
from tl_perception.images import image_fields

from support.bagutil import T0, frames, label, pattern

SEED = 9
BUDGET_S = 14.0  # for all mutated bags together


def _messages() -> list[Msg]:
    msgs = frames("/cam", [pattern(i) for i in range(6)], encoding="bgr8")
    msgs += frames("/jpeg", [pattern(i) for i in range(3)], kind="compressed", encoding="jpeg")
    msgs += [label("/label", 0.0, "red"), label("/label", 0.3, "green")]
    return sorted(msgs, key=lambda m: (m.t_ns, m.topic))


def _storage_file(bag: Path) -> Path:
    """The file that holds a bag's messages (the bag itself, or the one in a rosbag2 dir)."""
    if bag.is_file():
        return bag
    return next(p for p in sorted(bag.iterdir()) if p.suffix in (".mcap", ".db3"))


@pytest.fixture(scope="module")
def seed_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seed_bags")
    bags = {
        "ros1": write_bag(root / "drive.bag", "ros1", _messages()),
        "mcap_dir": write_bag(root / "mcap_dir", "mcap", _messages()),
        "sqlite_dir": write_bag(root / "sqlite_dir", "sqlite3", _messages()),
    }
    bags["bare_mcap"] = root / "bare.mcap"
    shutil.copyfile(_storage_file(bags["mcap_dir"]), bags["bare_mcap"])
    bags["bare_db3"] = root / "bare.db3"
    shutil.copyfile(_storage_file(bags["sqlite_dir"]), bags["bare_db3"])
    return bags


def _snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _check_run(argv: list[str], bag: Path, out: Path | None, work: Path, capsys) -> int:
    """Run the CLI once and check the contract; returns the exit code."""
    before = _snapshot(work)
    code = main(argv)  # any exception but TlPerceptionError escapes and fails the test
    captured = capsys.readouterr()
    assert code in (0, 2), (argv, code, captured.err)
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert bag.name in lines[0], lines[0]
        assert "Traceback" not in captured.err
        assert _snapshot(work) == before, "a failed run left something behind"
    elif out is not None and out.exists():
        index = read_dataset(out)  # a consistent dataset: the manifest matches the files
        listed = {r["path"] for r in read_manifest(out)}
        on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
        assert listed == on_disk and len(index.samples) == len(listed)
        assert not [p for p in out.rglob(".*") if p.name != ".hidden"], "temp files left"
    return code


def _mutations(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    """Named broken copies of a bag file."""
    out = [("empty", b""), ("magic only", data[:16])]
    for _ in range(8):
        cut = rng.randrange(1, len(data))
        out.append((f"truncated at {cut}", data[:cut]))
    for _ in range(16):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(flipped))
            flipped[pos] ^= 1 << rng.randrange(8)
        out.append(("bit flips", bytes(flipped)))
    for _ in range(6):
        pos = rng.randrange(len(data))
        block = bytes(rng.randrange(256) for _ in range(rng.randint(8, 256)))
        out.append((f"garbage at {pos}", data[:pos] + block + data[pos + len(block) :]))
    return out


def _broken_copy(seed: Path, work: Path, name: str, data: bytes) -> Path:
    """A copy of `seed` in `work` whose storage file holds `data`."""
    target = work / seed.name
    if seed.is_dir():
        shutil.copytree(seed, target)
        _storage_file(target).write_bytes(data)
    else:
        target.write_bytes(data)
    return target


def test_broken_bags_exit_2_with_one_line_or_extract_consistently(seed_bags, tmp_path, capsys):
    rng = random.Random(SEED)
    deadline = time.monotonic() + BUDGET_S
    cases = [
        (kind, name, data)
        for kind, bag in sorted(seed_bags.items())
        for name, data in _mutations(_storage_file(bag).read_bytes(), rng)
    ]
    rng.shuffle(cases)
    codes: Counter[tuple[str, int]] = Counter()
    for number, (kind, name, data) in enumerate(cases):
        if time.monotonic() > deadline and number >= 40:
            break
        work = tmp_path / f"case{number}"
        work.mkdir()
        bag = _broken_copy(seed_bags[kind], work, name, data)
        out = work / "out"
        extract = ["extract", str(bag), "--topic", "/cam", "--label-topic", "/label"]
        for argv, target in (
            (["inspect", str(bag)], None),
            ([*extract, "--out", str(out), "--workers", "1", "--no-progress"], out),
        ):
            code = _check_run(argv, bag, target, work, capsys)
            codes[(argv[0], code)] += 1
        shutil.rmtree(work)
    assert codes[("extract", 2)] >= 10 and codes[("inspect", 2)] >= 10, codes
    assert sum(codes.values()) >= 80, codes


@pytest.mark.parametrize("kind", ["mcap_dir", "sqlite_dir"])
def test_rosbag2_directory_with_broken_metadata_exits_2(seed_bags, tmp_path, capsys, kind):
    for text in ("", "not: [yaml", "rosbag2_bagfile_information: 7\n"):
        work = tmp_path / f"w{abs(hash(text))}"
        work.mkdir()
        bag = work / "bag"
        shutil.copytree(seed_bags[kind], bag)
        (bag / "metadata.yaml").write_text(text)
        extract = ["extract", str(bag), "--topic", "/cam", "--label", "a", "--out"]
        for argv in (["inspect", str(bag)], [*extract, str(work / "out"), "--workers", "1"]):
            assert _check_run(argv, bag, work / "out", work, capsys) == 2, (text, argv)


def _write_wrong_definition(path: Path, storage: str) -> Path:
    """/cam claims sensor_msgs/Image but carries a String's definition and bytes."""
    with BagWriter(path, storage) as writer:
        writer.connection("/cam", IMAGE, msgdef="string data\n")
        for i in range(3):
            t_ns = T0 + i * 100_000_000
            text = writer.serialize(writer.types[STRING](data=f"frame {i}"), STRING)
            writer.write_raw("/cam", IMAGE, t_ns, text)
            writer.string("/label", t_ns, "red")
    return path


def _write_undecodable(path: Path, storage: str) -> Path:
    """/raw (Image) and /label (String) hold bytes that do not deserialize; /ok is good."""
    with BagWriter(path, storage) as writer:
        for i in range(3):
            t_ns = T0 + i * 100_000_000
            writer.write_raw("/raw", IMAGE, t_ns, b"\x00\x01\x00\x00garbage")
            writer.write_raw("/label", STRING, t_ns, b"\x00\x01\x00\x00\xff\xff\xff\x7f")
            writer.image("/ok", t_ns, image_fields(pattern(i), "rgb8"))
    return path


@pytest.mark.parametrize(("storage", "name"), [("mcap", "typed"), ("ros1", "typed.bag")])
def test_a_topic_whose_definition_is_not_its_type_exits_2(tmp_path, capsys, storage, name):
    bag = _write_wrong_definition(tmp_path / name, storage)
    out = tmp_path / "out"
    base = ["extract", str(bag), "--out", str(out), "--workers", "1", "--topic", "/cam"]
    _check_run(["inspect", str(bag)], bag, None, tmp_path, capsys)
    for argv in ([*base, "--label", "a"], [*base, "--label-topic", "/label"]):
        assert _check_run(argv, bag, out, tmp_path, capsys) == 2, argv


@pytest.mark.parametrize(
    ("storage", "name"), [("mcap", "bytes"), ("sqlite3", "db"), ("ros1", "b.bag")]
)
def test_undecodable_messages_exit_2_naming_the_bag(tmp_path, capsys, storage, name):
    bag = _write_undecodable(tmp_path / name, storage)
    out = tmp_path / "out"
    base = ["extract", str(bag), "--out", str(out), "--workers", "1"]
    assert _check_run(["inspect", str(bag)], bag, None, tmp_path, capsys) == 2
    for argv in (
        [*base, "--topic", "/raw", "--label", "a"],
        [*base, "--topic", "/ok", "--label-topic", "/label"],
        [*base, "--topic", "/ok", "--label-topic", "/raw"],
        [*base, "--topic", "/label", "--label", "a"],
    ):
        assert _check_run(argv, bag, out, tmp_path, capsys) == 2, argv
    assert main([*base, "--topic", "/ok", "--label", "a"]) == 0  # the good topic still works
    assert len(read_manifest(out)) == 3


def test_a_failure_while_writing_leaves_an_existing_dataset_as_it_was(tmp_path, capsys):
    """Pass 2 fails after writing some frames (here: a directory squats on the second frame's
    file name): what it wrote is removed, the dataset stays as it was, one line, exit 2."""
    from tl_perception.bag.reader import bag_source

    good = write_bag(tmp_path / "good", "mcap", frames("/cam", [pattern(i) for i in range(4)]))
    out = tmp_path / "out"
    argv = ["--topic", "/cam", "--label", "a", "--out", str(out), "--workers", "1"]
    assert main(["extract", str(good), *argv]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = write_bag(tmp_path / "second", "mcap", frames("/cam", [pattern(7), pattern(8)]))
    squatter = out / "train" / "a" / f"{bag_source(second).name}_cam_{T0 + 100_000_000}.png"
    squatter.mkdir()
    assert main(["extract", str(second), *argv, "--append"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the dataset" in err[0], err
    squatter.rmdir()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["extract", str(second), *argv, "--append"]) == 0  # and it can be redone
    assert len(read_manifest(out)) == 6
