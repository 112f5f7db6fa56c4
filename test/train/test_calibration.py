"""Temperature scaling, ECE and the unknown threshold (tl_perception.train.calibration).

The over-confident model is a real Keras model: a softmax Dense layer trained on overlapping
blobs (so it makes mistakes), whose kernel and bias are then multiplied by 5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tl_perception.train import calibration as cal

OVERCONFIDENCE = 5.0


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping 2-D Gaussian classes: no model can be right about all of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    centres = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]], dtype=np.float32)
    points = centres[labels] + rng.normal(0.0, 0.9, size=(n, 2)).astype(np.float32)
    return points.astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def overconfident() -> tuple[object, np.ndarray, np.ndarray]:
    """A trained Dense softmax classifier made over-confident (kernel and bias x 5)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = blobs(600, seed=1)
    inputs = keras.Input((2,), name="features")
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=40, batch_size=64, verbose=0)
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * OVERCONFIDENCE, bias * OVERCONFIDENCE])
    x_val, y_val = blobs(800, seed=2)
    return model, x_val, y_val


def logits_of(model: object, x: np.ndarray) -> np.ndarray:
    kernel, bias = model.get_layer("predictions").get_weights()  # type: ignore[attr-defined]
    return x.astype(np.float64) @ kernel + bias


def test_temperature_fit_lowers_ece_of_an_overconfident_keras_model(overconfident) -> None:
    model, x_val, y_val = overconfident
    logits = logits_of(model, x_val)
    probs = model.predict(x_val, verbose=0)
    assert np.allclose(cal.softmax(logits), probs, atol=1e-5)  # the logits are the model's
    record = cal.calibrate(logits, y_val)
    assert record.fitted and record.n == 800
    assert 3.0 < record.temperature < 8.0  # undoes most of the x5 (the trained model ~ T 1)
    assert record.ece_before > 0.1  # over-confident: mistakes with scores near 1
    assert record.ece_after < record.ece_before / 3
    assert record.nll_after < record.nll_before


def test_baked_temperature_keeps_argmax_and_gives_the_fitted_scores(overconfident) -> None:
    import keras

    model, x_val, y_val = overconfident
    record = cal.calibrate(logits_of(model, x_val), y_val)
    baked = keras.models.clone_model(model)
    baked.set_weights(model.get_weights())
    before = model.predict(x_val, verbose=0)
    cal.bake_temperature(baked.get_layer("predictions"), record.temperature)
    after = baked.predict(x_val, verbose=0)
    assert np.array_equal(before.argmax(axis=1), after.argmax(axis=1))
    expected = cal.softmax(logits_of(model, x_val) / record.temperature)
    assert np.allclose(after, expected, atol=1e-5)
    ece_after = cal.expected_calibration_error(after, y_val)
    assert ece_after == pytest.approx(record.ece_after, abs=1e-4)
    assert ece_after < cal.expected_calibration_error(before, y_val)
    # the gain holds on images the temperature was not fitted on
    x_test, y_test = blobs(800, seed=3)
    assert cal.expected_calibration_error(
        baked.predict(x_test, verbose=0), y_test
    ) < cal.expected_calibration_error(model.predict(x_test, verbose=0), y_test)


def test_calibration_and_threshold_round_trip_through_bundle_json(
    overconfident, tmp_path: Path
) -> None:
    """A baked image model written as a bundle reads back with its T and threshold."""
    import keras

    from tl_perception.bundle import bundle_meta, read_bundle, write_bundle

    _, x_val, y_val = overconfident
    inputs = keras.Input((8, 8, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    record = cal.calibrate(logits_of(overconfident[0], x_val), y_val)
    cal.bake_temperature(model.get_layer("predictions"), record.temperature)
    probs = cal.softmax(logits_of(overconfident[0], x_val) / record.temperature)
    threshold = cal.unknown_threshold(probs.max(axis=1), probs.argmax(axis=1) == y_val)
    meta = bundle_meta(
        class_names=["a", "b", "c"],
        input_size=(8, 8),
        backbone="test",
        calibration=record.to_dict(),
        unknown_threshold=threshold.to_dict(),
    )
    bundle = read_bundle(write_bundle(tmp_path / "b", model, meta).path)
    assert bundle.temperature == record.temperature
    assert bundle.unknown_threshold == threshold.value
    saved = json.loads((bundle.path / "bundle.json").read_text())["calibration"]
    assert saved["bins"] == 15 and saved["split"] == "val" and saved["n"] == 800
    assert saved["ece_after"] == pytest.approx(record.ece_after, abs=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    assert np.allclose(
        bundle.load_keras_model().predict(images, verbose=0), model.predict(images, verbose=0)
    )


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(4000, 5))
    true_t = 2.5
    p = cal.softmax(logits / true_t)
    labels = np.array([rng.choice(5, p=row) for row in p])
    assert cal.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_stays_in_bounds_on_a_perfect_split() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 2.0]] * 20)
    labels = np.array([0, 1] * 20)
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(cal.TEMPERATURE_BOUNDS[0], rel=1e-3)


def test_tiny_or_disabled_calibration_records_why_and_keeps_t_1() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    labels = np.array([0, 1, 1])
    tiny = cal.calibrate(logits, labels)
    assert (tiny.fitted, tiny.temperature, tiny.n) == (False, 1.0, 3)
    assert "3 validation images" in (tiny.reason or "")
    assert tiny.ece_before == tiny.ece_after
    off = cal.calibrate(np.tile(logits, (10, 1)), np.tile(labels, 10), fit=False)
    assert (off.fitted, off.temperature, off.reason) == (False, 1.0, "calibrate: false")
    assert cal.calibrate(np.zeros((0, 2)), np.zeros(0)).ece_before is None
    perfect = cal.calibrate(np.tile(logits[:2], (15, 1)), np.tile(labels[:2], 15))
    assert (perfect.fitted, perfect.temperature) == (False, 1.0)
    assert "no mistakes on the 30 validation images" in (perfect.reason or "")


