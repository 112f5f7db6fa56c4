"""Evaluate a model bundle on labelled images: metrics in JSON, confusion matrix, worst mistakes,
and whether its scores are probabilities (ECE, reliability diagram, accuracy against coverage).

Metrics are plain numpy (no scikit-learn dependency for six formulas). Dataset classes are matched
to the bundle's by name, so a dataset whose folders are a subset of the bundle's classes, in any
order, evaluates correctly; a class the bundle does not know is a DatasetError (its images could
only ever count as mistakes, which would hide the real accuracy). Precision, recall and F1 are
0.0 where their denominator is 0 (scikit-learn's `zero_division=0`); macro averages cover only
the classes with images.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tl_perception.bundle import read_bundle
from tl_perception.dataset import Sample, read_dataset
from tl_perception.errors import DatasetError, ImageDecodeError
from tl_perception.fsutil import atomic_write_json, atomic_write_text
from tl_perception.images import read_image_file
from tl_perception.train.calibration import calibration_report

EVALUATION_FILE = "evaluation.json"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
MISTAKES_PNG = "worst_mistakes.png"
RELIABILITY_PNG = "reliability_diagram.png"
COVERAGE_PNG = "accuracy_coverage.png"
COVERAGE_CSV = "accuracy_coverage.csv"
#: How many of the most confident mistakes the JSON lists (the PNG shows up to 25 of them).
MAX_MISTAKES = 50
BATCH_SIZE = 64


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    paths: Sequence[str | Path] | None = None,
    unknown_threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy, top-5, per-class precision/recall/F1, confusion matrix, worst mistakes, and
    calibration (ECE, reliability bins, accuracy of the answered fraction against coverage).

    Args:
        y_true: (N,) true class indices into `class_names`.
        probs: (N, C) class scores, C == len(class_names).
        class_names: names of the C columns of `probs`.
        paths: optional image path per row, reported with each mistake.
        unknown_threshold: the bundle's threshold; adds the coverage and accuracy it gives here.
    """
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y_true), num_classes):
        raise ValueError(
            f"probs must be (N, C) = ({len(y_true)}, {num_classes}), got {probs.shape}"
        )
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= num_classes):
        raise ValueError(f"y_true holds indices outside 0..{num_classes - 1}")
    n = len(y_true)
    y_pred = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    k = min(5, num_classes)
    top_k = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    in_top_k = (top_k == y_true[:, None]).any(axis=1)

    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = support > 0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }

    wrong = np.flatnonzero(y_pred != y_true)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:MAX_MISTAKES]
    mistakes = [
        {
            "index": i,
            "path": str(paths[i]) if paths is not None else None,
            "true": class_names[int(y_true[i])],
            "predicted": class_names[int(y_pred[i])],
            "score": float(probs[i, y_pred[i]]),
            "true_score": float(probs[i, y_true[i]]),
        }
        for i in wrong.tolist()
    ]
    return {
        "accuracy": float((y_pred == y_true).mean()) if n else 0.0,
        "top5_accuracy": float(in_top_k.mean()) if n else 0.0,
        "top_k": k,
        "num_images": n,
        "num_errors": int((y_pred != y_true).sum()),
        "macro_precision": _mean(precision[present]),
        "macro_recall": _mean(recall[present]),
        "macro_f1": _mean(f1[present]),
        "per_class": per_class,
        "class_names": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "worst_mistakes": mistakes,
        "calibration": calibration_report(y_true, probs, unknown_threshold),
    }


