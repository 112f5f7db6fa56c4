"""Subscription QoS for the image input: presets, and `auto` matching like `ros2 bag record`.

A QoS mismatch between a camera driver and a subscriber is the most common reason a node "gets no
images": a RELIABLE subscription never hears a BEST_EFFORT publisher, a TRANSIENT_LOCAL one never
hears a VOLATILE publisher. `auto` therefore asks the graph what the publishers offer and requests
the strongest policy every one of them can satisfy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

QOS_MODES: tuple[str, ...] = ("auto", "sensor_data", "reliable", "system_default")

#: Input queue depth: the callback only keeps the newest frame, so a short queue is enough.
INPUT_DEPTH = 5


#: (reliability, durability) of each fixed `qos` mode; `auto` starts as best effort (matches any).
_PRESET_POLICIES = {
    "auto": (qos_profile_sensor_data.reliability, qos_profile_sensor_data.durability),
    "sensor_data": (qos_profile_sensor_data.reliability, qos_profile_sensor_data.durability),
    "reliable": (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE),
    "system_default": (
        qos_profile_system_default.reliability,
        qos_profile_system_default.durability,
    ),
}


def preset_profile(mode: str) -> QoSProfile:
    """The input profile of a `qos` parameter value (keep last `INPUT_DEPTH`)."""
    if mode not in _PRESET_POLICIES:
        raise ValueError(f"unknown qos mode {mode!r}; use one of {', '.join(QOS_MODES)}")
    reliability, durability = _PRESET_POLICIES[mode]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=INPUT_DEPTH,
        reliability=reliability,
        durability=durability,
    )


def match_publishers(offered: Sequence[Any]) -> QoSProfile | None:
    """The profile that hears every publisher at its best, from their offered QoS profiles.

    RELIABLE only if all publishers are reliable, TRANSIENT_LOCAL only if all are; None when
    there are no publishers yet (keep the current subscription).
    """
    if not offered:
        return None
    reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    transient = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=INPUT_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def count_incompatible(offered: Sequence[Any], subscription: QoSProfile) -> int:
    """How many of the publishers' offered profiles can never deliver to `subscription`.

    rclpy's own rule (`qos_check_compatible`, what DDS applies); a WARNING result ("system
    default", cannot tell) is not counted, only a definite ERROR. Asking the graph answers "is it
    incompatible *now*", which the incompatible-QoS event, fired once per discovery, cannot.
    """
    return sum(
        1
        for profile in offered
        if qos_check_compatible(profile, subscription)[0] == QoSCompatibility.ERROR
    )


def same_policies(a: QoSProfile, b: QoSProfile) -> bool:
    """Whether two profiles agree on what decides compatibility (reliability, durability)."""
    return a.reliability == b.reliability and a.durability == b.durability


def describe(profile: QoSProfile) -> str:
    """A short human-readable summary, e.g. 'reliable, volatile, keep_last 5'."""
    history = profile.history.name.lower()
    depth = f" {profile.depth}" if profile.history == HistoryPolicy.KEEP_LAST else ""
    return (
        f"{profile.reliability.name.lower()}, {profile.durability.name.lower()}, {history}{depth}"
    )
