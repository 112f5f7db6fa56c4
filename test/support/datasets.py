"""Dataset directories the loop tests start from: a real extraction, and label CSVs."""

from __future__ import annotations

from pathlib import Path

from tl_perception.bag.extract import ExtractOptions, extract
from tl_perception.bag.plan import LabelSpec
from tl_perception.bag.writer import write_bag

from support.bagutil import frames, label
from support.helpers import color_image

COLORS = ("red", "green", "blue")


def existing_dataset(tmp_path: Path) -> Path:
    """A real extraction: 4 runs of 3 frames per colour, split 0.6/0.2/0.2 by sequence."""
    msgs = []
    for run in range(12):
        name = COLORS[run % 3]
        start = run * 5.0  # 5 s apart: every run is its own sequence
        msgs += frames(
            "/cam",
            [color_image(name, (24, 32), seed=100 * run + k) for k in range(3)],
            start_s=start,
        )
        msgs.append(label("/label", start, name))
    bag = write_bag(tmp_path / "drive", "mcap", sorted(msgs, key=lambda m: (m.t_ns, m.topic)))
    out = tmp_path / "dataset"
    extract(
        ExtractOptions(
            (bag,), "/cam", out, LabelSpec("topic", topic="/label"), split=(0.6, 0.2, 0.2), seed=1
        )
    )
    return out


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return path