def evaluate_samples(
    bundle_path: str | Path,
    samples: Iterable[Sample | tuple[str | Path, str]],
    out_dir: str | Path | None = None,
    backend: str = "keras",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the bundle on labelled images and compute metrics; write report files to `out_dir`.

    Args:
        samples: `dataset.Sample`s or (path, class name) pairs.
        class_names: the dataset's classes (e.g. `DatasetIndex.class_names`); each must be a
            bundle class, even one with no readable image. Metrics always use the bundle's order.
        backend: "keras" (the reference), "litert" or "auto", as `inference.Classifier`.

    Raises:
        BundleError: the bundle cannot be read or loaded.
        DatasetError: a class unknown to the bundle, or no readable image at all.
    """
    from tl_perception.inference import Classifier

    bundle = read_bundle(bundle_path)
    pairs = [
        (Path(s.path), s.class_name) if isinstance(s, Sample) else (Path(s[0]), str(s[1]))
        for s in samples
    ]
    index = {name: i for i, name in enumerate(bundle.class_names)}
    unknown = sorted({c for _, c in pairs} - set(index) | set(class_names or ()) - set(index))
    if unknown:
        raise DatasetError(
            f"dataset classes {unknown[:5]!r}{' ...' if len(unknown) > 5 else ''} are not among "
            f"the bundle's {len(index)} classes {list(bundle.class_names)[:5]!r}...; evaluate "
            "on a dataset with the classes the model was trained on"
        )
    if not pairs:
        raise DatasetError("no images to evaluate")

    started = time.perf_counter()
    classifier = Classifier(bundle.path, backend=backend)
    probs, y_true, paths, skipped = [], [], [], []
    for start in range(0, len(pairs), BATCH_SIZE):
        images = []
        for path, name in pairs[start : start + BATCH_SIZE]:
            try:
                images.append(read_image_file(path))
            except ImageDecodeError as err:
                skipped.append({"path": str(path), "error": str(err)})
                continue
            y_true.append(index[name])
            paths.append(str(path))
        if images:
            probs.append(classifier.predict_proba(images))
    if not y_true:
        raise DatasetError(
            f"none of the {len(pairs)} images could be read (e.g. {skipped[0]['error']})"
        )
    metrics = compute_metrics(
        np.array(y_true), np.concatenate(probs), bundle.class_names, paths, bundle.unknown_threshold
    )
    metrics["calibration"].update(
        temperature=bundle.temperature,
        recorded=bundle.meta.get("calibration"),
        recorded_unknown_threshold=bundle.meta.get("unknown_threshold"),
    )
    metrics.update(
        bundle=str(bundle.path),
        strategy=bundle.meta.get("strategy"),
        decision=bundle.meta.get("decision"),
        backend=classifier.backend,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
    )
    if out_dir is not None:
        write_report(metrics, out_dir)
    return metrics


def evaluate(
    bundle_path: str | Path,
    dataset_path: str | Path,
    split: str | None = "test",
    json_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    backend: str = "keras",
) -> dict[str, Any]:
    """Evaluate a bundle on a dataset directory.

    A split tree (extraction output) is evaluated on `split`; a plain class-per-folder tree has
    no splits, so every image counts and `split` is ignored (recorded as null).

    Raises:
        BundleError, DatasetError: with one line saying what is wrong.
    """
    read_bundle(bundle_path)  # a bad bundle is reported before the dataset is scanned
    dataset = read_dataset(dataset_path)
    splits = dataset.splits()
    if not splits:
        samples, used_split = dataset.samples, None
    elif split in splits:
        samples, used_split = dataset.split(split), split
    else:
        raise DatasetError(
            f"dataset {str(dataset.root)!r} has no {split!r} split (it has "
            f"{', '.join(splits)}); pick one with --split"
        )
    class_names = sorted({s.class_name for s in samples})
    metrics = evaluate_samples(
        bundle_path, samples, out_dir=None, backend=backend, class_names=class_names
    )
    metrics.update(dataset=str(dataset.root), split=used_split)
    if out_dir is not None:
        write_report(metrics, out_dir)
    if json_path is not None:
        atomic_write_json(json_path, metrics)
    return metrics


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> Path:
    """evaluation.json, confusion_matrix.csv/.png, worst_mistakes.png, reliability_diagram.png,
    accuracy_coverage.csv/.png in `out_dir`."""
    from tl_perception.train.report import (
        plot_accuracy_coverage,
        plot_confusion_matrix,
        plot_reliability_diagram,
        plot_worst_mistakes,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFUSION_CSV, confusion_csv(metrics))
    plot_confusion_matrix(metrics["confusion_matrix"], metrics["class_names"], out / CONFUSION_PNG)
    plot_worst_mistakes(metrics["worst_mistakes"], out / MISTAKES_PNG)
    calibration = metrics.get("calibration")
    if calibration is not None:
        atomic_write_text(out / COVERAGE_CSV, coverage_csv(calibration))
        plot_reliability_diagram(calibration, out / RELIABILITY_PNG)
        plot_accuracy_coverage(calibration, out / COVERAGE_PNG)
    atomic_write_json(out / EVALUATION_FILE, metrics)
    return out


def confusion_csv(metrics: dict[str, Any]) -> str:
    """The confusion matrix as CSV: header `true\\predicted,<classes>`, one row per true class."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = metrics["class_names"]
    writer.writerow(["true\\predicted", *names])
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        writer.writerow([name, *row])
    return buf.getvalue()


def coverage_csv(calibration: dict[str, Any]) -> str:
    """Accuracy of the answered fraction at a few coverages, and at the bundle's threshold."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rule", "threshold", "coverage", "accuracy", "answered"])
    rows = [("coverage", p) for p in calibration["coverage"]]
    if calibration.get("unknown_threshold") is not None:
        rows.append(("unknown_threshold", calibration["unknown_threshold"]))
    for rule, point in rows:
        writer.writerow(
            [
                rule,
                f"{point['threshold']:.6f}",
                f"{point['coverage']:.4f}",
                f"{point['accuracy']:.4f}",
                point["answered"],
            ]
        )
    return buf.getvalue()


def calibration_summary(metrics: dict[str, Any]) -> list[str]:
    """Lines for the CLI: ECE here and as recorded on val, the unknown threshold's effect."""
    calibration = metrics.get("calibration") or {}
    if calibration.get("ece") is None:
        return []
    line = f"ECE {calibration['ece']:.4f} ({calibration['bins']} bins)"
    recorded = calibration.get("recorded") or {}
    if recorded.get("ece_after") is not None:
        line += (
            f"; recorded on val: T={recorded['temperature']:.3f}, ECE "
            f"{recorded['ece_before']:.4f} -> {recorded['ece_after']:.4f}"
        )
    lines = [line]
    point = calibration.get("unknown_threshold")
    if point is not None:
        lines.append(
            f"unknown_threshold {point['threshold']:.4f}: answers {point['coverage']:.1%} of "
            f"images, {point['accuracy']:.4f} of them right"
        )
    return lines


def strategy_summary(metrics: dict[str, Any]) -> list[str]:
    """How the bundle's strategy was chosen: the reason, and `auto`'s race when it ran one."""
    from tl_perception.train.race import summary_lines

    decision = metrics.get("decision") or {}
    if not decision:
        return []
    reason = f"strategy {metrics.get('strategy')}: {decision.get('reason', '')}"
    return [reason, *summary_lines(decision)]


def summary_table(metrics: dict[str, Any]) -> str:
    """A compact text summary: headline numbers, then one line per class."""
    width = max(12, *(len(n) for n in metrics["class_names"]))
    lines = [
        f"accuracy {metrics['accuracy']:.4f}  top-{metrics['top_k']} "
        f"{metrics['top5_accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"images {metrics['num_images']}  skipped {len(metrics.get('skipped', ()))}",
        *calibration_summary(metrics),
        *strategy_summary(metrics),
        f"{'class':<{width}}  precision  recall      f1  support",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
            f"{row['f1']:6.3f}  {row['support']:7d}"
        )
    return "\n".join(lines)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    quotient: np.ndarray = np.divide(num, den, out=np.zeros_like(den), where=den > 0)
    return quotient


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0
