"""Steady labels, `unknown` and hard-frame capture in the node, over real DDS with real bundles.

Scripted frame sequences go through the node one frame at a time (each published after the
previous answer, so latest-frame-wins drops none); what the node publishes is compared with the
same frames run offline through `Classifier` + `LabelSmoother`, and with the rules themselves
(a one-frame blip is never published with switch_frames 2; a run switches after 2 frames; the
held class comes first; each ROI track has its own state; a stale track starts afresh).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from tl_perception.bundle import read_bundle, update_meta
from tl_perception.crop import Box, CropPolicy, crop_roi
from tl_perception.dataset import LOCK_FILE, SUMMARY_FILE, read_dataset, read_manifest
from tl_perception.images import read_image_file
from tl_perception.ros.labels import (
    UNKNOWN_LABEL,
    HypothesisRule,
    Label,
    LabelStage,
    UnknownThreshold,
    effective_unknown_threshold,
    label_hypotheses,
)
from tl_perception.ros.rois import policy_for
from tl_perception.smoothing import LabelSmoother, SmoothingConfig

from support.datasets import existing_dataset, write_csv
from support.helpers import color_image
from support.node_bundles import make_pixel_bundle, patch_frame
from support.node_harness import (
    Probe,
    detection_array,
    node_in_process,
    probe,
    raw_image,
    roi_node_and_probe,
    wait_for_outputs,
    wait_until,
)

RAW = {"smoothing": "none", "switch_frames": 1}
#: red x5, one green blip, red x3, a run of green x3
SEQUENCE = ["red"] * 5 + ["green"] + ["red"] * 3 + ["green"] * 3
STEP_NS = 100_000_000  # 10 Hz of stamp time: well inside track_timeout_s (1 s)
Stamp = tuple[int, int]


def stamp_of(index: int, start_s: int = 100) -> Stamp:
    ns = index * STEP_NS
    return start_s + ns // 10**9, ns % 10**9


def stamped(msg: Any, stamp: Stamp) -> Any:
    msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def answer(found: list[dict[str, Any]], stamp: Stamp) -> dict[str, Any] | None:
    for body in list(found):
        got = body["header"]["stamp"]
        if (got["sec"], got["nanosec"]) == stamp:
            return body
    return None


def play(p: Probe, frames: Sequence[np.ndarray], first: int = 0) -> list[dict[str, Any]]:
    """Whole frames, one at a time: each is published once the previous one was answered."""
    out = []
    for i, rgb in enumerate(frames):
        stamp = stamp_of(first + i)
        p.image_pub.publish(stamped(raw_image(rgb, "rgb8", 0), stamp))
        out.append(wait_until(lambda s=stamp: answer(p.results, s), 10.0))
    return out


def top(body: dict[str, Any]) -> str:
    return str(body["results"][0]["class_id"])


def pairs(results: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(r["class_id"], r["score"]) for r in results]


def colour_frames(colours: Sequence[str], seed: int = 0) -> list[np.ndarray]:
    return [color_image(c, (48, 64), seed=seed + i) for i, c in enumerate(colours)]


def mixed_frame(seed: int = 0) -> np.ndarray:
    """Left half red, right half green: the colour model is unsure (about 0.75 red)."""
    left, right = color_image("red", (48, 32), seed), color_image("green", (48, 32), seed + 1)
    return np.concatenate([left, right], axis=1)


def replay(
    classifier: Any, frames: Sequence[np.ndarray], config: SmoothingConfig
) -> list[tuple[int, np.ndarray]]:
    """What the node should publish for `frames` as one stream: (first class, scores)."""
    smoother = LabelSmoother(config)
    out = []
    for i, rgb in enumerate(frames):
        sec, ns = stamp_of(i)
        done = smoother.update("k", classifier.predict_proba([rgb])[0], sec + ns * 1e-9)
        out.append((done.class_index, done.scores))
    return out


def assert_published(
    body: dict[str, Any], expected: tuple[int, np.ndarray], names: Sequence[str]
) -> None:
    """The published class first, then the rest best first, with the (smoothed) scores."""
    first, scores = expected
    rest = [i for i in np.argsort(-scores, kind="stable") if i != first]
    order = [first, *rest]
    assert [r["class_id"] for r in body["results"]] == [names[i] for i in order]
    got = [r["score"] for r in body["results"]]
    assert got == pytest.approx([float(scores[i]) for i in order], abs=2e-6)


def set_params(node: Any, **values: Any) -> None:
    results = node.set_parameters([Parameter(k, value=v) for k, v in values.items()])
    assert all(r.successful for r in results), results


def diagnostics_where(p: Probe, check: Callable[[dict[str, str]], bool]) -> dict[str, str]:
    return wait_until(lambda: (d := p.latest_diagnostics()) and check(d) and d, 5.0)


# ------------------------------------------------------------------ the rules, without ROS
NAMES = ("red", "green", "blue")


def test_the_published_class_leads_and_unknown_leads_below_the_threshold() -> None:
    scores = np.array([0.3, 0.6, 0.1])

    def label(first: int, rule: HypothesisRule, frame_best: float = 0.6) -> Label:
        return label_hypotheses(scores, NAMES, first, rule, frame_best=frame_best)

    held = label(0, HypothesisRule(top_k=5))
    assert held == Label("red", [("red", 0.3), ("green", 0.6), ("blue", 0.1)])
    assert label(0, HypothesisRule(2)).hypotheses == [("red", 0.3), ("green", 0.6)]
    unsure = label(1, HypothesisRule(5, 0.0, 0.7))
    assert unsure.name == UNKNOWN_LABEL and unsure.unknown
    assert pairs_of(unsure) == [(UNKNOWN_LABEL, 0.4), ("green", 0.6), ("red", 0.3), ("blue", 0.1)]
    assert pairs_of(label(1, HypothesisRule(1, 0.0, 0.7))) == [(UNKNOWN_LABEL, 0.4)]
    # the frame's own (unsmoothed) best score decides, not the smoothed scores: a sure frame
    # whose smoothed score is still low is no unknown, an unsure one under a high average is
    assert not label(1, HypothesisRule(5, 0.0, 0.7), frame_best=0.95).unknown
    assert pairs_of(label(1, HypothesisRule(1, 0.0, 0.5), frame_best=0.45)) == [
        (UNKNOWN_LABEL, 0.55)
    ]
    # score_threshold: the others are filtered; a held class under it leaves no class at all,
    # so the leader can never stand in for it
    assert pairs_of(label(1, HypothesisRule(5, 0.2))) == [("green", 0.6), ("red", 0.3)]
    assert label(0, HypothesisRule(5, 0.5)) == Label("red", [])


def pairs_of(label: Label) -> list[tuple[str, float]]:
    return [(name, pytest.approx(score)) for name, score in label.hypotheses]


def test_the_unknown_threshold_comes_from_the_bundle_unless_the_parameter_says_otherwise() -> None:
    assert effective_unknown_threshold(-1.0, 0.62) == UnknownThreshold(0.62, "bundle")
    assert effective_unknown_threshold(-0.5, None).value is None  # no recorded value: never
    assert effective_unknown_threshold(0.0, 0.62) == UnknownThreshold(None, "disabled")
    assert effective_unknown_threshold(0.4, 0.62) == UnknownThreshold(0.4, "parameter")
    assert effective_unknown_threshold(-1.0, None).describe() == "off (bundle has none)"


def test_label_stage_keeps_one_state_per_camera_and_forgets_it_on_a_new_model() -> None:
    stage, model = LabelStage(), object()
    stage.begin(SmoothingConfig("none", 0.5, 2), model, HypothesisRule(5))
    red, green = np.array([0.9, 0.1, 0.0]), np.array([0.1, 0.9, 0.0])
    assert stage.smooth(0, "k", red, 1.0).first == 0
    assert stage.smooth(1, "k", green, 1.0).first == 1  # camera 1's "k" is another stream
    assert stage.smooth(0, "k", green, 1.1).first == 0  # held (switch_frames 2)
    assert stage.smooth(0, None, green, 1.1).first == 1  # no track id: never smoothed
    stage.end()
    assert stage.tracked == 2
    stage.begin(SmoothingConfig("none", 0.5, 2), object(), HypothesisRule(5))  # another model
    assert stage.smooth(0, "k", green, 1.2).first == 1
    stage.forget(0, 5.0)
    stage.end()
    assert stage.tracked == 0


@pytest.fixture(scope="module")
def classifier(color_bundle: Path) -> Any:
    from tl_perception.inference import Classifier

    return Classifier(color_bundle)


# ------------------------------------------------------------------ smoothing, full frames
def test_switch_frames_hold_a_blip_and_switch_after_a_run(
    color_bundle: Path, classifier: Any, tmp_path: Path
) -> None:
    """One node, three settings set at run time (each change forgets the state, so every
    sequence starts fresh), then a hot reload, which forgets it too."""
    names = classifier.class_names
    frames = colour_frames(SEQUENCE)
    overrides = {"model_path": str(color_bundle), "qos": "reliable", **RAW}
    with node_in_process(overrides, namespace="/sm") as node, probe(namespace="/sm") as p:
        p.wait_for_subscriber(p.image_pub)
        wait_for_outputs(node)

        # none, switch_frames 1: every frame's own top class and probabilities
        raw = play(p, frames)
        assert [top(b) for b in raw] == SEQUENCE
        for body, rgb in zip(raw, frames, strict=True):
            probs = classifier.predict_proba([rgb])[0].astype(np.float64)
            assert_published(body, (int(np.argmax(probs)), probs), names)

        # none, switch_frames 2: the blip is held back, the run switches on its 2nd frame
        set_params(node, switch_frames=2)
        held = play(p, frames, first=100)
        assert [top(b) for b in held] == ["red"] * 10 + ["green"] * 2
        blip = held[5]["results"]  # the held class leads though green scores higher
        assert [r["class_id"] for r in blip[:2]] == ["red", "green"]
        assert blip[0]["score"] < blip[1]["score"]
        expected = replay(classifier, frames, SmoothingConfig("none", 0.5, 2))
        for body, want in zip(held, expected, strict=True):
            assert_published(body, want, names)

        # the defaults (ema 0.5, switch_frames 2): smoothed scores, blip never published
        set_params(node, smoothing="ema", smoothing_alpha=0.5)
        smoothed = play(p, frames, first=200)
        labels = [top(b) for b in smoothed]
        assert labels[:10] == ["red"] * 10 and labels[-1] == "green"
        expected = replay(classifier, frames, SmoothingConfig("ema", 0.5, 2))
        for body, want in zip(smoothed, expected, strict=True):
            assert_published(body, want, names)
            assert sum(r["score"] for r in body["results"]) == pytest.approx(1.0, abs=1e-5)
        ema = "ema (alpha 0.5), switch_frames 2, track_timeout_s 1, max_tracks 1024"
        # a status published after the set (one from before it has 1 track under "none" too)
        diag = diagnostics_where(
            p, lambda d: d.get("smoothed_tracks") == "1" and d["smoothing"] == ema
        )
        assert diag["unknown_threshold"] == "off (bundle has none)"

        # a hot reload forgets the state: green right after reds is published at once
        play(p, colour_frames(["red"] * 3), first=300)
        copy = shutil.copytree(color_bundle, tmp_path / "copy")
        set_params(node, model_path=str(copy))
        wait_until(lambda: node.get_parameter("serving_model_path").value == str(copy), 30.0)
        assert top(play(p, colour_frames(["green"]), first=303)[0]) == "green"


# ------------------------------------------------------------------ smoothing, ROI tracks
ROI_SIZE = (120, 160)
TRACK_BOXES = {"a": (10, 10, 40, 40), "b": (60, 10, 40, 40), "": (110, 60, 40, 40)}


def roi_frame(colours: dict[str, str], seed: int) -> np.ndarray:
    patches = [(colours[k], *TRACK_BOXES[k]) for k in colours]
    return patch_frame(ROI_SIZE, patches, seed=seed)


def box_msg(track: str) -> tuple[str, float, float, float, float]:
    x, y, w, h = TRACK_BOXES[track]
    return track, x + w / 2, y + h / 2, float(w), float(h)


def send_roi(p: Probe, rgb: np.ndarray, tracks: Sequence[str], stamp: Stamp) -> dict[str, Any]:
    p.image_pub.publish(stamped(raw_image(rgb, "rgb8", 0), stamp))
    p.detections_pub.publish(detection_array(stamp[0], [box_msg(t) for t in tracks], stamp[1]))
    return wait_until(lambda: answer(p.default.detections, stamp), 10.0)


def test_roi_tracks_are_smoothed_independently_and_forgotten(
    color_bundle: Path, classifier: Any
) -> None:
    """Two tracks in one frame keep their own state (a's blip is held while b switches), a
    detection without an id is not smoothed, and tracks unseen for track_timeout_s start
    afresh. Defaults: ema 0.5, switch_frames 2."""
    pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs")
    script = {
        "a": ["red", "red", "red", "green", "red", "red", "red", "red"],
        "b": ["blue", "blue", "blue", "green", "green", "green", "green", "green"],
        "": ["red", "green", "red", "green", "red", "green", "red", "green"],
    }
    frames = [roi_frame({k: v[i] for k, v in script.items()}, seed=i) for i in range(8)]
    policy = policy_for(read_bundle(color_bundle))
    smoothers = {k: LabelSmoother(SmoothingConfig()) for k in ("a", "b")}
    overrides = {"model_path": str(color_bundle), "qos": "reliable", "roi_source": "detections"}
    with roi_node_and_probe(overrides, "/trk") as (node, p):
        published: dict[str, list[str]] = {k: [] for k in script}
        for i, rgb in enumerate(frames):
            body = send_roi(p, rgb, list(script), stamp_of(i))
            assert [d["id"] for d in body["detections"]] == list(script)
            for det in body["detections"]:
                key = det["id"]
                crop = crop_roi(rgb, Box.from_xywh(*TRACK_BOXES[key]), policy)
                probs = classifier.predict_proba([crop])[0].astype(np.float64)
                if key:
                    sec, ns = stamp_of(i)
                    done = smoothers[key].update(key, probs, sec + ns * 1e-9)
                    want = (done.class_index, done.scores)
                else:
                    want = (int(np.argmax(probs)), probs)
                assert_published(det, want, classifier.class_names)
                published[key].append(det["results"][0]["class_id"])
        assert published["a"] == ["red"] * 8  # its one-frame blip never shows
        assert published["b"][:4] == ["blue"] * 4 and published["b"][-1] == "green"
        assert published[""] == script[""]  # no id: every frame's own class
        diagnostics_where(p, lambda d: d.get("smoothed_tracks") == "2")

        # 2 s later (> track_timeout_s): both tracks start afresh, so no class is held
        later = roi_frame({"a": "green", "b": "blue"}, seed=20)
        body = send_roi(p, later, ["a", "b"], stamp_of(30))
        assert [d["results"][0]["class_id"] for d in body["detections"]] == ["green", "blue"]

        # ROI mode and unknown: an unsure crop is published as unknown (it is no background)
        set_params(node, smoothing="none", unknown_threshold=0.9)
        unsure = roi_frame({"b": "blue"}, seed=21)
        x, y, w, h = TRACK_BOXES["a"]
        unsure[y : y + h, x : x + w] = np.concatenate(
            [color_image("red", (h, w // 2)), color_image("green", (h, w // 2), seed=1)], axis=1
        )
        crop = crop_roi(unsure, Box.from_xywh(*TRACK_BOXES["a"]), policy)
        best = float(classifier.predict_proba([crop])[0].max())
        assert best < 0.9, "the half-red half-green crop should be unsure"
        body = send_roi(p, unsure, ["a", "b"], stamp_of(31))
        first = body["detections"][0]["results"]
        assert first[0]["class_id"] == UNKNOWN_LABEL
        assert first[0]["score"] == pytest.approx(1.0 - best, abs=2e-6)
        assert first[1]["class_id"] == "red"  # what the model leaned to follows
        assert body["detections"][1]["results"][0]["class_id"] == "blue"


# ------------------------------------------------------------------ unknown
def test_unknown_below_the_bundle_threshold_and_the_parameter_override(
    color_bundle: Path, classifier: Any, tmp_path: Path
) -> None:
    bundle = shutil.copytree(color_bundle, tmp_path / "calibrated")
    update_meta(bundle, unknown_threshold={"value": 0.9, "precision": 0.95, "coverage": 0.8})
    unsure, sure = mixed_frame(), color_image("red", (48, 64), seed=5)
    best = float(classifier.predict_proba([unsure])[0].max())
    assert 0.5 < best < 0.8, best  # the test's thresholds below rely on it
    overrides = {"model_path": str(bundle), "qos": "reliable", **RAW}
    with node_in_process(overrides, namespace="/unk") as node, probe(namespace="/unk") as p:
        p.wait_for_subscriber(p.image_pub)
        wait_for_outputs(node)
        body, known = play(p, [unsure, sure])
        assert pairs(body["results"])[0] == (UNKNOWN_LABEL, pytest.approx(1.0 - best, abs=2e-6))
        assert [r["class_id"] for r in body["results"]] == [UNKNOWN_LABEL, "red", "green", "blue"]
        assert top(known) == "red"
        diag = diagnostics_where(p, lambda d: d.get("unknown_published") == "1")
        assert diag["unknown_threshold"] == "0.9 (bundle)"
        if p.output_format == "vision_msgs":  # unknown is no model class: not in class_map
            info = wait_until(p.latest_label_info, 5.0)
            assert [c.class_name for c in info.class_map] == ["red", "green", "blue"]

        set_params(node, unknown_threshold=0.0)  # off
        assert top(play(p, [unsure], first=10)[0]) == "red"
        diagnostics_where(p, lambda d: d["unknown_threshold"] == "off (disabled)")
        set_params(node, unknown_threshold=0.5)  # below the unsure frame's best score
        assert top(play(p, [unsure], first=20)[0]) == "red"
        set_params(node, unknown_threshold=0.8, top_k=1)  # above it; top_k 1: unknown alone
        body = play(p, [unsure], first=30)[0]
        assert [r["class_id"] for r in body["results"]] == [UNKNOWN_LABEL]
        diagnostics_where(p, lambda d: d["unknown_threshold"] == "0.8 (parameter)")
        set_params(node, unknown_threshold=-1.0)  # back to the bundle's
        diagnostics_where(p, lambda d: d["unknown_threshold"] == "0.9 (bundle)")


def test_unknown_is_judged_on_the_frame_s_own_score_not_the_smoothed_one(
    color_bundle: Path, classifier: Any
) -> None:
    """The bundle chose its threshold on each val image's own best score; with smoothing on,
    the published (smoothed) score is another quantity. An unsure frame after sure ones is
    unknown although the average is high, and a sure frame after unsure ones is not, although
    the average is low."""
    sure, unsure = color_image("red", (48, 64), seed=5), mixed_frame(seed=3)
    config = SmoothingConfig()  # the node's defaults: ema 0.5, switch_frames 2
    overrides = {"model_path": str(color_bundle), "qos": "reliable", "unknown_threshold": 0.0}
    with node_in_process(overrides, namespace="/unkraw") as node, probe(namespace="/unkraw") as p:
        p.wait_for_subscriber(p.image_pub)
        wait_for_outputs(node)
        for first, frames in ((0, [sure] * 3 + [unsure]), (100, [unsure] * 3 + [sure])):
            own = float(classifier.predict_proba([frames[-1]])[0].max())
            _cls, smoothed = replay(classifier, frames, config)[-1]
            published = float(smoothed.max())
            assert abs(own - published) > 0.02, (own, published)  # the two really differ
            threshold = (own + published) / 2
            set_params(node, unknown_threshold=threshold)  # 10 s of stamps on: a fresh stream
            body = play(p, frames, first=first)[-1]
            assert (top(body) == UNKNOWN_LABEL) is (own < threshold), (own, published)


# ------------------------------------------------------------------ capture
def test_capture_writes_hard_frames_within_its_limits_and_the_loop_reads_them(
    color_bundle: Path, classifier: Any, tmp_path: Path
) -> None:
    """max_total across a restart, max_per_minute, never the sure frames; the capture is a
    dataset that read_dataset reads and that `label` + `merge` take into a dataset."""
    from tl_perception.cli import main

    capture = tmp_path / "hard"
    settings = {"capture_dir": str(capture), "capture_below": 0.9, **RAW}
    overrides = {"model_path": str(color_bundle), "qos": "reliable", **settings}
    hard = [mixed_frame(seed=10 * i) for i in range(7)]
    sure = colour_frames(["red", "blue"])
    sent: dict[Stamp, np.ndarray] = {}

    def run(limits: dict[str, int], frames: list[np.ndarray], first: int, ns: str) -> dict:
        with (
            node_in_process({**overrides, **limits}, namespace=ns) as node,
            probe(namespace=ns) as p,
        ):
            p.wait_for_subscriber(p.image_pub)
            wait_for_outputs(node)
            play(p, frames, first=first)
            sent.update({stamp_of(first + i): f for i, f in enumerate(frames)})
            offered = str(len(frames))
            diag = diagnostics_where(p, lambda d: d.get("capture_offered") == offered)
            # deactivate closes the capture: all written, the directory free for `label`
            assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
            assert len(read_manifest(capture)) == int(diag["capture_queued"]) + int(
                diag["capture_existing"]
            )
            assert not (capture / LOCK_FILE).exists()
            diagnostics_where(p, lambda d: d["capture"] == "closed")
            return diag

    diag = run({"capture_max_total": 3}, [*hard[:5], *sure], 0, "/cap1")
    assert diag["capture"] == str(capture)
    assert (diag["capture_below_threshold"], diag["capture_skipped_total_limit"]) == ("5", "2")
    assert (diag["capture_queued"], diag["capture_write_errors"]) == ("3", "0")
    # restarted, same directory: what is there counts; 1 per minute lets one more in
    limits = {"capture_max_total": 10, "capture_max_per_minute": 1}
    diag = run(limits, hard[5:], 50, "/cap2")
    assert (diag["capture_existing"], diag["capture_skipped_rate_limit"]) == ("3", "1")

    rows = read_manifest(capture)  # the node closed the capture: everything is written
    assert len(rows) == 4 and len(read_dataset(capture).samples) == 4
    for row in rows:
        stamp = divmod(int(row["stamp_ns"]), 10**9)
        assert np.array_equal(read_image_file(capture / row["path"]), sent[stamp])
        assert (row["predicted"], row["camera"], row["encoding"]) == ("red", "", "rgb8")
        assert row["topic"] in ("/cap1/image", "/cap2/image") and not row["track"]
        assert float(row["score"]) == pytest.approx(
            float(classifier.predict_proba([sent[stamp]])[0].max()), abs=1e-6
        )
    labels = write_csv(tmp_path / "labels.csv", [(r["path"], "red") for r in rows])
    assert main(["label", str(capture), "--csv", str(labels)]) == 0
    dataset = existing_dataset(tmp_path)
    before = len(read_manifest(dataset))
    assert main(["merge", str(capture), "--into", str(dataset)]) == 0
    merged = read_dataset(dataset)
    assert len(merged.samples) == before + 4 and merged.class_names == ("blue", "green", "red")


def test_capture_of_roi_crops_reuses_the_pipeline_crops_and_follows_a_reload(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Crops are those of crop_roi with the bundle's policy (box and track recorded); a reload
    to a bundle with the same policy reopens the capture, one with another policy turns it off
    (one WARN line, as at start-up: test_node_faults.py), and classification goes on."""
    pytest.importorskip("vision_msgs.msg", reason="ROI mode needs vision_msgs")
    from tl_perception.inference import Classifier

    policy = CropPolicy(context=0.25, square=True, fill="reflect", min_box=4.0)
    first = make_pixel_bundle(tmp_path / "first", policy)
    second = make_pixel_bundle(tmp_path / "second", policy, seed=1)
    other = make_pixel_bundle(tmp_path / "other", CropPolicy(context=0.0), seed=2)
    capture = tmp_path / "crops"
    overrides = {
        "model_path": str(first),
        "qos": "reliable",
        "roi_source": "detections",
        "capture_dir": str(capture),
        "capture_below": 1.0,
        **RAW,
    }
    frames = [
        np.random.default_rng(i).integers(0, 256, (*ROI_SIZE, 3), dtype=np.uint8) for i in range(3)
    ]
    tracks = ["a", "b", ""]  # "a" reaches outside the frame's edge after the context
    with roi_node_and_probe(overrides, "/rc") as (node, p):
        send_roi(p, frames[0], tracks, stamp_of(0))
        set_params(node, model_path=str(second))
        wait_until(lambda: node.get_parameter("serving_model_path").value == str(second), 30.0)
        diagnostics_where(p, lambda d: d["capture"] == str(capture) and d["model"] == str(second))
        send_roi(p, frames[1], tracks, stamp_of(1))
        set_params(node, model_path=str(other))
        wait_until(lambda: node.get_parameter("serving_model_path").value == str(other), 30.0)
        diag = diagnostics_where(p, lambda d: d["capture"].startswith("off: "))
        assert diag["_level"] == "1" and "crop" in diag["capture"], diag
        body = send_roi(p, frames[2], tracks, stamp_of(2))
        assert len(body["detections"]) == 3  # classification goes on without the capture
    warnings = [
        line
        for line in capfd.readouterr().err.splitlines()
        if "[WARN]" in line and "hard-frame capture is off" in line
    ]
    assert len(warnings) == 1 and "(model reload)" in warnings[0], warnings

    summary = read_dataset(capture)
    assert summary.crop_policy == policy
    rows = read_manifest(capture)
    expected = 0
    for k, bundle in enumerate((first, second)):
        scores = Classifier(bundle).predict_proba(
            [crop_roi(frames[k], Box.from_xywh(*TRACK_BOXES[t]), policy) for t in tracks]
        )
        expected += int((scores.max(axis=1) < 1.0).sum())
    assert len(rows) == expected >= 4
    for row in rows:
        index = (int(row["stamp_ns"]) - stamp_of(0)[0] * 10**9) // STEP_NS
        box = Box.from_xywh(*(float(row[f"box_{c}"]) for c in "xywh"))
        assert box == Box.from_xywh(*TRACK_BOXES[row["track"]])
        crop = crop_roi(frames[index], box, policy)
        assert np.array_equal(read_image_file(capture / row["path"]), crop)
    assert len({row["model"] for row in rows}) == 2  # one fingerprint per bundle
    assert (capture / SUMMARY_FILE).is_file()
