"""The bottleneck-feature cache is reused across runs and invalidated by what changes features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tl_perception.train.config import FinetuneConfig
from tl_perception.train.finetune import finetune

from support.finetune_helpers import make_color_dataset, write_png


def _run(dataset: Path, tmp_path: Path, name: str, **overrides) -> dict[str, int]:
    values = dict(
        input_size=32,
        weights="none",
        strategy="feature_extraction",
        epochs=1,
        cache_dir=str(tmp_path / "cache"),
        cache_augmentations=1,
        export_tflite=False,
        evaluate=False,
    )
    values.update(overrides)
    result = finetune(dataset, tmp_path / name, FinetuneConfig(**values), log=print, verbose=0)
    return result.cache


@pytest.mark.slow
def test_cache_is_reused_and_invalidated_by_weights_backbone_and_images(tmp_path: Path) -> None:
    dataset = make_color_dataset(tmp_path / "data", per_class=4)
    # 12 images: 9 train with 2 views each (plain + 1 augmented) + 3 val = 21 image views
    first = _run(dataset, tmp_path, "a")
    assert first == {"computed": 21, "reused": 0}
    assert _run(dataset, tmp_path, "b") == {"computed": 0, "reused": 21}
    # other weights (another seed of the random initialisation) -> other features
    assert _run(dataset, tmp_path, "c", seed=1)["reused"] == 0
    # another backbone
    assert _run(dataset, tmp_path, "d", backbone="mobilenet", alpha=0.25)["reused"] == 0
    # more augmented views reuse the views already computed
    assert _run(dataset, tmp_path, "e", cache_augmentations=2) == {"computed": 9, "reused": 21}
    # one changed image: only its views are recomputed
    victim = sorted((dataset / "red").iterdir())[0]
    write_png(victim, np.full((40, 40, 3), 7, dtype=np.uint8))
    changed = _run(dataset, tmp_path, "f")
    assert changed["computed"] in (1, 2)  # 1 if it lands in val, 2 (two views) in train
    assert changed["computed"] + changed["reused"] == 21


def test_cache_entries_are_keyed_by_weights_hash(tmp_path: Path) -> None:
    from tl_perception.train.cache import FeatureCache

    a = FeatureCache(tmp_path, {"backbone": "x", "weights_sha256": "1"})
    b = FeatureCache(tmp_path, {"backbone": "x", "weights_sha256": "2"})
    a.save_many(["ab" * 32], "v0", np.arange(3, dtype=np.float32)[None])
    np.testing.assert_array_equal(a.load("ab" * 32, "v0"), [0, 1, 2])
    assert b.load("ab" * 32, "v0") is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_shards_are_read_back_by_a_new_instance_and_damage_is_ignored(
    tmp_path: Path,
) -> None:
    from tl_perception.train.cache import FeatureCache

    key = {"backbone": "x", "weights_sha256": "1"}
    hashes = [f"{i:064x}" for i in range(5)]
    vectors = np.arange(15, dtype=np.float32).reshape(5, 3)
    FeatureCache(tmp_path, key).save_many(hashes, "v0", vectors)
    shards = list(tmp_path.rglob("*.npz"))
    assert len(shards) == 1  # one file for the batch, not one per image
    fresh = FeatureCache(tmp_path, key)
    for digest, vector in zip(hashes, vectors, strict=True):
        np.testing.assert_array_equal(fresh.load(digest, "v0"), vector)
    shards[0].write_bytes(b"not a shard")
    assert FeatureCache(tmp_path, key).load(hashes[0], "v0") is None


def test_default_cache_dir_is_the_projects_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tl_perception.fsutil import user_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir() == tmp_path / "tl_perception"
    assert FinetuneConfig().cache_root() == tmp_path / "tl_perception" / "features"
