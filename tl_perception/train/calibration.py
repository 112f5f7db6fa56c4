"""Scores that are probabilities, and when to say "I don't know": numpy only, no TensorFlow.

- `fit_temperature`: the one scalar T > 0 that minimises the negative log-likelihood of
  softmax(logits / T) on the validation split (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"). Dividing logits by T never changes the argmax, so accuracy stays as it is; only
  how sure the scores say the model is changes. `bake_temperature` folds T into the final Dense
  layer (kernel and bias divided by T), so the model graph and the bundle contract stay as they
  are and every backend (Keras, LiteRT) gives calibrated scores without knowing T.
- `expected_calibration_error`: ECE over `ECE_BINS` (15) equal-width confidence bins.
- `unknown_threshold`: the smallest best-score threshold at which the answered samples are,
  with 95 % confidence, right at least `target` (95 %) of the time: the one-sided Wilson lower
  bound of their precision must reach it, so a threshold needs evidence, not a lucky split (a
  clean 40-image split records none; with no mistake at all it takes 52 answered images). Rule
  in docs/training.md, "Calibration".

Everything here takes arrays and returns numbers or small dataclasses, so the trainer, the
evaluator and the tests share one definition of each quantity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. use 15).
ECE_BINS = 15
#: The search range of T. Wider than any sane model needs (typical T: 0.5-3); the bounds only
#: stop a perfectly separated validation split from driving T to 0 (its NLL falls forever).
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: Fewer validation images than this: T is not fitted (one image can swing it arbitrarily).
MIN_CALIBRATION_SAMPLES = 20
#: Precision the answered samples must reach for `unknown_threshold` (issue 11 §4: 95 %).
PRECISION_TARGET = 0.95
#: A threshold must leave at least this many validation images answered; otherwise "precision"
#: would be one lucky image, and a split smaller than this records no threshold at all.
MIN_ANSWERED = 20
#: Confidence of the precision claim: the one-sided lower bound at this level must reach the
#: target. z of the standard normal at 0.95, one-sided (Wilson's score interval).
CONFIDENCE = 0.95
_Z_ONE_SIDED_95 = 1.6448536269514722
#: Coverages at which `evaluate` reports the accuracy of the answered fraction.
REPORT_COVERAGES: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
#: Points of the accuracy-coverage curve kept in evaluation.json (enough to draw it).
MAX_CURVE_POINTS = 200
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64, stable for any logit range."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    out: np.ndarray = np.exp(log_softmax(logits))
    return out


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature)."""
    labels = np.asarray(labels, dtype=np.int64)
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-5,
) -> float:
    """The T in `bounds` minimising `nll(logits / T)`: golden-section search on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so a bracketing search finds the global
    minimum; `tol` is in log T (1e-5: T to about 0.001 %).
    """
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one sample")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    a, b = lo + (1 - _GOLDEN) * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin (lower, upper]: how many samples, their mean confidence and accuracy."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins of the best score: bin i holds confidences in (i/bins, (i+1)/bins].

    A confidence of exactly 0 (impossible for a softmax) falls into the first bin.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = probs.argmax(axis=1) == labels if len(probs) else np.zeros(0, dtype=bool)
    index = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        member = index == i
        count = int(member.sum())
        out.append(
            ReliabilityBin(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=count,
                confidence=float(conf[member].mean()) if count else None,
                accuracy=float(correct[member].mean()) if count else None,
            )
        )
    return out


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """ECE: sum over bins of (share of samples) x |accuracy - mean confidence|; None if empty."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    if not total:
        return None
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.confidence)
            for b in table
            if b.accuracy is not None and b.confidence is not None
        )
    )


@dataclass(frozen=True)
class Calibration:
    """bundle.json's `calibration`: T baked into the model and the val-split ECE around it.

    `fitted` is False when T was not fitted (`calibrate: false`, a validation split under
    `MIN_CALIBRATION_SAMPLES`, or one without a single mistake); T is then 1 and `reason` says
    why.
    """

    temperature: float
    fitted: bool
    ece_before: float | None
    ece_after: float | None
    nll_before: float | None
    nll_after: float | None
    n: int
    bins: int = ECE_BINS
    split: str = "val"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ECE and NLL rounded to 5 digits, T exact (it is what was folded in)."""
        data = asdict(self)
        for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
            if data[key] is not None:
                data[key] = round(data[key], 5)
        if self.reason is None:
            del data["reason"]
        return data


