"""Bottleneck-feature cache: base features computed once per image, reused across runs.

Features are global-average-pooled outputs of a frozen base (BatchNorm in inference mode), so a
head trained on them is exactly the head of the end-to-end model. A cache directory is keyed by
everything that changes the features: backbone, alpha, the sha256 of the base's weights, the
layer, the input size; inside it vectors are keyed by the image's content hash and the view
(0 = the image itself, 1..K = seeded augmented views), in shards written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.fsutil import atomic_write_bytes, atomic_write_json
from tl_perception.train.augment import AUGMENT_SPECS, augment_rgb, view_seed
from tl_perception.train.distribute import predict


@dataclass
class CacheStats:
    computed: int = 0  # image views run through the base
    reused: int = 0  # image views read from disk

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused}


class FeatureCache:
    """Feature vectors for one (network, layer, input size), stored as shards.

    Each shard is one `.npz` (content hashes + a float32 matrix) written atomically for a batch
    of computed views: thousands of images cost a handful of files, not one file each, which
    keeps the first (cache-filling) run close to a single pass through the base. Shards are read
    into an in-memory index once per view; a damaged shard is ignored and its views recomputed.
    """

    def __init__(self, root: Path, key: Mapping[str, Any]) -> None:
        self.key = dict(key)
        text = json.dumps(self.key, sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:32]
        self._index: dict[str, dict[str, np.ndarray]] = {}

    def _view_index(self, view: str) -> dict[str, np.ndarray]:
        if view not in self._index:
            index: dict[str, np.ndarray] = {}
            for shard in sorted((self.dir / view).glob("*.npz")):
                try:
                    with np.load(shard, allow_pickle=False) as data:
                        index.update(zip(data["hashes"].tolist(), data["features"], strict=True))
                except (OSError, ValueError, KeyError):
                    continue
            self._index[view] = index
        return self._index[view]

    def load(self, content_hash: str, view: str) -> np.ndarray | None:
        return self._view_index(view).get(content_hash)

    def save_many(self, hashes: Sequence[str], view: str, vectors: np.ndarray) -> None:
        """Store one shard holding `vectors[i]` for `hashes[i]`."""
        if not hashes:
            return
        if not (self.dir / "key.json").is_file():
            atomic_write_json(self.dir / "key.json", self.key)
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(hashes), -1)
        buffer = io.BytesIO()
        np.savez(buffer, hashes=np.asarray(hashes, dtype=str), features=matrix)
        name = hashlib.sha256("".join(hashes).encode()).hexdigest()[:24]
        atomic_write_bytes(self.dir / view / f"{name}.npz", buffer.getvalue())
        self._view_index(view).update(zip(hashes, matrix, strict=True))


def view_name(view: int, augment: str) -> str:
    return "v0" if view == 0 else f"{augment}{view}"


@dataclass
class CachedExtractor:
    """A feature extractor behind its caches: only image views they lack run through it.

    `extractor` is a Keras model with a dict of pooled outputs, one per name in `caches` (a
    single-output model feeds the one cache there is).
    """

    extractor: Any
    caches: Mapping[str, FeatureCache]
    batch_size: int
    stats: CacheStats

    def features(
        self, images: np.ndarray, hashes: Sequence[str], views: int = 0, augment: str = "none"
    ) -> dict[str, np.ndarray]:
        """{output name: array (views + 1, N, D)}: view 0 is the plain image, views 1..K are
        seeded `augment` variations (there are none without augmentation)."""
        count = views + 1 if AUGMENT_SPECS.get(augment) is not None else 1
        if not hashes:
            return {n: np.zeros((count, 0, 0), dtype=np.float32) for n in self.caches}
        per_view = [self._view(images, hashes, view, augment) for view in range(count)]
        return {n: np.stack([found[n] for found in per_view]) for n in self.caches}

    def _view(
        self, images: np.ndarray, hashes: Sequence[str], view: int, augment: str
    ) -> dict[str, np.ndarray]:
        """One view's vectors per output: read from the caches, the missing ones computed."""
        tag = view_name(view, augment)
        hits: dict[int, dict[str, np.ndarray]] = {}
        missing: list[int] = []
        for i, digest in enumerate(hashes):
            found = {n: cache.load(digest, tag) for n, cache in self.caches.items()}
            complete = {n: vector for n, vector in found.items() if vector is not None}
            if len(complete) == len(found):
                hits[i] = complete
            else:
                missing.append(i)
        self.stats.reused += len(hits)
        computed = self._compute(images, hashes, missing, view, augment) if missing else {}
        row_of = {i: row for row, i in enumerate(missing)}
        return {
            n: np.stack(
                [hits[i][n] if i in hits else computed[n][row_of[i]] for i in range(len(hashes))]
            )
            for n in self.caches
        }

    def _compute(
        self, images: np.ndarray, hashes: Sequence[str], rows: list[int], view: int, augment: str
    ) -> dict[str, np.ndarray]:
        """Run the images at `rows` (augmented for view > 0) through the network; cache them."""
        spec = AUGMENT_SPECS.get(augment)
        batch = images[np.asarray(rows)]
        if view > 0 and spec is not None:
            batch = np.stack(
                [
                    augment_rgb(img, view_seed(hashes[i], view), spec)
                    for img, i in zip(batch, rows, strict=True)
                ]
            )
        outputs = predict(self.extractor, batch, self.batch_size)
        names = list(self.caches)
        if not isinstance(outputs, dict):
            outputs = {names[0]: outputs}
        row_hashes = [hashes[i] for i in rows]
        tag = view_name(view, augment)
        computed = {n: np.asarray(outputs[n], dtype=np.float32) for n in names}
        for n, vectors in computed.items():
            self.caches[n].save_many(row_hashes, tag, vectors)
        self.stats.computed += len(rows)
        return computed


def cache_key(
    backbone: str, alpha: float | None, fingerprint: str, layer: str, size: int
) -> dict[str, Any]:
    """Everything that changes a layer's features (the cache directory's identity)."""
    return {
        "backbone": backbone,
        "alpha": alpha,
        "weights_sha256": fingerprint,
        "layer": layer,
        "input_size": size,
        "pooling": "global_average",
    }