def test_ece_and_reliability_bins_by_hand() -> None:
    # best scores 0.9 (right), 0.9 (wrong), 0.62 (right), 0.64 (wrong); bins of width 1/15
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.62, 0.38], [0.36, 0.64]])
    labels = np.array([0, 0, 0, 0])
    bins = cal.reliability_bins(probs, labels)
    filled = {i: b for i, b in enumerate(bins) if b.count}
    # 0.9 -> (13/15, 14/15]; 0.62 and 0.64 -> (9/15, 10/15]
    assert sorted(filled) == [9, 13]
    assert filled[13].count == 2 and filled[13].accuracy == 0.5
    assert filled[9].confidence == pytest.approx(0.63)
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.63)
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(expected)
    # a score of exactly 1.0 lands in the last bin, not past it
    assert cal.reliability_bins(np.array([[1.0, 0.0]]), np.array([0]))[-1].count == 1


def test_a_precision_claim_needs_evidence_not_a_lucky_split() -> None:
    """The issue's repro: a clean 40-image split used to record its lowest score (0.950) as
    the threshold. 40 right of 40 prove only 0.937 at 95 % confidence: no threshold. With no
    mistake at all, 52 answered images are the least that prove 0.95."""
    clean = cal.unknown_threshold(np.linspace(0.999, 0.950, 40), np.ones(40, dtype=bool))
    assert clean.value is None and clean.reason.startswith("never proven")
    assert (clean.precision, clean.answered) == (1.0, 40)
    assert cal.precision_lower_bound(40, 40) == pytest.approx(0.93665, abs=1e-5)
    assert cal.precision_lower_bound(51, 51) < 0.95 <= cal.precision_lower_bound(52, 52)
    assert cal.precision_lower_bound(0, 0) == 0.0
    assert clean.precision_lower_bound == pytest.approx(0.93665, abs=1e-5)
    enough = cal.unknown_threshold(np.linspace(0.999, 0.950, 52), np.ones(52, dtype=bool))
    assert enough.value == pytest.approx(0.950) and enough.answered == 52
    assert enough.to_dict()["confidence"] == 0.95


def test_unknown_threshold_is_the_smallest_score_whose_precision_is_proven() -> None:
    # 400 images sorted by score: the top 300 all right, then one mistake in every 5
    scores = np.linspace(0.999, 0.4, 400)
    correct = np.ones(400, dtype=bool)
    correct[304::5] = False
    choice = cal.unknown_threshold(scores, correct, target=0.95)
    # the 359 best images hold 11 mistakes: 348/359 = 0.969, proven at 95 % (bound 0.9505);
    # every larger answered set proves less than 0.95
    k = choice.answered
    assert (k, int(correct[:k].sum())) == (359, 348)
    right = int(correct[:k].sum())
    assert cal.precision_lower_bound(right, k) >= 0.95
    assert all(
        cal.precision_lower_bound(int(correct[:j].sum()), j) < 0.95 for j in range(k + 1, 401)
    )
    assert choice.value == pytest.approx(scores[k - 1]) and choice.reason == "reached"
    assert 300 < k < 400 and choice.precision == pytest.approx(right / k)
    assert choice.precision_lower_bound == pytest.approx(cal.precision_lower_bound(right, k))
    assert cal.unknown_threshold(scores, correct, min_answered=401).value is None


def test_unknown_threshold_takes_the_smallest_even_past_a_dip() -> None:
    """Precision is not monotone in the threshold: the most-answering proven one wins."""
    scores = np.linspace(0.9, 0.5, 200)
    correct = np.array([True, False] + [True] * 198)  # 1/1, 1/2, 2/3, ..., 199/200
    choice = cal.unknown_threshold(scores, correct, target=0.95, min_answered=1)
    assert choice.value == pytest.approx(scores[199]) and choice.answered == 200


def test_unknown_threshold_answers_ties_together_and_handles_failure() -> None:
    scores = np.array([0.9] * 100 + [0.5] * 100)
    correct = np.array([True] * 100 + [True] * 99 + [False])
    choice = cal.unknown_threshold(scores, correct, target=0.95, min_answered=5)
    assert (choice.value, choice.answered) == (0.5, 200)  # 199/200, all ties answered together
    # never proven: no value, but the best evidence there was is recorded
    bad = cal.unknown_threshold(scores, ~correct, target=0.95, min_answered=5)
    assert bad.value is None and bad.reason.startswith("never proven")
    assert bad.precision == pytest.approx(1 / 200)
    # a split smaller than min_answered records nothing
    small = cal.unknown_threshold(scores[:4], correct[:4], min_answered=20)
    assert small.value is None and small.answered == 0 and "4 validation images" in small.reason
    assert cal.answered_at(scores, correct, 0.6).coverage == 0.5


def test_accuracy_at_coverage_and_report_rows() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])  # the 0.85 one is wrong
    report = cal.calibration_report(labels, probs, threshold=0.9)
    rows = {round(r["coverage"], 2): r["accuracy"] for r in report["coverage"]}
    assert rows[1.0] == 0.75 and rows[0.5] == 0.5
    assert report["unknown_threshold"] == {
        "threshold": 0.9,
        "coverage": 0.25,
        "accuracy": 1.0,
        "answered": 1,
    }
    assert report["bins"] == 15 and len(report["reliability"]) == 15


def test_bake_temperature_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        cal.bake_temperature(object(), 0.0)


def test_calibration_module_imports_without_tensorflow() -> None:
    code = (
        "import sys, tl_perception.train.calibration; "
        "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
