"""`--strategy auto`: pick one of the four transfer cases from measurements, and say why.

Size is training images per class against `size_threshold`. Similarity is how well the
pretrained features separate the classes: a closed-form ridge linear probe on cached,
global-average-pooled features of the final layer and of the default cut layer, scored on a
held-out quarter as "skill" = (accuracy - chance) / (1 - chance). The quarter is held out a
whole sequence at a time (the manifest's, or `group_regex`'s for a plain tree): frames of one
object on both sides would measure memory, not transfer. Thresholds come from
measurements, not from the 2016 rule of thumb (see docs/training.md): on GTSRB with 100 images
per class the probes reach only 0.38-0.54 while fine-tuning reaches 0.91, so low-but-useful
features lead to `fine_tune`, not to `truncate` or `feature_extraction`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_perception.train.config import FinetuneConfig

#: truncate needs the cut layer's probe this much (skill) above the final layer's.
TRUNCATE_MARGIN = 0.05


def probe_subset(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Indices of at most `max_per_class` images per class (seeded), to bound probe cost."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(members)[:max_per_class].tolist())
    return np.asarray(sorted(keep), dtype=np.int64)


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    groups: Sequence[str | None] | None = None,
) -> dict[str, float]:
    """Held-out accuracy of a ridge linear classifier on `features`; chance and skill too.

    Closed form through one SVD, the ridge strength picked from a small grid on the held-out
    quarter: deterministic, no iterations, a second or two for thousands of images. `groups`
    (the manifest's sequences) keeps each sequence on one side: frames of one drive-by are
    near-duplicates, and splitting them would measure memory, not separability.
    """
    holdout = holdout_mask(labels, groups, seed)
    x_fit, y_fit = features[~holdout].astype(np.float64), labels[~holdout]
    x_out, y_out = features[holdout].astype(np.float64), labels[holdout]
    mean, std = x_fit.mean(axis=0), x_fit.std(axis=0) + 1e-6
    x_fit, x_out = (x_fit - mean) / std, (x_out - mean) / std
    classes = np.unique(labels)
    targets = (y_fit[:, None] == classes[None, :]).astype(np.float64)
    target_mean = targets.mean(axis=0)
    u, s, vt = np.linalg.svd(x_fit, full_matrices=False)
    projected = u.T @ (targets - target_mean)
    scale = float(np.mean(s**2)) if s.size else 1.0
    best = 0.0
    for factor in (1e-3, 1e-2, 1e-1, 1.0):
        weights = vt.T @ ((s / (s**2 + factor * scale))[:, None] * projected)
        predicted = classes[np.argmax(x_out @ weights + target_mean, axis=1)]
        best = max(best, float(np.mean(predicted == y_out)) if len(y_out) else 0.0)
    counts = np.unique(y_out, return_counts=True)[1]
    chance = float(counts.max() / counts.sum()) if counts.size else 1.0
    skill = (best - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    return {"accuracy": best, "chance": chance, "skill": skill, "images": len(labels)}


def holdout_mask(
    labels: np.ndarray, groups: Sequence[str | None] | None = None, seed: int = 0
) -> np.ndarray:
    """About a quarter of each class held out, whole groups at a time where groups are known.

    Images without a group are their own group. A class with a single group is split by image
    (nothing better is possible), so every class keeps images on both sides.
    """
    rng = np.random.default_rng(seed)
    keys = [g if g else f"#{i}" for i, g in enumerate(groups)] if groups else None
    holdout = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        target = max(1, len(members) // 4)
        by_group: dict[str, list[int]] = {}
        for i in members:
            by_group.setdefault(keys[i] if keys else f"#{i}", []).append(int(i))
        if len(by_group) < 2:
            by_group = {f"#{i}": [int(i)] for i in members}
        taken = 0
        for key in rng.permutation(sorted(by_group)):
            if taken >= target:
                break
            if taken + len(by_group[key]) >= len(members):
                continue  # keep at least one group to fit on
            holdout[by_group[key]] = True
            taken += len(by_group[key])
    return holdout


def decide(
    images_per_class: float,
    probe_final: dict[str, float],
    probe_cut: dict[str, float],
    cut_layer: str,
    config: FinetuneConfig,
) -> dict[str, Any]:
    """The strategy, the measurements and a one-line reason (recorded in bundle.json)."""
    large = images_per_class >= config.size_threshold
    final, cut = probe_final["skill"], probe_cut["skill"]
    size_text = (
        f"{images_per_class:.0f} images/class {'>=' if large else '<'} {config.size_threshold}"
    )
    probes = (
        f"probe skill final {final:.2f} (acc {probe_final['accuracy']:.2f}), "
        f"{cut_layer} {cut:.2f} (acc {probe_cut['accuracy']:.2f})"
    )
    if probe_final["accuracy"] >= config.solved_threshold:
        strategy = "feature_extraction"
        why = f"pretrained features already separate the classes (>= {config.solved_threshold})"
    elif not large and final >= config.similar_threshold:
        strategy = "feature_extraction"
        why = f"small data, similar: final features separate (>= {config.similar_threshold})"
    elif not large and cut >= config.similar_threshold and cut - final >= TRUNCATE_MARGIN:
        strategy = "truncate"
        why = "small data, different: mid-level features separate, final ones less"
    elif max(final, cut) >= config.transfer_threshold:
        strategy = "fine_tune"
        why = (
            "pretrained features help but do not separate the classes; fine-tuning all "
            "layers reached 0.94 where a frozen base gave 0.57 (GTSRB, 100/class, test)"
            if not large
            else "large data, pretrained features help: fine-tune them"
        )
    elif large:
        strategy = "from_scratch"
        why = f"large data, features near chance (< {config.transfer_threshold} skill)"
    else:
        strategy = "fine_tune"
        why = "small data and features near chance; fine-tuning is the best bet on little data"
    return {
        "strategy": strategy,
        "reason": f"{strategy}: {why} [{size_text}; {probes}]",
        "images_per_class": images_per_class,
        "large": large,
        "probe_final": probe_final,
        "probe_cut": probe_cut,
        "cut_layer": cut_layer,
        "thresholds": {
            "size_threshold": config.size_threshold,
            "similar_threshold": config.similar_threshold,
            "transfer_threshold": config.transfer_threshold,
            "solved_threshold": config.solved_threshold,
        },
    }
