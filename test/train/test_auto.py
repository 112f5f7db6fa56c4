"""`--strategy auto` picks the right case from measurements, and records why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tl_perception.train.auto import decide, linear_probe
from tl_perception.train.config import FinetuneConfig
from tl_perception.train.finetune import decide_strategy

from support.finetune_helpers import make_color_dataset, make_noise_dataset


def probe(accuracy: float, chance: float) -> dict[str, float]:
    return {"accuracy": accuracy, "chance": chance, "skill": (accuracy - chance) / (1 - chance)}


CFG = FinetuneConfig()


@pytest.mark.parametrize(
    ("per_class", "final", "cut", "expected"),
    [
        (300, probe(0.96, 0.5), probe(1.0, 0.5), "feature_extraction"),  # vehicles, measured
        (100, probe(0.38, 0.023), probe(0.54, 0.023), "fine_tune"),  # GTSRB-100, measured
        (100, probe(0.40, 0.1), probe(0.90, 0.1), "truncate"),  # mid-level features separate
        (5000, probe(0.60, 0.1), probe(0.50, 0.1), "fine_tune"),  # large & similar
        (5000, probe(0.12, 0.1), probe(0.11, 0.1), "from_scratch"),  # large & different
        (5000, probe(0.99, 0.1), probe(0.90, 0.1), "feature_extraction"),  # already solved
    ],
)
def test_decision_rule_covers_the_four_cases(
    per_class: int, final: dict, cut: dict, expected: str
) -> None:
    decision = decide(per_class, final, cut, "mid", CFG)
    assert decision["strategy"] == expected
    assert decision["reason"].startswith(expected)
    assert decision["probe_final"] == final and decision["images_per_class"] == per_class


def test_linear_probe_separates_separable_features_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    centers = rng.normal(size=(4, 16)) * 4
    separable = centers[labels] + rng.normal(size=(160, 16))
    noise = rng.normal(size=(160, 16))
    good = linear_probe(separable, labels)
    bad = linear_probe(noise, labels)
    assert good["accuracy"] > 0.95 and good["skill"] > 0.9
    assert bad["skill"] < 0.3
    assert good["chance"] == pytest.approx(0.25)


def _cfg(tmp_path: Path, **overrides) -> FinetuneConfig:
    values = dict(input_size=32, cache_dir=str(tmp_path / "cache"), seed=0)
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("auto")
    return {
        "colors": make_color_dataset(root / "colors", per_class=16),
        "noise": make_noise_dataset(root / "noise", per_class=16),
    }


def test_auto_on_separable_small_data_picks_feature_extraction(
    datasets: dict[str, Path], tmp_path: Path, shared_dir: Path
) -> None:
    weights = str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5")
    decision = decide_strategy(datasets["colors"], _cfg(tmp_path, weights=weights), log=print)
    assert decision["strategy"] == "feature_extraction"
    assert decision["probe_final"]["accuracy"] >= 0.9


def test_auto_on_inseparable_data_picks_by_size(
    datasets: dict[str, Path], tmp_path: Path, shared_dir: Path
) -> None:
    weights = str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5")
    small = decide_strategy(datasets["noise"], _cfg(tmp_path, weights=weights), log=print)
    assert small["probe_final"]["skill"] < 0.2
    assert small["strategy"] == "fine_tune"
    large = decide_strategy(
        datasets["noise"], _cfg(tmp_path, weights=weights, size_threshold=10), log=print
    )
    assert large["strategy"] == "from_scratch"
    assert "images/class >= 10" in large["reason"]


def test_probe_holdout_keeps_each_sequence_on_one_side() -> None:
    from tl_perception.train.auto import holdout_mask

    labels = np.repeat([0, 1], 40)
    groups = [f"c{label}:run{i // 10}" for i, label in enumerate(labels)]
    mask = holdout_mask(labels, groups, seed=3)
    for group in set(groups):
        members = [i for i, g in enumerate(groups) if g == group]
        assert len({bool(mask[i]) for i in members}) == 1, group
    for label in (0, 1):
        held = mask[labels == label]
        assert 0 < held.sum() < held.size


def test_probe_on_near_duplicate_sequences_is_not_fooled() -> None:
    """Features that only identify the sequence (not the class) must not score as separable."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    groups = [f"run{i // 8}" for i in range(len(labels))]
    centers = {g: rng.normal(size=16) for g in sorted(set(groups))}
    features = np.stack([centers[g] + 0.01 * rng.normal(size=16) for g in groups])
    leaky = linear_probe(features, labels)
    honest = linear_probe(features, labels, groups=groups)
    assert leaky["accuracy"] > 0.9
    assert honest["accuracy"] < 0.6


def test_auto_probe_on_a_plain_tree_holds_out_whole_tracks_with_group_regex(
    tmp_path: Path, shared_dir: Path
) -> None:
    """Tracks of near-identical frames, classes unrelated to what the frames show: only
    memory of the tracks can score, and the probe must not count that as transfer.

    Enough tracks that the held-out quarter has ~15 of them: the probe's accuracy moves in
    steps of one track, so a handful could beat chance by luck.
    """
    from support.finetune_helpers import write_png

    rng = np.random.default_rng(0)
    root = tmp_path / "tracks"
    for cls in ("a", "b", "c"):
        for track in range(30):
            blocks = rng.integers(0, 256, (4, 4, 3)).astype(np.int16)
            base = np.kron(blocks, np.ones((8, 8, 1), dtype=np.int16))  # 32x32 patchwork
            for frame in range(5):
                rgb = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
                write_png(root / cls / f"{cls}{track}_{frame:02d}.png", rgb)
    weights = str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5")
    cfg = _cfg(tmp_path, weights=weights)
    leaky = decide_strategy(root, cfg, log=print)
    honest = decide_strategy(root, dataclasses.replace(cfg, group_regex=r"^(\w+)_"), log=print)
    for probe in ("probe_final", "probe_cut"):
        seen, unseen = leaky[probe]["accuracy"], honest[probe]["accuracy"]
        assert seen >= 0.85, leaky[probe]  # held-out frames of tracks it has seen
        assert unseen <= 0.6, honest[probe]  # held-out tracks: chance is 1/3
        assert seen - unseen >= 0.3
