"""`TrainingRun`: what every step of one `finetune` run reads, passed as one object.

The options, the resolved backbone, the decoded data, the log and the feature-cache counters
used to travel as ten to thirteen arguments from function to function; one object keeps the
signatures short and puts a new option one field away from every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tl_perception.backbones import BackboneChoice
from tl_perception.train.cache import CachedExtractor, CacheStats, FeatureCache, cache_key
from tl_perception.train.config import FinetuneConfig
from tl_perception.train.data import TrainingData

Log = Callable[[str], None]


@dataclass
class TrainingRun:
    """One run's options, backbone and data; `stats` counts the feature cache's work."""

    cfg: FinetuneConfig
    backbone: BackboneChoice
    data: TrainingData
    log: Log = print
    stats: CacheStats = field(default_factory=CacheStats)

    def feature_cache(self, weights_sha256: str, layer: str) -> FeatureCache:
        """The cache of `layer`'s pooled features for the base with these weights."""
        choice = self.backbone
        key = cache_key(choice.name, choice.alpha, weights_sha256, layer, choice.input_size)
        return FeatureCache(self.cfg.cache_root(), key)

    def cached_extractor(
        self, extractor: Any, caches: Mapping[str, FeatureCache]
    ) -> CachedExtractor:
        """`extractor` behind `caches`, batched and counted like the rest of the run."""
        return CachedExtractor(extractor, caches, self.cfg.batch_size, self.stats)
