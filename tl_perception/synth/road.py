"""Road scenes for region-of-interest work: full camera frames with several small objects at once.

A drive is a sequence of road segments (one background each, zooming slowly to suggest forward
motion). In each segment, objects appear as tracks: a traffic sign beside the road grows from
about 16 to up to 96 px tall as the car approaches (leaving the frame at the side or at its
largest), a vehicle in the lane ahead grows or shrinks. At most four signs and two vehicles are
in view at once, and tracks never overlap, so every ground-truth box shows its own object only.

`plan_road` fixes every track from the seed (no rendering beyond the segment backgrounds);
`render_road_frame` draws one frame and returns its ground truth: the tight box of each object's
rendered alpha mask, so a truth box is exactly where the object's pixels are. Each frame depends
on (seed, segment, track, frame) only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from tl_perception.crop import Box
from tl_perception.errors import TlPerceptionError
from tl_perception.synth.scene import TEMPLATE_SIZE, road_background, zoom_about
from tl_perception.synth.signs import SIGN_CLASSES, draw_sign
from tl_perception.synth.vehicles import draw_vehicle_object

VEHICLE = "vehicle"
ROAD_CLASSES: tuple[str, ...] = (*SIGN_CLASSES, VEHICLE)
ROAD_SIZE = (640, 480)
MIN_ROAD_SIZE = (64, 48)
SEGMENT_FRAMES = (40, 80)  # one background, then the road changes
TRACK_FRAMES = (8, 30)  # frames a track is planned for (cut when it leaves the frame)
MIN_TRACK_FRAMES = 5
MAX_IN_VIEW = {"sign": 4, "vehicle": 2}
SPAWN_PROBABILITY = {"sign": 0.15, "vehicle": 0.05}  # per frame, while there is room
SIGN_HEIGHT_PX = (16.0, 96.0)  # nearest/farthest sign height at 480 px; smaller frames: <=45%
MAX_ROTATION_DEG = 4.0
OVERLAP_MARGIN_PX = 3.0


@dataclass(frozen=True)
class Segment:
    """Frames [start, start + length) share one background with this vanishing point."""

    index: int
    start: int
    length: int
    vanishing_point: tuple[float, float]


@dataclass(frozen=True)
class Track:
    """One physical object in view for frames [start, start + length) of one segment.

    Its canvas side (px) follows 1/side linear in time from `side0` (frame `start`) to `side1`
    (frame `start + span`), as a pinhole camera sees an object at constant closing speed; its
    centre sits `lateral` and `rise` canvas sides right of and above the vanishing point
    (`lateral` < 0: left of the road). A track leaving the frame early has `length` <= `span`.
    """

    id: str
    number: int
    label: str
    category: str  # "sign" or "vehicle": what a generic detector would call it
    segment: int
    start: int
    length: int
    span: int
    side0: float
    side1: float
    lateral: float
    rise: float
    rotation_deg: float

    def frames(self) -> range:
        return range(self.start, self.start + self.length)

    def side(self, frame: int) -> float:
        t = (frame - self.start) / max(self.span, 1)
        return 1.0 / (1.0 / self.side0 + (1.0 / self.side1 - 1.0 / self.side0) * t)

    def centre(self, frame: int, vp: tuple[float, float]) -> tuple[float, float]:
        side = self.side(frame)
        return vp[0] + self.lateral * side, vp[1] - self.rise * side

    def extent(self, frame: int, vp: tuple[float, float]) -> tuple[float, float, float, float]:
        """Nominal x0, y0, x1, y1 of the (rotated) canvas: the object lies inside it."""
        side = self.side(frame)
        theta = math.radians(self.rotation_deg)
        half = 0.5 * side * (abs(math.cos(theta)) + abs(math.sin(theta))) + 1.0
        cx, cy = self.centre(frame, vp)
        return cx - half, cy - half, cx + half, cy + half


@dataclass(frozen=True)
class RoadPlan:
    """A whole drive: its segments and tracks, and the frame size."""

    size: tuple[int, int]  # (width, height)
    frames: int
    seed: int
    segments: tuple[Segment, ...]
    tracks: tuple[Track, ...]

    def segment_of(self, frame: int) -> Segment:
        for segment in self.segments:
            if segment.start <= frame < segment.start + segment.length:
                return segment
        raise IndexError(frame)

    def tracks_in(self, frame: int) -> list[Track]:
        return [t for t in self.tracks if t.start <= frame < t.start + t.length]


@dataclass(frozen=True)
class TruthObject:
    """Ground truth of one object in one frame: its track, class and tight box."""

    id: str
    label: str
    category: str
    box: Box


@dataclass(frozen=True)
class RoadFrame:
    index: int
    rgb: np.ndarray
    truth: list[TruthObject]


def check_road_size(size: tuple[int, int]) -> None:
    if size[0] < MIN_ROAD_SIZE[0] or size[1] < MIN_ROAD_SIZE[1]:
        raise TlPerceptionError(
            f"--kind road needs --size of at least {MIN_ROAD_SIZE[0]}x{MIN_ROAD_SIZE[1]}, "
            f"got {size[0]}x{size[1]}"
        )


def plan_road(classes: Sequence[str], frames: int, seed: int, size: tuple[int, int]) -> RoadPlan:
    """Segments and tracks of a drive; deterministic for `seed`. `classes` from ROAD_CLASSES."""
    if frames <= 0:
        raise TlPerceptionError(f"--frames must be positive, got {frames}")
    check_road_size(size)
    rng = np.random.default_rng([seed, 0])
    segments = _plan_segments(frames, seed, size, rng)
    planner = _TrackPlanner(size, [c for c in classes if c != VEHICLE], VEHICLE in classes, rng)
    for segment in segments:
        planner.fill(segment)
    return RoadPlan(size, frames, seed, tuple(segments), tuple(planner.tracks))


def _plan_segments(
    frames: int, seed: int, size: tuple[int, int], rng: np.random.Generator
) -> list[Segment]:
    segments: list[Segment] = []
    position = 0
    while position < frames:
        length = int(rng.integers(SEGMENT_FRAMES[0], SEGMENT_FRAMES[1] + 1))
        length = min(length, frames - position)
        _bg, vp = road_background(size[0], size[1], _segment_rng(seed, len(segments)))
        segments.append(Segment(len(segments), position, length, vp))
        position += length
    return segments


def _segment_rng(seed: int, segment: int) -> np.random.Generator:
    return np.random.default_rng([seed, 10, segment])


class _TrackPlanner:
    """Spawns tracks frame by frame while there is room, keeping them apart and in the frame."""

    def __init__(
        self,
        size: tuple[int, int],
        sign_classes: list[str],
        vehicles: bool,
        rng: np.random.Generator,
    ) -> None:
        self.size = size
        self.sign_classes = sign_classes
        self.vehicles = vehicles
        self.rng = rng
        self.tracks: list[Track] = []
        self._order: list[str] = []
        self._boxes: dict[int, list[tuple[str, tuple[float, float, float, float]]]] = {}
        height = size[1]
        self.sign_max = min(SIGN_HEIGHT_PX[1], 0.45 * height)
        self.sign_min = min(SIGN_HEIGHT_PX[0], self.sign_max / 2)

    def fill(self, segment: Segment) -> None:
        for offset in range(segment.length - MIN_TRACK_FRAMES + 1):
            frame = segment.start + offset
            if self.sign_classes and self.rng.random() < SPAWN_PROBABILITY["sign"]:
                self._try(self._sign(segment, frame), segment)
            if self.vehicles and self.rng.random() < SPAWN_PROBABILITY["vehicle"]:
                self._try(self._vehicle(segment, frame), segment)

    def _next_label(self) -> str:
        if not self._order:
            self._order = [
                self.sign_classes[i] for i in self.rng.permutation(len(self.sign_classes))
            ]
        return self._order[-1]

    def _length(self, segment: Segment, frame: int) -> tuple[int, int]:
        """(frames in the segment, span of the approach): a track may end with its segment."""
        span = int(self.rng.integers(TRACK_FRAMES[0], TRACK_FRAMES[1] + 1)) - 1
        return min(span + 1, segment.start + segment.length - frame), span

    def _sign(self, segment: Segment, frame: int) -> Track:
        rng = self.rng
        length, span = self._length(segment, frame)
        side0 = float(rng.uniform(self.sign_min, 1.75 * self.sign_min))
        side1 = float(rng.uniform(max(0.5 * self.sign_max, 1.3 * side0), self.sign_max))
        right = rng.random() < 0.75
        return Track(
            id="",
            number=len(self.tracks),
            label=self._next_label(),
            category="sign",
            segment=segment.index,
            start=frame,
            length=length,
            span=span,
            side0=side0,
            side1=max(side1, side0),
            lateral=float(rng.uniform(1.8, 4.5)) * (1.0 if right else -1.0),
            rise=float(rng.uniform(0.2, 1.1)),
            rotation_deg=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        )

    def _vehicle(self, segment: Segment, frame: int) -> Track:
        rng = self.rng
        length, span = self._length(segment, frame)
        big = min(140.0, 0.5 * self.size[1])
        near = float(rng.uniform(0.5 * big, big))
        far = float(rng.uniform(0.2 * big, 0.4 * big))
        approaching = rng.random() < 0.6
        return Track(
            id="",
            number=len(self.tracks),
            label=VEHICLE,
            category="vehicle",
            segment=segment.index,
            start=frame,
            length=length,
            span=span,
            side0=far if approaching else near,
            side1=near if approaching else far,
            lateral=float(rng.uniform(-0.35, 0.35)),
            rise=-0.25,  # the wheels stand on the road below the horizon
            rotation_deg=0.0,
        )

    def _try(self, track: Track, segment: Segment) -> None:
        """Keep the track (cut to the frames it is fully in view) if it has room everywhere."""
        width, height = self.size
        vp = segment.vanishing_point
        length = 0
        for frame in track.frames():
            x0, y0, x1, y1 = track.extent(frame, vp)
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                break  # moving away from the vanishing point: it never comes back in
            length += 1
        if length < MIN_TRACK_FRAMES:
            return
        track = replace(track, length=length, id=f"obj-{track.number}")
        limit = MAX_IN_VIEW[track.category]
        for frame in track.frames():
            extent = track.extent(frame, vp)
            others = self._boxes.get(frame, [])
            if sum(1 for cat, _e in others if cat == track.category) >= limit:
                return
            if any(_overlap(extent, e) for _cat, e in others):
                return
        for frame in track.frames():
            self._boxes.setdefault(frame, []).append((track.category, track.extent(frame, vp)))
        if track.category == "sign":
            self._order.pop()
        self.tracks.append(track)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    m = OVERLAP_MARGIN_PX
    return a[0] < b[2] + m and b[0] < a[2] + m and a[1] < b[3] + m and b[1] < a[3] + m


@dataclass(frozen=True)
class _Light:
    """Photometrics of one segment (like scene.Look's)."""

    gain: float
    gamma: float
    cast: np.ndarray
    noise_sigma: float


def _segment_light(seed: int, segment: int) -> _Light:
    rng = np.random.default_rng([seed, 11, segment])
    return _Light(
        gain=float(rng.uniform(0.7, 1.2)),
        gamma=float(rng.uniform(0.85, 1.2)),
        cast=rng.uniform(0.92, 1.08, size=3).astype(np.float32),
        noise_sigma=float(rng.uniform(2.0, 7.0)),
    )


@dataclass(frozen=True)
class _Sprite:
    """A track's object, drawn once: RGB and alpha canvases, and its blur."""

    rgb: np.ndarray
    alpha: np.ndarray
    blur_sigma: float


def _sprite(plan: RoadPlan, track: Track) -> _Sprite:
    rng = np.random.default_rng([plan.seed, 1, track.number])
    if track.category == "sign":
        rgb, mask = draw_sign(track.label, TEMPLATE_SIZE, rng)
    else:
        rgb, mask = draw_vehicle_object(track.label, TEMPLATE_SIZE, rng)
    blur = float(rng.choice([0.0, 0.0, rng.uniform(0.3, 0.9)]))
    return _Sprite(rgb, mask.astype(np.float32) / 255.0, blur)


def road_frames(plan: RoadPlan) -> Iterator[RoadFrame]:
    """Render every frame of the plan, in order (one background and sprite set held at a time)."""
    cache = _RenderCache(plan)
    for index in range(plan.frames):
        yield cache.render(index, draw_objects=True)


def render_road_frame(plan: RoadPlan, index: int, draw_objects: bool = True) -> RoadFrame:
    """Frame `index` alone. `draw_objects=False` renders the empty road under the same light and
    noise: its difference to the full frame is exactly the objects and their poles."""
    return _RenderCache(plan).render(index, draw_objects)


class _RenderCache:
    """Keeps the current segment's background and the sprites of the tracks in view."""

    def __init__(self, plan: RoadPlan) -> None:
        self.plan = plan
        self._segment = -1
        self._background: np.ndarray | None = None
        self._light: _Light | None = None
        self._sprites: dict[int, _Sprite] = {}

    def render(self, index: int, draw_objects: bool) -> RoadFrame:
        plan = self.plan
        segment = plan.segment_of(index)
        if segment.index != self._segment:
            self._background, _vp = road_background(
                plan.size[0], plan.size[1], _segment_rng(plan.seed, segment.index)
            )
            self._light = _segment_light(plan.seed, segment.index)
            self._segment = segment.index
            self._sprites = {}
        assert self._background is not None and self._light is not None
        progress = (index - segment.start) / max(segment.length - 1, 1)
        vp = segment.vanishing_point
        frame = zoom_about(self._background, vp, 1.0 + 0.25 * progress)
        truth: list[TruthObject] = []
        if draw_objects:
            tracks = sorted(plan.tracks_in(index), key=lambda t: t.side(index))
            for track in tracks:
                if track.category == "sign":
                    _draw_pole(frame, track, index, vp)
            for track in tracks:
                sprite = self._sprites.get(track.number)
                if sprite is None:
                    sprite = self._sprites[track.number] = _sprite(plan, track)
                box = _draw_sprite(frame, sprite, track, index, vp)
                if box is not None:
                    truth.append(TruthObject(track.id, track.label, track.category, box))
        rgb = _finish(frame, self._light, np.random.default_rng([plan.seed, 2, index]))
        return RoadFrame(index, rgb, truth)


def _draw_pole(frame: np.ndarray, track: Track, index: int, vp: tuple[float, float]) -> None:
    side = track.side(index)
    cx, cy = track.centre(index, vp)
    ground = min(frame.shape[0], int(vp[1] + 1.6 * side))
    half = max(1.0, 0.035 * side)
    if ground > cy:
        cv2.rectangle(
            frame, (int(cx - half), int(cy)), (int(cx + half), ground), (120.0, 120.0, 125.0), -1
        )


def _draw_sprite(
    frame: np.ndarray, sprite: _Sprite, track: Track, index: int, vp: tuple[float, float]
) -> Box | None:
    """Composite the sprite; returns the tight box of its alpha >= 0.5 (None when empty)."""
    height, width = frame.shape[:2]
    side = track.side(index)
    n = max(2, round(side))
    flags = cv2.INTER_AREA if n < TEMPLATE_SIZE else cv2.INTER_LINEAR
    rgb = cv2.resize(sprite.rgb, (n, n), interpolation=flags).astype(np.float32)
    alpha = cv2.resize(sprite.alpha, (n, n), interpolation=flags)
    x0, y0, x1, y1 = track.extent(index, vp)
    px0, py0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    px1, py1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    cx, cy = track.centre(index, vp)
    # canvas pixel -> patch pixel: scale to `side`, rotate about the centre, place at (cx, cy).
    matrix = cv2.getRotationMatrix2D((n / 2, n / 2), -track.rotation_deg, side / n)
    matrix[:, 2] += np.array([cx - px0 - n / 2, cy - py0 - n / 2])
    size = (px1 - px0, py1 - py0)
    obj = cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR)
    if sprite.blur_sigma > 0:
        obj = cv2.GaussianBlur(obj, (0, 0), sprite.blur_sigma)
        mask = cv2.GaussianBlur(mask, (0, 0), sprite.blur_sigma)
    patch = frame[py0:py1, px0:px1]
    patch[:] = patch * (1.0 - mask[..., None]) + obj * mask[..., None]
    rows = np.flatnonzero((mask >= 0.5).any(axis=1))
    cols = np.flatnonzero((mask >= 0.5).any(axis=0))
    if rows.size == 0:
        return None
    return Box.from_xywh(
        px0 + cols[0], py0 + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1
    )


def _finish(frame: np.ndarray, light: _Light, rng: np.random.Generator) -> np.ndarray:
    out = np.power(np.clip(frame, 0, 255) / 255.0, light.gamma) * 255.0
    out = out * light.gain * light.cast
    out = out + rng.standard_normal(size=out.shape, dtype=np.float32) * light.noise_sigma
    finished: np.ndarray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return finished
