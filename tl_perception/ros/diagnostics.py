"""The node's `/diagnostics` status, built from a `FrameStats` snapshot."""

from __future__ import annotations

import math

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from tl_perception.ros.stats import StatsSnapshot


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def build_diagnostics(
    status_name: str,
    stamp: Time,
    snap: StatsSnapshot,
    *,
    backend: str,
    model: str,
    qos: str,
    incompatible_qos_events: int,
) -> DiagnosticArray:
    """One DiagnosticStatus: WARN while bad frames arrive or QoS is incompatible, else OK."""
    if snap.bad_in_period:
        level, message = DiagnosticStatus.WARN, f"{snap.bad_in_period} bad frame(s) this period"
    elif incompatible_qos_events:
        level, message = DiagnosticStatus.WARN, "incompatible QoS with an image publisher"
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
        "inference_errors": str(snap.errors),
        "inference_latency_p50_ms": _ms(snap.inference_ms_p50),
        "inference_latency_p95_ms": _ms(snap.inference_ms_p95),
        "stamp_to_publish_latency_p50_ms": _ms(snap.latency_ms_p50),
        "stamp_to_publish_latency_p95_ms": _ms(snap.latency_ms_p95),
        "backend": backend,
        "model": model,
        "input_qos": qos,
        "incompatible_qos_events": str(incompatible_qos_events),
    }
    status = DiagnosticStatus(
        level=level,
        name=status_name,
        message=message,
        hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
