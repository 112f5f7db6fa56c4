"""Dataset -> in-memory training and validation arrays at the model's input size.

Images are decoded and resized with `tl_perception.images` (the same code the node uses), so
training sees the pixels inference sees. Unreadable files are skipped and listed. Without a `val`
split, validation is a stratified split of `train` that keeps near-duplicates together: images
of one manifest `sequence` (or with identical pixels) never straddle train and val.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tl_perception.dataset import Sample, read_dataset
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


@dataclass
class TrainingData:
    class_names: tuple[str, ...]
    train: Split
    val: Split
    val_source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    test_samples: tuple[Sample, ...] = ()

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


def load_training_data(
    dataset_path: str | Path,
    input_size: int,
    val_fraction: float,
    seed: int,
    log: Log = print,
) -> TrainingData:
    """Read, decode and split a dataset for training.

    Raises:
        DatasetError: no usable images, or a class with fewer than 2 readable images.
    """
    index = read_dataset(dataset_path)
    if index.splits():
        pool = list(index.split("train"))
        given_val = list(index.split("val"))
        if not pool:
            raise DatasetError(
                f"{str(index.root)!r} has splits {list(index.splits())} but no 'train' split"
            )
    else:
        pool, given_val = list(index.samples), []
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
            f"stratified {val_fraction:.0%} of train (seed {seed}), near-duplicates kept together"
        )
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s):")
        for path, reason in skipped:
            log(f"  {path}: {reason}")
    return TrainingData(class_names, train, val, source, skipped, index.split("test"))


def split_stratified(data: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Per class, move whole groups (sequence, else identical pixels) to val until `fraction`.

    Each class keeps at least one group in train; a class with a single group stays in train.
    """
    if fraction <= 0:
        return data, _subset(data, [])
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
    return _subset(data, train_idx), _subset(data, sorted(val_idx))


def _subset(data: Split, idx: Sequence[int]) -> Split:
    idx_array = np.asarray(idx, dtype=np.int64)
    return Split(
        data.images[idx_array],
        data.labels[idx_array],
        [data.hashes[i] for i in idx],
        [data.samples[i] for i in idx],
    )