def calibrate(logits: np.ndarray, labels: np.ndarray, fit: bool = True) -> Calibration:
    """Fit T on (validation) logits, or record why not; ECE and NLL before and after."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n == 0:
        return Calibration(1.0, False, None, None, None, None, 0, reason="no validation images")
    before = softmax(logits)
    reason = None
    if not fit:
        reason = "calibrate: false"
    elif n < MIN_CALIBRATION_SAMPLES:
        reason = f"{n} validation images (< {MIN_CALIBRATION_SAMPLES})"
    elif bool(np.all(before.argmax(axis=1) == labels)):
        # all right: the likelihood rises as T falls and has no minimum; T would just hit
        # its lower bound and make every future mistake look certain
        reason = f"no mistakes on the {n} validation images (nothing to fit T on)"
    temperature = 1.0 if reason else fit_temperature(logits, labels)
    after = softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return Calibration(
        temperature=temperature,
        fitted=reason is None,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        n=n,
        reason=reason,
    )


def bake_temperature(dense: Any, temperature: float) -> None:
    """Divide a Dense layer's kernel and bias by T: softmax(xW/T + b/T) = softmax((xW + b)/T).

    Exact for a Dense layer whose activation is softmax (or linear, feeding a softmax): the
    graph is unchanged, only two weight tensors are rescaled. Duck-typed (`get_weights` /
    `set_weights`), so this module needs no TensorFlow.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    weights = dense.get_weights()
    if len(weights) != 2:
        raise ValueError(f"expected a Dense layer with kernel and bias, got {len(weights)} tensors")
    kernel, bias = weights
    dense.set_weights([kernel / np.float32(temperature), bias / np.float32(temperature)])


@dataclass(frozen=True)
class CoveragePoint:
    """Answer only samples whose best score >= threshold: what share is answered, how right."""

    threshold: float
    coverage: float
    accuracy: float
    answered: int


def coverage_curve(scores: np.ndarray, correct: np.ndarray) -> list[CoveragePoint]:
    """One point per distinct score, highest threshold (lowest coverage) first.

    Ties are answered together, as a `best >= threshold` rule answers them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(scores)
    if n == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], np.cumsum(correct[order])
    # last position of each distinct score in descending order = everything >= that score
    last = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    return [
        CoveragePoint(
            threshold=float(sorted_scores[i]),
            coverage=(i + 1) / n,
            accuracy=float(hits[i] / (i + 1)),
            answered=int(i + 1),
        )
        for i in last.tolist()
    ]


def accuracy_at_coverage(
    scores: np.ndarray, correct: np.ndarray, coverages: Sequence[float] = REPORT_COVERAGES
) -> list[CoveragePoint]:
    """For each wanted coverage c: the highest threshold answering at least c of the samples."""
    curve = coverage_curve(scores, correct)
    out = []
    for wanted in coverages:
        point = next((p for p in curve if p.coverage >= wanted - 1e-12), None)
        if point is not None:
            out.append(point)
    return out


def answered_at(scores: np.ndarray, correct: np.ndarray, threshold: float) -> CoveragePoint:
    """Coverage and accuracy of the samples whose best score >= `threshold` (accuracy 0 if none)."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    answered = scores >= threshold
    count = int(answered.sum())
    return CoveragePoint(
        threshold=float(threshold),
        coverage=count / len(scores) if len(scores) else 0.0,
        accuracy=float(correct[answered].mean()) if count else 0.0,
        answered=count,
    )


