"""Bottleneck-feature cache: base features computed once per image, reused across runs.

Features are global-average-pooled outputs of a frozen base (BatchNorm in inference mode), so a
head trained on them is exactly the head of the end-to-end model. A cache directory is keyed by
everything that changes the features: backbone, alpha, the sha256 of the base's weights, the
layer, the input size; inside it each file is keyed by the image's content hash and the view
(0 = the image itself, 1..K = seeded augmented views). Files are written atomically.
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
    """One directory of `.npy` feature vectors for one (network, layer, input size)."""

    def __init__(self, root: Path, key: Mapping[str, Any]) -> None:
        self.key = dict(key)
        text = json.dumps(self.key, sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:32]

    def _path(self, content_hash: str, view: str) -> Path:
        return self.dir / content_hash[:2] / f"{content_hash}-{view}.npy"

    def load(self, content_hash: str, view: str) -> np.ndarray | None:
        path = self._path(content_hash, view)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed

    def save(self, content_hash: str, view: str, vector: np.ndarray) -> None:
        if not (self.dir / "key.json").is_file():
            atomic_write_json(self.dir / "key.json", self.key)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self._path(content_hash, view), buffer.getvalue())


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
        for n in names:
            for row, i in enumerate(missing):
                vector = np.asarray(outputs[n][row], dtype=np.float32)
                caches[n].save(hashes[i], tag, vector)
                result[n][view][i] = vector
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
