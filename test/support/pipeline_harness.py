"""The node's pipeline without a graph: real cameras, a real classifier, no DDS.

`Rig` builds what a configured node builds (cameras on one `LatestFrames` board, a `Pipeline`
over them) from a `NodeConfig`, with a `PipelineContext` of its own: the config it holds, the
classifier it is given, a clock the test sets and a logger that keeps every line. Frames go in
through the cameras' own callbacks (`on_image`, `on_detections`) and one `cycle` classifies
what is waiting, exactly as the worker would. The cameras are never opened: `RecordingCamera`
keeps what the pipeline publishes (real vision_msgs or JSON messages) instead of sending it.
These tests prove pipeline logic fast; the DDS tests prove the node end to end.
"""

from __future__ import annotations

from typing import Any

from tl_perception.ros.camera import Camera, CameraConfig
from tl_perception.ros.config import NodeConfig
from tl_perception.ros.handoff import LatestFrames
from tl_perception.ros.hard_frames import HardFrames
from tl_perception.ros.messages import (
    classification_to_dict,
    detections_to_dict,
    resolve_output_format,
)
from tl_perception.ros.pipeline import Pipeline, PipelineContext


class Logs:
    """A logger that keeps its lines (the pipeline and cameras log through it)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warning(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))

    def having(self, words: str, level: str = "warning") -> list[str]:
        return [text for lvl, text in self.lines if lvl == level and words in text]


class RecordingCamera(Camera):
    """A camera that keeps what the pipeline publishes on it, as dicts of the JSON shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[Any] = []
        self.overlays: list[Any] = []
        self.overlay_subscribed = False

    @property
    def is_open(self) -> bool:
        return True

    def publish_result(self, msg: Any) -> None:
        self.published.append(msg)

    def overlay_wanted(self) -> bool:
        return self.overlay_subscribed

    def publish_overlay(self, msg: Any) -> None:
        self.overlays.append(msg)

    def bodies(self) -> list[dict[str, Any]]:
        """Every published result as its JSON shape (either format)."""
        read = detections_to_dict if self.config.crops_rois else classification_to_dict
        return [read(msg) for msg in self.published]

    def body_for(self, sec: int) -> dict[str, Any] | None:
        return next((b for b in self.bodies() if b["header"]["stamp"]["sec"] == sec), None)


class Rig:
    """Cameras and a pipeline as a configured node has them, driven by the test."""

    def __init__(
        self,
        classifier: Any,
        config: NodeConfig | None = None,
        capture: HardFrames | None = None,
        output_format: str = "auto",
    ) -> None:
        self.config = config or NodeConfig()
        self.classifier = classifier
        self.now_ns = 0
        self.logs = Logs()
        names = list(self.config.cameras) or [""]
        self.frames: LatestFrames[Any] = LatestFrames(len(names))
        camera_config = CameraConfig.of(self.config, resolve_output_format(output_format))
        self.cameras = [
            RecordingCamera(i, name, camera_config, self.frames, self.logs, self._must_match)
            for i, name in enumerate(names)
        ]
        context = PipelineContext(
            classifier=lambda: self.classifier,
            config=lambda: self.config,
            now_ns=lambda: self.now_ns,
            logger=self.logs,
            hard_frames=capture,
        )
        self.pipeline = Pipeline(self.cameras, self.frames, context)

    def _must_match(self) -> bool:
        return self.config.frame_id_must_match

    @property
    def camera(self) -> RecordingCamera:
        """The first (with `cameras` empty: the only) camera."""
        return self.cameras[0]

    def set(self, **values: Any) -> None:
        """A run-time parameter set, as the node applies it (ROS values)."""
        self.config = self.config.with_changes(values)

    def cycle(self) -> int:
        """One worker cycle over what is waiting; the number of frames classified."""
        return self.pipeline.process(self.frames.take_all(timeout=0.0))

    def books(self, index: int = 0) -> tuple[int, int, int, int, int]:
        """Camera `index`'s (received, processed, bad, dropped) and the pipeline's errors."""
        snap = self.cameras[index].stats.snapshot()
        return snap.received, snap.processed, snap.bad, snap.dropped, self.pipeline.errors


def rig(classifier: Any, capture: HardFrames | None = None, **values: Any) -> Rig:
    """A `Rig` whose config is the defaults with `values` (ROS values) applied."""
    return Rig(classifier, NodeConfig.from_values(values), capture)
