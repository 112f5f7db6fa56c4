"""What `tl-perception extract` was asked to do, and the combinations refused before any read.

`ExtractOptions.record()` is what defines a dataset's content (stored in dataset.json, hashed
into every resume marker); where and how the work runs (`workers`, `engine`, `ray_address`,
`unit_bytes`) is not part of it: it never changes the output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tl_perception import __version__
from tl_perception.bag.frames import Crop
from tl_perception.bag.plan import FrameFilter, LabelSpec
from tl_perception.bag.roiplan import MAX_NEGATIVES, RoiOptions
from tl_perception.crop import policy_record
from tl_perception.dataset import is_empty_label
from tl_perception.engine.base import EngineSpec
from tl_perception.errors import DatasetError

#: Bags whose image topic holds more bytes than this are cut into time windows of about this
#: size, one unit each (docs/scaling.md, "Units": measured so a window's fixed cost, opening
#: the bag and seeking to the window, stays under 1 % of its work).
UNIT_BYTES = 256 << 20
#: Bumped when the work directory's files change meaning: markers of another version are ignored.
WORK_FORMAT = 1


@dataclass(frozen=True)
class ExtractOptions:
    """Everything `tl-perception extract` was asked to do.

    `workers` None: every CPU (this machine's, or the Ray cluster's); `engine` "local" or "ray"
    (`ray_address` None: `RAY_ADDRESS`, else a local Ray).
    """

    bags: tuple[Path, ...]
    topic: str
    out: Path
    labels: LabelSpec
    selection: FrameFilter = field(default_factory=FrameFilter)
    crop: Crop | None = None
    dedup: int | None = None
    fmt: str = "png"
    split: tuple[float, float, float] | None = None
    seed: int = 0
    workers: int | None = 1
    append: bool = False
    rois: RoiOptions | None = None  # regions of interest: one crop per box (+ negatives)
    engine: str = "local"
    ray_address: str | None = None
    unit_bytes: int = UNIT_BYTES

    def record(self) -> dict[str, Any]:
        """The options that define the dataset's content (not paths or worker counts).

        `rois` is there only for a region-of-interest run, so a whole-frame dataset of an
        older version still has the options it was made with.
        """
        out = {
            "topic": self.topic,
            "labels": asdict(self.labels),
            "selection": asdict(self.selection),
            "crop": list(self.crop) if self.crop else None,
            "dedup": self.dedup,
            "format": self.fmt,
            "split": list(self.split) if self.split else None,
            "seed": self.seed,
        }
        if self.rois is not None:
            out["rois"] = self.rois.record()
        return out

    def policy_record(self) -> dict[str, Any] | None:
        """The `crop_policy` of dataset.json: None for whole frames."""
        return policy_record(self.rois.policy if self.rois is not None else None)

    def content_hash(self) -> str:
        """A hash of everything that decides the output of a unit (the CSV of boxes by its
        content hash, through `record`; this tl_perception's version): resume markers made with
        other options, or by another version, do not match."""
        parts = {
            "format": WORK_FORMAT,
            "version": __version__,  # a newer tl_perception redoes what an older one left
            "record": self.record(),
            "policy": self.policy_record(),
        }
        text = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(self.engine, self.workers, self.ray_address)


def check_options(options: ExtractOptions) -> None:
    """Option combinations that cannot work, refused before anything is read."""
    labels, rois = options.labels, options.rois
    if options.unit_bytes < 1:
        raise DatasetError(f"unit_bytes {options.unit_bytes}: need at least 1")
    if labels.kind == "fixed" and is_empty_label(labels.name):
        raise DatasetError(f"--label {labels.name!r}: an empty label names no class")
    if rois is None:
        if labels.kind == "boxes":
            raise DatasetError("labels from boxes need --boxes-topic or --boxes-csv")
        return
    if options.crop is not None:
        raise DatasetError(
            "--crop cuts one fixed region of whole frames; with --boxes-topic/--boxes-csv the "
            "crop policy (--context, --square, --min-box) cuts each box: give one of them"
        )
    if is_empty_label(rois.background_label):
        raise DatasetError(f"--background-label {rois.background_label!r}: names no class")
    if not 0 <= rois.negatives <= MAX_NEGATIVES:
        raise DatasetError(f"--negatives {rois.negatives}: need 0..{MAX_NEGATIVES} per frame")
