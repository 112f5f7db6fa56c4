"""The node's `/diagnostics` status, built from a `FrameStats` snapshot and a `NodeStatus`.

Every WARN condition describes the present, never the past: bad frames *this period*, a
publisher whose QoS is incompatible *now* (looked up in the graph each period), a hot reload
whose *current* request failed. Counts since start stay in the values, where history belongs;
a level that latched on one old event would hide the next real problem behind a stale warning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from tl_perception.ros.stats import StatsSnapshot

#: `model_reload` value when no reload is pending and the last request is serving.
RELOAD_IDLE = "idle"


@dataclass(frozen=True)
class NodeStatus:
    """What the node reports beside the frame statistics."""

    backend: str
    model: str  # the serving bundle
    qos: str
    incompatible_qos_events: int  # DDS incompatible-QoS events since start
    incompatible_qos_publishers: int = 0  # publishers on the topic incompatible right now
    model_reload: str = RELOAD_IDLE  # idle | loading <path> | failed <path>: <reason>

    @property
    def reload_failed(self) -> bool:
        return self.model_reload.startswith("failed")


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def warnings_of(snap: StatsSnapshot, node: NodeStatus) -> list[str]:
    """The conditions that hold now and deserve WARN, most urgent first."""
    found = []
    if snap.bad_in_period:
        found.append(f"{snap.bad_in_period} bad frame(s) this period")
    if node.incompatible_qos_publishers:
        found.append(f"{node.incompatible_qos_publishers} image publisher(s) with incompatible QoS")
    if node.reload_failed:
        found.append(f"hot reload {node.model_reload}; serving {node.model}")
    return found


def build_diagnostics(
    status_name: str, stamp: Time, snap: StatsSnapshot, node: NodeStatus
) -> DiagnosticArray:
    """One DiagnosticStatus: WARN while one of `warnings_of` holds, else OK."""
    found = warnings_of(snap, node)
    if found:
        level, message = DiagnosticStatus.WARN, "; ".join(found)
    elif snap.received == 0:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        level = DiagnosticStatus.OK
        message = f"{snap.processed_rate_hz:.1f} Hz classified of {snap.input_rate_hz:.1f} Hz"
    values = {
        "input_rate_hz": f"{snap.input_rate_hz:.2f}",
        "processed_rate_hz": f"{snap.processed_rate_hz:.2f}",
        "received_frames": str(snap.received),
        "processed_frames": str(snap.processed),
        "dropped_frames": str(snap.dropped),
        "bad_frames": str(snap.bad),
        "unstamped_frames": str(snap.unstamped),
        "inference_errors": str(snap.errors),
        "inference_latency_p50_ms": _ms(snap.inference_ms_p50),
        "inference_latency_p95_ms": _ms(snap.inference_ms_p95),
        "stamp_to_publish_latency_p50_ms": _ms(snap.latency_ms_p50),
        "stamp_to_publish_latency_p95_ms": _ms(snap.latency_ms_p95),
        "backend": node.backend,
        "model": node.model,
        "model_reload": node.model_reload,
        "input_qos": node.qos,
        "incompatible_qos_events": str(node.incompatible_qos_events),
        "incompatible_qos_publishers": str(node.incompatible_qos_publishers),
    }
    status = DiagnosticStatus(
        level=level,
        name=status_name,
        message=message,
        hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
