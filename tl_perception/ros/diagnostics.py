"""The node's `/diagnostics`: the node's status and one per camera.

Every WARN condition describes the present, never the past: bad frames *this period*, a
publisher whose QoS is incompatible *now* (looked up in the graph each period), a hot reload
whose *current* request failed, detections that found no image *this period*. Counts since start
stay in the values, where history belongs; a level that latched on one old event would hide the
next real problem behind a stale warning.

With one camera (`cameras` empty) there is one status, the node's, holding the camera's values
too, as before several cameras existed. With cameras, the node's status holds the model, the
batches and the totals, and each camera has its own status named
`<node>: image classification (<camera>)`; the node's level is the worst of all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from tl_perception.ros.pairing import PairCounts
from tl_perception.ros.reload import RELOAD_IDLE
from tl_perception.ros.stats import BatchSnapshot, RoiSnapshot, StatsSnapshot


@dataclass(frozen=True)
class ExtraStatus:
    """More values for the node's /diagnostics status, and the warnings that hold now (labels,
    unknown threshold, capture)."""

    values: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeStatus:
    """What the node reports beside the cameras' frame statistics."""

    backend: str
    model: str  # the serving bundle
    model_reload: str = RELOAD_IDLE  # idle | loading <path> | failed <path>: <reason>
    roi_source: str = "full_frame"
    errors: int = 0  # unexpected exceptions while classifying (logged)
    batch: BatchSnapshot = field(default_factory=BatchSnapshot)
    extra: ExtraStatus = field(default_factory=ExtraStatus)  # labels, unknown, capture
    lifecycle_state: str = "active"  # inactive: configured, nothing subscribed or published

    @property
    def reload_failed(self) -> bool:
        return self.model_reload.startswith("failed")


@dataclass(frozen=True)
class PairingPeriod:
    """Pairing counts since start, and what changed during the last period."""

    counts: PairCounts
    paired: int = 0
    unpaired_images: int = 0
    unpaired_detections: int = 0


@dataclass(frozen=True)
class CameraReport:
    """One camera's period: frame statistics, input QoS, ROIs and pairing (ROI modes only)."""

    name: str  # "" for the single camera of `cameras` empty
    snap: StatsSnapshot
    input_topic: str
    qos: str
    incompatible_qos_events: int  # DDS incompatible-QoS events since start
    incompatible_qos_publishers: int = 0  # publishers on the topic incompatible right now
    rois: RoiSnapshot | None = None
    pairing: PairingPeriod | None = None
    extra: dict[str, str] = field(default_factory=dict)
    frame_id_mismatches_in_period: int = 0  # detections naming another frame_id than the image
    tolerance_warning: str = ""  # sync_tolerance_s against the measured frame period


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def camera_warnings(camera: CameraReport) -> list[str]:
    """The camera's conditions that hold now and deserve WARN, most urgent first."""
    found = []
    if camera.snap.bad_in_period:
        found.append(f"{camera.snap.bad_in_period} bad frame(s) this period")
    if camera.incompatible_qos_publishers:
        found.append(f"{camera.incompatible_qos_publishers} publisher(s) with incompatible QoS")
    pairing = camera.pairing
    if pairing is not None and pairing.unpaired_detections:
        found.append(f"{pairing.unpaired_detections} detection message(s) found no image")
    elif pairing is not None and pairing.unpaired_images and not pairing.paired:
        found.append(f"{pairing.unpaired_images} image(s) found no detections, none paired")
    if camera.frame_id_mismatches_in_period:
        found.append(
            f"{camera.frame_id_mismatches_in_period} detection message(s) with another "
            "frame_id than their image"
        )
    if camera.tolerance_warning:
        found.append(camera.tolerance_warning)
    return found


def node_warnings(node: NodeStatus) -> list[str]:
    found = [f"hot reload {node.model_reload}; serving {node.model}"] if node.reload_failed else []
    return found + list(node.extra.warnings)


def node_values(node: NodeStatus) -> dict[str, str]:
    batch = node.batch
    return {
        "backend": node.backend,
        "model": node.model,
        "model_reload": node.model_reload,
        "roi_source": node.roi_source,
        "lifecycle_state": node.lifecycle_state,
        "inference_errors": str(node.errors),
        "batch_inference_p50_ms": _ms(batch.inference_ms_p50),
        "batch_inference_p95_ms": _ms(batch.inference_ms_p95),
        "batch_size_p50": _ms(batch.size_p50),
        "batch_size_max": str(batch.size_max),
        "cycle_p50_ms": _ms(batch.cycle_ms_p50),
        "cycle_p95_ms": _ms(batch.cycle_ms_p95),
        **node.extra.values,
    }


