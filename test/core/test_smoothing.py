"""LabelSmoother and the flicker/delay metrics on scripted sequences with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from tl_perception.errors import TlPerceptionError
from tl_perception.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_TRACKS,
    DEFAULT_MODE,
    DEFAULT_SWITCH_FRAMES,
    DEFAULT_TRACK_TIMEOUT_S,
    LabelSmoother,
    Smoothed,
    SmoothingConfig,
)
from tl_perception.smoothing_metrics import (
    LabelSequence,
    flicker_per_second,
    label_accuracy,
    steady_runs,
    switch_delay_frames,
)

DT = 0.1  # 10 Hz


def onehot(index: int, classes: int = 3, peak: float = 0.9) -> np.ndarray:
    rest = (1.0 - peak) / (classes - 1)
    vec = np.full(classes, rest)
    vec[index] = peak
    return vec


def feed(smoother: LabelSmoother, classes: list[int], key: str = "cam") -> list[Smoothed]:
    """One frame per entry, 10 Hz from t = 0."""
    return [smoother.update(key, onehot(c), i * DT) for i, c in enumerate(classes)]


def published(results: list[Smoothed]) -> list[int]:
    return [r.class_index for r in results]


# --- config ---------------------------------------------------------------------------------


def test_defaults_come_from_the_constants() -> None:
    cfg = SmoothingConfig()
    assert (cfg.mode, cfg.alpha, cfg.switch_frames, cfg.track_timeout_s) == (
        DEFAULT_MODE,
        DEFAULT_ALPHA,
        DEFAULT_SWITCH_FRAMES,
        DEFAULT_TRACK_TIMEOUT_S,
    )


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"mode": "median"}, "smoothing"),
        ({"mode": None}, "smoothing"),
        ({"alpha": 0.0}, "smoothing_alpha"),
        ({"alpha": 1.5}, "smoothing_alpha"),
        ({"alpha": float("nan")}, "smoothing_alpha"),
        ({"alpha": True}, "smoothing_alpha"),
        ({"alpha": "0.5"}, "smoothing_alpha"),
        ({"switch_frames": 0}, "switch_frames"),
        ({"switch_frames": 2.0}, "switch_frames"),
        ({"switch_frames": True}, "switch_frames"),
        ({"track_timeout_s": 0.0}, "track_timeout_s"),
        ({"track_timeout_s": float("inf")}, "track_timeout_s"),
        ({"track_timeout_s": -1}, "track_timeout_s"),
        ({"max_tracks": 0}, "max_tracks"),
        ({"max_tracks": 2.0}, "max_tracks"),
    ],
)
def test_invalid_config_is_one_line_naming_the_parameter(kwargs: dict, names: str) -> None:
    with pytest.raises(TlPerceptionError) as info:
        SmoothingConfig(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(names)


def test_valid_edges_are_accepted() -> None:
    SmoothingConfig(mode="none", alpha=1.0, switch_frames=1, track_timeout_s=0.001)
    SmoothingConfig(alpha=1, track_timeout_s=5)  # ints are numbers too


# --- hysteresis -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5])
def test_a_blip_of_n_minus_1_frames_is_held(n: int) -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=n))
    results = feed(smoother, [0] * 4 + [1] * (n - 1) + [0] * 4)
    assert published(results) == [0] * len(results)
    assert [r.held for r in results] == [False] * 4 + [True] * (n - 1) + [False] * 4


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_a_new_class_is_published_after_leading_n_frames(n: int) -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=n))
    results = feed(smoother, [0] * 4 + [1] * 8)
    assert published(results) == [0] * (4 + n - 1) + [1] * (8 - n + 1)


def test_the_streak_restarts_when_the_leader_changes() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=3))
    # 1, 1, 2, 2: no class led 3 frames in a row; then 2 leads a third frame and wins
    results = feed(smoother, [0, 0, 1, 1, 2, 2, 2])
    assert published(results) == [0, 0, 0, 0, 0, 0, 2]
    # back to the published class in between resets the streak too
    results = feed(LabelSmoother(SmoothingConfig(mode="none", switch_frames=3)), [0, 1, 1, 0, 1])
    assert published(results) == [0] * 5


def test_the_first_frame_of_a_key_is_published_at_once() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5))
    first = smoother.update("cam", onehot(2), 0.0)
    assert (first.class_index, first.held) == (2, False)


def test_held_result_scores_stay_the_distribution() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=3))
    smoother.update("cam", onehot(0), 0.0)
    held = smoother.update("cam", onehot(1), 0.1)
    assert held.held and held.class_index == 0
    assert int(np.argmax(held.scores)) == 1
    assert held.score == pytest.approx(0.05)


# --- EMA ------------------------------------------------------------------------------------


def test_ema_follows_the_recurrence_and_stays_a_distribution() -> None:
    alpha = 0.3
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=alpha, switch_frames=1))
    rng = np.random.default_rng(0)
    frames = rng.dirichlet(np.ones(4), size=30)
    expected = frames[0].copy()
    for i, probs in enumerate(frames):
        if i:
            expected = alpha * probs + (1 - alpha) * expected
        out = smoother.update("cam", probs, i * DT)
        np.testing.assert_allclose(out.scores, expected, rtol=0, atol=1e-12)
        assert out.scores.sum() == pytest.approx(1.0, abs=1e-12)
        assert out.class_index == int(np.argmax(expected))


def test_ema_converges_to_a_steady_input() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.5, switch_frames=1))
    target = onehot(2)
    smoother.update("cam", onehot(0), 0.0)
    for i in range(1, 40):
        out = smoother.update("cam", target, i * DT)
    np.testing.assert_allclose(out.scores, target, atol=1e-9)
    assert out.class_index == 2


def test_ema_delays_the_switch_by_the_time_the_new_class_needs_to_lead() -> None:
    # 0.9/0.05 one-hots, alpha 0.4: class 1 trails after its 1st frame (0.39 < 0.56) and
    # leads from its 2nd (0.594 > 0.356)
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.4, switch_frames=1))
    results = feed(smoother, [0] * 6 + [1] * 6)
    assert published(results) == [0] * 7 + [1] * 5
    # with switch_frames 2 it also has to lead a second frame
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.4, switch_frames=2))
    assert published(feed(smoother, [0] * 6 + [1] * 6)) == [0] * 8 + [1] * 4


def test_ema_absorbs_a_one_frame_blip_without_hysteresis() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.4, switch_frames=1))
    results = feed(smoother, [0] * 5 + [1] + [0] * 5)
    assert published(results) == [0] * 11
    assert not any(r.held for r in results)


def test_none_passes_through_exactly() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=1))
    assert smoother.config.passes_through
    rng = np.random.default_rng(1)
    frames = rng.dirichlet(np.ones(5), size=50).astype(np.float32)
    for i, probs in enumerate(frames):
        out = smoother.update("cam", probs, i * DT)
        assert np.array_equal(out.scores, probs)
        assert out.class_index == int(np.argmax(probs))
        assert not out.held


def test_returned_scores_are_copies() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.5, switch_frames=1))
    probs = onehot(0)
    out = smoother.update("cam", probs, 0.0)
    out.scores[:] = 0.0
    probs[:] = 0.0
    nxt = smoother.update("cam", onehot(0), 0.1)
    np.testing.assert_allclose(nxt.scores, onehot(0))


# --- keys, time, classes --------------------------------------------------------------------


def test_keys_are_independent() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=2))
    smoother.update("front", onehot(0), 0.0)
    smoother.update("front/track/7", onehot(1), 0.0)
    assert smoother.update("front", onehot(1), 0.1).class_index == 0  # held
    assert smoother.update("front/track/7", onehot(1), 0.1).class_index == 1
    assert sorted(smoother.keys()) == ["front", "front/track/7"]


def test_a_key_not_updated_for_the_timeout_is_forgotten() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5, track_timeout_s=1.0))
    smoother.update("a", onehot(0), 0.0)
    smoother.update("b", onehot(0), 0.0)
    assert smoother.forget_older_than(1.0) == 0  # exactly the timeout: kept
    assert len(smoother) == 2
    assert smoother.forget_older_than(1.01) == 2
    assert len(smoother) == 0


def test_update_forgets_stale_keys_and_restarts_a_stale_one() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5, track_timeout_s=1.0))
    smoother.update("a", onehot(0), 0.0)
    smoother.update("b", onehot(0), 0.0)
    smoother.update("a", onehot(0), 0.9)
    # b was last seen 1.5 s ago: the update of a drops it
    smoother.update("a", onehot(0), 1.5)
    assert smoother.keys() == ["a"]
    # a comes back after 2 s: a fresh start publishes the new class at once, no hold
    out = smoother.update("a", onehot(2), 3.5)
    assert (out.class_index, out.held) == (2, False)


def test_a_key_within_the_timeout_keeps_its_state() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5, track_timeout_s=1.0))
    smoother.update("a", onehot(0), 0.0)
    out = smoother.update("a", onehot(2), 0.95)
    assert (out.class_index, out.held) == (0, True)


def test_backward_stamps_restart_the_key() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="ema", alpha=0.2, switch_frames=5))
    feed(smoother, [0] * 10)  # t = 0.0 .. 0.9
    # a bag loop: the stamp jumps back to 0.0; the old state must not hold the new drive
    out = smoother.update("cam", onehot(1), 0.0)
    assert (out.class_index, out.held) == (1, False)
    np.testing.assert_allclose(out.scores, onehot(1))
    # equal stamps are not "backwards": no restart, the EMA still leans to class 1
    again = smoother.update("cam", onehot(0), 0.0)
    assert (again.class_index, again.held) == (1, False)


def test_a_bag_loop_drops_keys_from_the_future() -> None:
    smoother = LabelSmoother(SmoothingConfig(track_timeout_s=1.0))
    smoother.update("track/1", onehot(0), 100.0)
    smoother.update("track/2", onehot(0), 100.0)
    smoother.update("track/3", onehot(0), 0.5)  # the bag started again
    assert smoother.keys() == ["track/3"]


def test_a_jump_back_restarts_every_key_not_only_the_one_that_saw_it() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=3, track_timeout_s=5.0))
    for t in (10.0, 10.1):
        smoother.update("a", onehot(0), t)
        smoother.update("b", onehot(0), t)
    out = smoother.update("a", onehot(1), 9.0)  # the simulator was reset
    assert (out.class_index, out.held) == (1, False)
    assert smoother.keys() == ["a"] and smoother.restarts == 1
    # b's first frame on the new clock is published at once too, not held by the old state
    assert smoother.update("b", onehot(2), 9.0).class_index == 2


def test_tracks_are_capped_least_recently_seen_first_when_stamps_never_advance() -> None:
    """Unstamped frames (stamp 0) never time a track out and a detector may invent an id per
    box: the state stays bounded, the oldest keys go first, and a key in use is kept."""
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=2, max_tracks=64))
    smoother.update("steady", onehot(0), 0.0)
    for i in range(5000):
        smoother.update(f"box{i}", onehot(1), 0.0)
        if i % 10 == 0:
            smoother.update("steady", onehot(0), 0.0)
    assert len(smoother) == 64 and smoother.evicted == 5000 + 1 - 64
    kept = smoother.keys()
    assert "steady" in kept and "box0" not in kept and kept[-1] == "box4999"
    # the default cap holds too
    default = LabelSmoother()
    for i in range(DEFAULT_MAX_TRACKS + 10):
        default.update(str(i), onehot(0), 0.0)
    assert len(default) == DEFAULT_MAX_TRACKS


def test_another_number_of_classes_resets_every_key() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5))
    smoother.update("a", onehot(0, classes=3), 0.0)
    smoother.update("b", onehot(0, classes=3), 0.0)
    out = smoother.update("a", onehot(4, classes=5), 0.1)
    assert (out.class_index, out.held) == (4, False)
    assert smoother.keys() == ["a"]


def test_reset_forgets_everything() -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=5))
    smoother.update("a", onehot(0), 0.0)
    smoother.reset()
    assert len(smoother) == 0
    assert smoother.update("a", onehot(1), 0.1).class_index == 1


@pytest.mark.parametrize(
    ("probs", "stamp"),
    [
        (np.zeros((2, 3)), 0.0),
        (np.zeros(0), 0.0),
        (np.array([0.5, np.nan, 0.5]), 0.0),
        (np.array([0.5, 0.5]), float("nan")),
    ],
)
def test_bad_inputs_raise_and_leave_the_state(probs: np.ndarray, stamp: float) -> None:
    smoother = LabelSmoother(SmoothingConfig(mode="none", switch_frames=2))
    smoother.update("a", onehot(0, classes=2), 0.0)
    with pytest.raises(ValueError):
        smoother.update("a", probs, stamp)
    assert smoother.keys() == ["a"]
    assert smoother.update("a", onehot(1, classes=2), 0.1).held


# --- metrics --------------------------------------------------------------------------------


def seq(truth: str, shown: str) -> LabelSequence:
    """One character per frame at 10 Hz; '.' = no label."""
    assert len(truth) == len(shown)

    def labels(text: str) -> list[str | None]:
        return [None if ch == "." else ch for ch in text]

    return LabelSequence([i * DT for i in range(len(truth))], labels(truth), labels(shown))


def test_steady_runs_skip_unlabelled_frames() -> None:
    assert steady_runs([None, "a", "a", None, "b", "a", "a"]) == [(1, 3), (4, 5), (5, 7)]
    assert steady_runs([]) == []


def test_perfect_output_has_no_flicker_and_no_delay() -> None:
    s = seq("aaaaabbbbb", "aaaaabbbbb")
    assert flicker_per_second(s) == 0.0
    delay = switch_delay_frames(s)
    assert (delay.changes, delay.never, delay.mean_frames, delay.p95_frames) == (1, 0, 0.0, 0.0)
    assert label_accuracy(s) == 1.0


def test_flicker_counts_changes_inside_runs_but_not_the_switch() -> None:
    # run a (10 frames, 0.9 s of pairs): a->b->a = 2 changes. run b: late switch at frame 12
    # (not flicker), then b->a->b = 2 more. 4 changes over 0.9 + 0.9 s.
    s = seq("aaaaaaaaaabbbbbbbbbb", "aaabaaaaaaaabbbbabbb")
    assert flicker_per_second(s) == pytest.approx(4 / 1.8)
    delay = switch_delay_frames(s)
    assert (delay.changes, delay.never, delay.mean_frames) == (1, 0, 2.0)


def test_wandering_before_the_switch_is_flicker() -> None:
    # run b: a -> c -> b; the change to c is flicker, the change to b is the switch
    s = seq("aaaabbbb", "aaaaacbb")
    assert flicker_per_second(s) == pytest.approx(1 / 0.6)  # run a: 0.3 s, run b: 0.3 s
    assert switch_delay_frames(s).mean_frames == 2.0
    # a change on a run's first frame lies between two runs: not flicker
    assert flicker_per_second(seq("aaaabbbb", "aaaacbbb")) == 0.0


def test_changes_across_unlabelled_frames_are_not_flicker() -> None:
    s = seq("aaa..bbb", "aaaxybbb")
    assert flicker_per_second(s) == 0.0
    delay = switch_delay_frames(s)
    assert (delay.changes, delay.mean_frames) == (1, 0.0)


def test_delay_mean_p95_and_never_followed() -> None:
    # four changes after the first run: delays 0, 1, 3, and one never reached (c never shown)
    truth = "aaaa" + "bbbb" + "aaaa" + "bbbb" + "cccc"
    shown = "aaaa" + "bbbb" + "baaa" + "aaab" + "bbbb"
    delay = switch_delay_frames(seq(truth, shown))
    assert (delay.changes, delay.never, delay.followed) == (4, 1, 3)
    assert delay.mean_frames == pytest.approx(4 / 3)
    assert delay.p95_frames == pytest.approx(float(np.percentile([0, 1, 3], 95)))
    assert delay.p95_frames == pytest.approx(2.8)


def test_a_run_at_the_start_is_not_a_change() -> None:
    delay = switch_delay_frames(seq("aaaa", "bbba"))
    assert (delay.changes, delay.mean_frames, delay.p95_frames) == (0, None, None)
    # but its late arrival is the switch, not flicker
    assert flicker_per_second(seq("aaaa", "bbba")) == 0.0


def test_accuracy_counts_labelled_frames_only() -> None:
    assert label_accuracy(seq("aa..bb", "abxxbb")) == pytest.approx(3 / 4)
    assert label_accuracy(seq("...", "abc")) is None


def test_flicker_per_second_uses_the_stamps() -> None:
    # the same frames at 20 Hz: twice the rate
    s = seq("aaaaa", "abaaa")
    fast = LabelSequence([t / 2 for t in s.stamps], s.truth, s.published)
    assert flicker_per_second(fast) == pytest.approx(2 * flicker_per_second(s))


def test_label_sequence_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="length"):
        LabelSequence([0.0, 0.1], ["a"], ["a", "a"])
    with pytest.raises(ValueError, match="decrease"):
        LabelSequence([0.1, 0.0], ["a", "a"], ["a", "a"])