def precision_lower_bound(right: int, answered: int) -> float:
    """One-sided 95 % Wilson score lower bound of a precision of `right` / `answered`.

    Wilson's interval behaves at the edges, where the normal approximation does not: 40 right
    of 40 give 0.937, not 1.0; n right of n reach 0.95 from n = 52 on. 0 for nothing answered.
    """
    if answered <= 0:
        return 0.0
    z2, p, n = _Z_ONE_SIDED_95**2, right / answered, answered
    centre = p + z2 / (2 * n)
    margin = _Z_ONE_SIDED_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


@dataclass(frozen=True)
class ThresholdChoice:
    """bundle.json's `unknown_threshold`: the value (None: none found) and what it achieved.

    `precision` is what the answered val images were (right / answered), `precision_lower_bound`
    what they prove at `confidence` (the quantity that had to reach `target_precision`).
    """

    value: float | None
    target_precision: float
    precision: float | None
    coverage: float | None
    answered: int
    n: int
    min_answered: int
    reason: str
    split: str = "val"
    precision_lower_bound: float | None = None
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; `value` exact (a rounded one could exclude its own boundary image)."""
        data = asdict(self)
        for key in ("precision", "coverage", "precision_lower_bound"):
            if data[key] is not None:
                data[key] = round(data[key], 6)
        return data


def unknown_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    target: float = PRECISION_TARGET,
    min_answered: int = MIN_ANSWERED,
) -> ThresholdChoice:
    """The smallest best-score threshold whose answered samples prove `target` precision.

    Candidates are the distinct scores; a candidate t answers the samples with score >= t, must
    answer at least `min_answered` of them, and the 95 % lower bound of their precision
    (`precision_lower_bound`) must reach `target`: a point estimate of 95 % on a few dozen
    images is a fluke as often as not. The smallest qualifying t answers the most. No
    candidate qualifies (not enough evidence anywhere, or fewer than `min_answered` samples):
    value None, and the reason says which.
    """
    n = len(scores)
    curve = [p for p in coverage_curve(scores, correct) if p.answered >= min_answered]

    def bound(point: CoveragePoint) -> float:
        return precision_lower_bound(round(point.accuracy * point.answered), point.answered)

    def choice(point: CoveragePoint | None, reason: str) -> ThresholdChoice:
        return ThresholdChoice(
            value=point.threshold if point and reason == "reached" else None,
            target_precision=target,
            precision=point.accuracy if point else None,
            coverage=point.coverage if point else None,
            answered=point.answered if point else 0,
            n=n,
            min_answered=min_answered,
            reason=reason,
            precision_lower_bound=bound(point) if point else None,
        )

    if not curve:
        return choice(None, f"{n} validation images (< {min_answered})")
    reached = [p for p in curve if bound(p) >= target]
    if reached:
        return choice(min(reached, key=lambda p: p.threshold), "reached")
    best = max(curve, key=lambda p: (bound(p), p.coverage))
    return choice(
        best,
        f"never proven: at most {bound(best):.3f} precision at {CONFIDENCE:.0%} confidence "
        f"({best.accuracy:.3f} of {best.answered} answered images)",
    )


def calibration_report(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """What `evaluate` records: ECE and reliability bins, accuracy against coverage.

    `threshold` (the bundle's unknown_threshold) adds the coverage and accuracy it gives here.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = probs.argmax(axis=1) == y_true if len(probs) else np.zeros(0, dtype=bool)
    at_threshold = None if threshold is None else asdict(answered_at(scores, correct, threshold))
    return {
        "ece": expected_calibration_error(probs, y_true),
        "bins": ECE_BINS,
        "reliability": [asdict(b) for b in reliability_bins(probs, y_true)],
        "coverage": [asdict(p) for p in accuracy_at_coverage(scores, correct)],
        "curve": _thin([[p.coverage, p.accuracy] for p in coverage_curve(scores, correct)]),
        "unknown_threshold": at_threshold,
    }


def _thin(points: list[list[float]], limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """At most `limit` evenly spaced points of a curve, its last point always kept."""
    if len(points) <= limit:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, limit).round().astype(np.int64))
    return [points[i] for i in keep.tolist()]
