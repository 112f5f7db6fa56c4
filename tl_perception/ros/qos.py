"""Subscription QoS for the inputs: presets, `auto` matching like `ros2 bag record`, and
`AutoQosInput`, one subscription under those rules.

A QoS mismatch between a camera driver and a subscriber is the most common reason a node "gets no
images": a RELIABLE subscription never hears a BEST_EFFORT publisher, a TRANSIENT_LOCAL one never
hears a VOLATILE publisher. `auto` therefore asks the graph what the publishers offer and requests
the strongest policy every one of them can satisfy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_policy_name_from_kind,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from rclpy.subscription import Subscription

try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

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


class AutoQosInput:
    """One input subscription under the node's `qos` rule.

    `auto` starts best effort / volatile (hears any publisher) and `match` re-subscribes with
    what all publishers offer, like `ros2 bag record`; an incompatible-QoS event is counted and
    logged with the policy's name, and `incompatible_now` asks the graph whether such a
    publisher is there *now*.
    """

    def __init__(self, msg_type: type, topic: str, callback: Any, mode: str) -> None:
        self.msg_type = msg_type
        self.topic = topic  # fully resolved
        self.mode = mode
        self.profile = preset_profile(mode)
        self.incompatible_events = 0
        self._callback = callback
        self._subscription: Subscription | None = None

    def open(self, node: Node, reason: str) -> None:
        self.close(node)
        self._subscription = node.create_subscription(
            self.msg_type,
            self.topic,
            self._callback,
            self.profile,
            event_callbacks=SubscriptionEventCallbacks(
                incompatible_qos=lambda event: self._on_incompatible(node, event)
            ),
        )
        node.get_logger().info(
            f"subscribed {self.topic} ({self.msg_type.__name__}) with QoS "
            f"[{describe(self.profile)}] ({reason})"
        )

    def close(self, node: Node) -> None:
        if self._subscription is not None:
            node.destroy_subscription(self._subscription)
            self._subscription = None

    @property
    def is_open(self) -> bool:
        return self._subscription is not None

    def match(self, node: Node) -> None:
        """`qos:=auto`: follow the publishers' reliability/durability."""
        if self.mode != "auto" or not self.is_open:
            return
        offered = self.offered(node)
        wanted = match_publishers(offered)
        if wanted is not None and not same_policies(wanted, self.profile):
            self.profile = wanted
            self.open(node, reason=f"qos:=auto matched {len(offered)} publisher(s)")

    def offered(self, node: Node) -> list[Any]:
        return [info.qos_profile for info in node.get_publishers_info_by_topic(self.topic)]

    def incompatible_now(self, node: Node) -> int:
        return count_incompatible(self.offered(node), self.profile)

    def _on_incompatible(self, node: Node, event: Any) -> None:
        self.incompatible_events += 1
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        node.get_logger().warning(
            f"a publisher on {self.topic} offers a QoS incompatible with this node's "
            f"[{describe(self.profile)}]: policy {policy}; no messages arrive from it. "
            "Use qos:=auto, or match the publisher (e.g. qos:=sensor_data for best effort)."
        )
