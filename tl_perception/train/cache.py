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

    def save(self, content_hash: str, view: str, vector: np.ndarray) -> None:
        self.save_many([content_hash], view, np.asarray(vector)[None])


def view_name(view: int, augment: str) -> str:
    return "v0" if view == 0 else f"{augment}{view}"


def cached_features(
    extractor: Any,
    caches: Mapping[str, FeatureCache],
    images: np.ndarray,
    hashes: Sequence[str],
    views: int,
    augment: str,
    batch_size: int,
    stats: CacheStats,
) -> dict[str, np.ndarray]:
    """Features per output of `extractor` (a Keras model with a dict of pooled outputs).

    Returns {output name: array (views + 1, N, D)}; view 0 is the plain image. Only image views
    missing from any of the caches are run through the network.
    """
    spec = AUGMENT_SPECS.get(augment)
    views = views if spec is not None else 0
    names = list(caches)
    result: dict[str, list[list[np.ndarray | None]]] = {
        n: [[None] * len(hashes) for _ in range(views + 1)] for n in names
    }
    for view in range(views + 1):
        tag = view_name(view, augment)
        missing = []
        for i, digest in enumerate(hashes):
            found = {n: caches[n].load(digest, tag) for n in names}
            if all(v is not None for v in found.values()):
                for n in names:
                    result[n][view][i] = found[n]
                stats.reused += 1
            else:
                missing.append(i)
        if not missing:
            continue
        batch = images[np.asarray(missing)]
        if view > 0 and spec is not None:
            batch = np.stack(
                [
                    augment_rgb(img, view_seed(hashes[i], view), spec)
                    for img, i in zip(batch, missing, strict=True)
                ]
            )
        outputs = extractor.predict(batch, batch_size=batch_size, verbose=0)
        if not isinstance(outputs, dict):
            outputs = {names[0]: outputs}
        missing_hashes = [hashes[i] for i in missing]
        for n in names:
            vectors = np.asarray(outputs[n], dtype=np.float32)
            caches[n].save_many(missing_hashes, tag, vectors)
            for row, i in enumerate(missing):
                result[n][view][i] = vectors[row]
        stats.computed += len(missing)
    if not hashes:
        return {n: np.zeros((views + 1, 0, 0), dtype=np.float32) for n in names}
    return {n: np.stack([np.stack(v) for v in result[n]]) for n in names}


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
