"""Dataset -> in-memory training and validation arrays at the model's input size.

Images are decoded and resized with `tl_perception.images` (the same code the node uses), so
training sees the pixels inference sees. Unreadable files are skipped and listed. Without a `val`
split, validation is a stratified split of `train` that keeps near-duplicates together: images
of one sequence (the manifest's, or the first group of `group_regex` in the file name) or with
identical pixels never straddle train and val.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_perception.crop import CropPolicy
from tl_perception.dataset import Sample, read_crop_policy, read_dataset
from tl_perception.errors import DatasetError, ImageDecodeError
from tl_perception.images import read_image_file, resize_rgb

Log = Callable[[str], None]


@dataclass
class Split:
    """Decoded images (N, H, W, 3) uint8, integer labels, content hashes and their samples."""

    images: np.ndarray
    labels: np.ndarray
    hashes: list[str]
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.hashes)

    def subset(self, idx: Sequence[int] | np.ndarray) -> Split:
        """The images at positions `idx`, in that order."""
        positions = [int(i) for i in idx]
        rows = np.asarray(positions, dtype=np.int64)
        return Split(
            self.images[rows],
            self.labels[rows],
            [self.hashes[i] for i in positions],
            [self.samples[i] for i in positions],
        )

    def sequences(self) -> list[str | None]:
        """Each image's sequence (None where unknown): the groups the probe keeps whole."""
        return [sample.sequence for sample in self.samples]


@dataclass
class TrainingData:
    """A dataset decoded for training: classes, train and val splits, and how val was made."""

    class_names: tuple[str, ...]
    train: Split
    val: Split
    val_source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    crop: CropPolicy | None = None  # the dataset's crop policy (ROI crops), None: whole frames

    def images_per_class(self) -> float:
        return len(self.train) / len(self.class_names)


def content_hash(rgb: np.ndarray) -> str:
    """sha256 of the resized pixels (with shape): the feature cache's per-image key."""
    digest = hashlib.sha256(f"{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def load_split(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    input_size: int,
    skipped: list[tuple[str, str]],
) -> Split:
    """Decode and resize `samples`; unreadable ones go to `skipped` as (path, reason)."""
    index = {name: i for i, name in enumerate(class_names)}
    images, labels, hashes, kept = [], [], [], []
    for sample in samples:
        try:
            rgb = resize_rgb(read_image_file(sample.path), (input_size, input_size))
        except ImageDecodeError as err:
            skipped.append((str(sample.path), str(err)))
            continue
        images.append(rgb)
        labels.append(index[sample.class_name])
        hashes.append(content_hash(rgb))
        kept.append(sample)
    array = np.stack(images) if images else np.zeros((0, input_size, input_size, 3), dtype=np.uint8)
    return Split(array, np.asarray(labels, dtype=np.int64), hashes, kept)


def group_by_file_name(samples: Sequence[Sample], pattern: str) -> list[Sample]:
    """`samples` with `sequence` set to the first group of `pattern` searched in the file name.

    Raises:
        DatasetError: a file name the pattern does not match (or whose first group is empty).
            Such a file cannot silently become its own group: its near-duplicates would land
            on both sides of the split again, which is what the pattern is there to prevent.
    """
    regex = re.compile(pattern)
    grouped, unmatched = [], []
    for sample in samples:
        match = regex.search(sample.path.name)
        group = match.group(1) if match else None
        if group:
            grouped.append(dataclasses.replace(sample, sequence=group))
        else:
            unmatched.append(f"{sample.class_name}/{sample.path.name}")
    if unmatched:
        raise DatasetError(
            f"group_regex {pattern!r} matches no sequence in {len(unmatched)} of {len(samples)} "
            f"training file names, e.g. {unmatched[0]!r}; its first group must name the "
            "sequence in every file name (rename the files or fix the regex)"
        )
    return grouped