def camera_values(camera: CameraReport) -> dict[str, str]:
    snap = camera.snap
    values = {
        "input_rate_hz": f"{snap.input_rate_hz:.2f}",
        "processed_rate_hz": f"{snap.processed_rate_hz:.2f}",
        "received_frames": str(snap.received),
        "processed_frames": str(snap.processed),
        "dropped_frames": str(snap.dropped),
        "bad_frames": str(snap.bad),
        "unstamped_frames": str(snap.unstamped),
        "stamp_jumps_back": str(snap.stamp_jumps_back),
        "inference_latency_p50_ms": _ms(snap.inference_ms_p50),
        "inference_latency_p95_ms": _ms(snap.inference_ms_p95),
        "stamp_to_publish_latency_p50_ms": _ms(snap.latency_ms_p50),
        "stamp_to_publish_latency_p95_ms": _ms(snap.latency_ms_p95),
        "input_topic": camera.input_topic,
        "input_qos": camera.qos,
        "incompatible_qos_events": str(camera.incompatible_qos_events),
        "incompatible_qos_publishers": str(camera.incompatible_qos_publishers),
    }
    if camera.rois is not None:
        values.update(_roi_values(camera.rois))
    if camera.pairing is not None:
        counts = camera.pairing.counts
        values.update(
            {
                "paired_frames": str(counts.paired),
                "unpaired_images": str(counts.unpaired_images),
                "unpaired_detections": str(counts.unpaired_detections),
                "waiting_images": str(counts.waiting_images),
                "waiting_detections": str(counts.waiting_detections),
            }
        )
        if camera.rois is not None:
            values["frame_id_mismatches"] = str(camera.rois.frame_id_mismatches)
            values["frame_id_refused"] = str(camera.rois.frame_id_refused)
    values.update(camera.extra)
    return values


def _roi_values(rois: RoiSnapshot) -> dict[str, str]:
    values = {
        "rois_received": str(rois.boxes),
        "rois_classified": str(rois.classified),
        "rois_published": str(rois.published),
        "rois_background": str(rois.background),
        "rois_over_max": str(rois.over_max),
        "rois_duplicate_ids": str(rois.duplicate_ids),
    }
    values.update({f"rois_rejected_{reason}": str(n) for reason, n in rois.rejected.items()})
    return values


def _status(
    name: str, found: list[str], ok_message: str, values: dict[str, str]
) -> DiagnosticStatus:
    level, message = (
        (DiagnosticStatus.WARN, "; ".join(found))
        if found
        else (
            DiagnosticStatus.OK,
            ok_message,
        )
    )
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )


def _ok_message(snap: StatsSnapshot) -> str:
    if snap.received == 0:
        return "waiting for images"
    return f"{snap.processed_rate_hz:.1f} Hz classified of {snap.input_rate_hz:.1f} Hz"


def build_diagnostics(
    names: tuple[str, Sequence[str]],
    stamp: Time,
    node: NodeStatus,
    cameras: Sequence[CameraReport],
) -> DiagnosticArray:
    """The node's status (and, with named cameras, one per camera): WARN while a warning holds.

    `names`: the node's status name and one status name per camera (ignored for the single
    unnamed camera, whose values go into the node's status).
    """
    node_name, camera_names = names
    if len(cameras) == 1 and not cameras[0].name:
        camera = cameras[0]
        found = camera_warnings(camera) + node_warnings(node)
        values = {**camera_values(camera), **node_values(node)}
        message = _node_message(node, _ok_message(camera.snap))
        statuses = [_status(node_name, found, message, values)]
        return DiagnosticArray(header=Header(stamp=stamp), status=statuses)
    camera_statuses = [
        _status(name, camera_warnings(camera), _ok_message(camera.snap), camera_values(camera))
        for name, camera in zip(camera_names, cameras, strict=True)
    ]
    warned = [c.name for c in cameras if camera_warnings(c)]
    found = node_warnings(node) + ([f"camera(s) warn: {', '.join(warned)}"] if warned else [])
    totals = _totals(cameras)
    values = {**node_values(node), **totals, "cameras": ", ".join(c.name for c in cameras)}
    message = _node_message(
        node, f"{len(cameras)} cameras, {totals['processed_frames']} frames classified"
    )
    statuses = [_status(node_name, found, message, values), *camera_statuses]
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)


def _totals(cameras: Sequence[CameraReport]) -> dict[str, str]:
    keys = ("received", "processed", "dropped", "bad", "unstamped")  # frame counts to total
    return {f"{key}_frames": str(sum(getattr(c.snap, key) for c in cameras)) for key in keys}


def _node_message(node: NodeStatus, active_message: str) -> str:
    """The node's OK message; an inactive node says so first (a node that "does nothing" until
    someone activates it is a known lifecycle surprise)."""
    if node.lifecycle_state == "active":
        return active_message
    return f"{node.lifecycle_state}: model loaded, inputs not subscribed, nothing published"


def build_unconfigured_diagnostics(
    name: str, stamp: Time, model_path: str, configure_error: str = ""
) -> DiagnosticArray:
    """An unconfigured node's status: OK while it waits for configure, ERROR after a configure
    failed (nothing can serve until the cause is fixed), with the reason."""
    level, message = DiagnosticStatus.OK, "unconfigured: waiting for configure"
    if configure_error:
        level = DiagnosticStatus.ERROR
        message = f"unconfigured: configure failed: {configure_error}"
    values = {"lifecycle_state": "unconfigured", "model_path": model_path}
    status = DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id="",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