def load_training_data(
    dataset_path: str | Path,
    input_size: int,
    val_fraction: float,
    seed: int,
    log: Log = print,
    *,
    group_regex: str | None = None,
) -> TrainingData:
    """Read, decode and split a dataset for training.

    `group_regex` names each training image's sequence from its file name (it replaces the
    manifest's sequences), for the validation split and auto's probe.

    Raises:
        DatasetError: no usable images, a class with fewer than 2 readable images, or a
            training file name that `group_regex` does not match.
    """
    index = read_dataset(dataset_path)
    # the bundle must crop as the dataset did: a damaged policy fails here, before any decoding
    crop = read_crop_policy(index.root)
    if index.splits():
        pool = list(index.split("train"))
        given_val = list(index.split("val"))
        if not pool:
            raise DatasetError(
                f"{str(index.root)!r} has splits {list(index.splits())} but no 'train' split"
            )
    else:
        pool, given_val = list(index.samples), []
    if group_regex is not None:
        pool = group_by_file_name(pool, group_regex)
    class_names = tuple(sorted({s.class_name for s in pool}))
    skipped: list[tuple[str, str]] = []
    train_all = load_split(pool, class_names, input_size, skipped)
    if len(train_all) == 0:
        raise DatasetError(
            f"no readable training images in {str(index.root)!r} ({len(skipped)} unreadable)"
        )
    counts = Counter(int(v) for v in train_all.labels)
    few = [class_names[i] for i in range(len(class_names)) if counts.get(i, 0) < 2]
    if few:
        raise DatasetError(
            f"class(es) {few} have fewer than 2 readable training images in "
            f"{str(index.root)!r}; add images or remove the class directory"
        )
    if len(class_names) < 2:
        raise DatasetError(f"{str(index.root)!r} has only one class {class_names[0]!r}; need >= 2")
    unknown = sorted({s.class_name for s in given_val} - set(class_names))
    if unknown:
        log(f"ignoring val images of classes absent from train: {unknown}")
        given_val = [s for s in given_val if s.class_name in class_names]
    if given_val:
        train, val = train_all, load_split(given_val, class_names, input_size, skipped)
        source = "the dataset's val split"
    else:
        train, val = split_stratified(train_all, val_fraction, seed)
        source = (
            f"stratified {val_fraction:.0%} of train (seed {seed}), {_grouping(pool, group_regex)}"
        )
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            log(f"  {path}: {reason}")
    return TrainingData(class_names, train, val, source, skipped, crop)


def _grouping(pool: Sequence[Sample], group_regex: str | None) -> str:
    """How the validation split groups images, for the log and bundle.json."""
    if group_regex is not None:
        return f"sequences from group_regex {group_regex!r} and identical images kept together"
    if any(sample.sequence for sample in pool):
        return "manifest sequences and identical images kept together"
    return (
        "only identical images kept together (no sequences known: near-duplicate frames of one "
        "object may sit on both sides; see group_regex)"
    )


def split_stratified(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Per class, move whole groups (sequence, else identical pixels) to val until `fraction`.

    Each class keeps at least one group in train; a class with a single group stays in train.
    """
    if fraction <= 0:
        return data, data.subset([])
    rng = np.random.default_rng(seed)
    groups: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (label, sample, digest) in enumerate(
        zip(data.labels, data.samples, data.hashes, strict=True)
    ):
        key = f"seq:{sample.sequence}" if sample.sequence else f"px:{digest}"
        groups[int(label)][key].append(i)
    val_idx: list[int] = []
    for label in sorted(groups):
        members = [groups[label][k] for k in sorted(groups[label])]
        if len(members) < 2:
            continue
        order = rng.permutation(len(members))
        total = sum(len(m) for m in members)
        target = max(1, round(fraction * total))
        taken = 0
        for pos in order[:-1]:  # keep at least one group in train
            if taken >= target:
                break
            val_idx.extend(members[pos])
            taken += len(members[pos])
    val_set = set(val_idx)
    train_idx = [i for i in range(len(data)) if i not in val_set]
    return data.subset(train_idx), data.subset(sorted(val_idx))
