"""Evaluation on real tiny models and image folders: exact metrics, report files, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tl_perception.cli import main
from tl_perception.errors import DatasetError
from tl_perception.train.evaluate import compute_metrics, evaluate, evaluate_samples
from tl_perception.train.report import join_phases, plot_training_curves

from support.helpers import color_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_images(folder: Path, color: str, count: int, seed: int = 0, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rgb = color_image(color, (48, 64), seed=seed + i)
        cv2.imwrite(str(folder / f"{prefix}{color}_{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def mislabelled_tree(tmp_path: Path) -> Path:
    """red/ holds 3 red and 2 blue images (the blue ones are the model's only mistakes)."""
    root = tmp_path / "colors"
    write_images(root / "red", "red", 3, seed=100)
    write_images(root / "red", "blue", 2, seed=200, prefix="wrong_")
    write_images(root / "green", "green", 4, seed=300)
    write_images(root / "blue", "blue", 3, seed=400)
    (root / "green" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_compute_metrics_matches_hand_computed_values() -> None:
    names = ["a", "b", "c", "d", "e", "f", "g"]
    y_true = np.array([0, 0, 1, 2, 6])
    probs = np.full((5, 7), 0.01)
    probs[0, 0] = 0.9  # right
    probs[1, [1, 2, 3, 4, 5]] = [0.5, 0.4, 0.3, 0.2, 0.1]  # wrong (b); a not even in top 5
    probs[2, 1] = 0.8  # right
    probs[3, [0, 2]] = [0.6, 0.3]  # wrong (a); c second
    probs[4, 6] = 0.7  # right
    m = compute_metrics(y_true, probs, names, paths=[f"p{i}" for i in range(5)])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["top5_accuracy"] == pytest.approx(4 / 5)
    assert m["num_images"] == 5
    assert m["confusion_matrix"][0] == [1, 1, 0, 0, 0, 0, 0]
    assert m["confusion_matrix"][2] == [1, 0, 0, 0, 0, 0, 0]
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert m["per_class"]["c"]["recall"] == 0.0
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro averages cover classes with images only: a, b, c, g
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert [(w["path"], w["predicted"]) for w in m["worst_mistakes"]] == [
        ("p3", "a"),
        ("p1", "b"),
    ]


def test_compute_metrics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="probs must be"):
        compute_metrics(np.array([0, 1]), np.zeros((2, 3)), ["a", "b"])


def test_evaluate_plain_tree_gives_exact_metrics_and_report_files(
    color_bundle: Path, mislabelled_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    json_copy = tmp_path / "metrics.json"
    m = evaluate(color_bundle, mislabelled_tree, json_path=json_copy, out_dir=out)

    assert m["split"] is None  # plain tree: every image counts
    assert m["num_images"] == 12
    assert m["accuracy"] == pytest.approx(10 / 12)
    assert m["top5_accuracy"] == 1.0  # 3 classes: top-3 always holds the truth
    assert m["class_names"] == ["red", "green", "blue"]  # the bundle's order, not the folders'
    assert m["confusion_matrix"] == [[3, 0, 2], [0, 4, 0], [0, 0, 3]]
    assert m["per_class"]["red"] == pytest.approx(
        {"precision": 1.0, "recall": 0.6, "f1": 0.75, "support": 5}
    )
    assert m["per_class"]["blue"] == pytest.approx(
        {"precision": 0.6, "recall": 1.0, "f1": 0.75, "support": 3}
    )
    assert [Path(s["path"]).name for s in m["skipped"]] == ["broken.png"]
    assert {Path(w["path"]).name for w in m["worst_mistakes"]} == {
        "wrong_blue_0.png",
        "wrong_blue_1.png",
    }
    assert all(w["true"] == "red" and w["predicted"] == "blue" for w in m["worst_mistakes"])

    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["accuracy"] == m["accuracy"]
    assert json.loads(json_copy.read_text())["confusion_matrix"] == m["confusion_matrix"]
    with (out / "confusion_matrix.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["true\\predicted", "red", "green", "blue"]
    assert rows[1] == ["red", "3", "0", "2"]
    for name in ("confusion_matrix.png", "worst_mistakes.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


def test_evaluate_split_tree_uses_only_the_requested_split(
    color_bundle: Path, tmp_path: Path
) -> None:
    root = tmp_path / "split"
    write_images(root / "train" / "red", "green", 3)  # would be wrong if it were counted
    write_images(root / "test" / "red", "red", 2)
    write_images(root / "test" / "green", "green", 2)
    m = evaluate(color_bundle, root, split="test")
    assert (m["split"], m["num_images"], m["accuracy"]) == ("test", 4, 1.0)
    assert m["per_class"]["blue"]["support"] == 0
    assert evaluate(color_bundle, root, split="train")["accuracy"] == 0.0
    with pytest.raises(DatasetError, match="no 'val' split"):
        evaluate(color_bundle, root, split="val")


def test_evaluate_refuses_a_class_the_bundle_does_not_know(
    color_bundle: Path, tmp_path: Path
) -> None:
    write_images(tmp_path / "d" / "red", "red", 1)
    write_images(tmp_path / "d" / "purple", "blue", 1)
    with pytest.raises(DatasetError, match=r"\['purple'\] are not among"):
        evaluate(color_bundle, tmp_path / "d")


def test_evaluate_samples_accepts_pairs_and_litert_backend_agrees(
    color_bundle: Path, mislabelled_tree: Path, tmp_path: Path
) -> None:
    bundle = shutil.copytree(color_bundle, tmp_path / "bundle")  # litert caches a conversion
    pairs = [(p, p.parent.name) for p in sorted(mislabelled_tree.rglob("*.png"))]
    keras_m = evaluate_samples(bundle, pairs)
    lite_m = evaluate_samples(bundle, pairs, backend="litert")
    assert lite_m["backend"] == "litert"
    assert lite_m["confusion_matrix"] == keras_m["confusion_matrix"]
    with pytest.raises(DatasetError, match="could be read"):
        evaluate_samples(bundle, [(mislabelled_tree / "green" / "broken.png", "green")])


def test_cli_evaluate_writes_report_into_bundle(
    color_bundle: Path, mislabelled_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = shutil.copytree(color_bundle, tmp_path / "bundle")
    json_path = tmp_path / "m.json"
    assert main(["evaluate", str(bundle), str(mislabelled_tree), "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy 0.8333" in out
    assert "skipped" in out and "broken.png" in out
    assert (bundle / "report" / "eval_all" / "evaluation.json").is_file()
    assert json.loads(json_path.read_text())["accuracy"] == pytest.approx(10 / 12)


@pytest.mark.parametrize("which", ["bundle", "dataset"])
def test_cli_evaluate_bad_path_exits_2_with_one_line(
    which: str,
    color_bundle: Path,
    mislabelled_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle, dataset = str(color_bundle), str(mislabelled_tree)
    if which == "bundle":
        bundle = str(tmp_path / "nope")
    else:
        dataset = str(tmp_path / "nope")
    assert main(["evaluate", bundle, dataset]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tl-perception evaluate: error:") and "nope" in err
    assert len(err.splitlines()) == 1


def test_training_curves_join_fine_tune_phases_and_write_a_png(tmp_path: Path) -> None:
    history = {
        "head_loss": [2.0, 1.0],
        "head_accuracy": [0.3, 0.6],
        "head_val_accuracy": [0.4, 0.5],
        "all_loss": [0.8, 0.5, 0.4],
        "all_accuracy": [0.7, 0.8, 0.9],
        "all_val_accuracy": [0.6, 0.7, 0.8],
        "all_learning_rate": [1e-3, 5e-4, 0.0],
    }
    joined, starts = join_phases(history)
    assert starts == [0, 2]
    assert joined["loss"] == [2.0, 1.0, 0.8, 0.5, 0.4]
    assert joined["val_accuracy"] == [0.4, 0.5, 0.6, 0.7, 0.8]
    assert "val_loss" not in joined  # absent in every phase
    path = plot_training_curves(history, tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_evaluate_reports_ece_reliability_and_accuracy_against_coverage(
    color_bundle: Path, mislabelled_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_perception.bundle import update_meta

    bundle = shutil.copytree(color_bundle, tmp_path / "bundle")
    recorded = {"temperature": 1.5, "ece_before": 0.2, "ece_after": 0.04, "bins": 15, "n": 30}
    update_meta(bundle, calibration=recorded, unknown_threshold={"value": 0.9, "split": "val"})
    out = tmp_path / "report"
    m = evaluate(bundle, mislabelled_tree, out_dir=out)
    cal = m["calibration"]
    # the ECE of the scores the bundle gave these 12 images, from its own reliability bins
    assert cal["bins"] == 15 and sum(b["count"] for b in cal["reliability"]) == 12
    assert cal["ece"] == pytest.approx(
        sum(
            b["count"] / 12 * abs(b["accuracy"] - b["confidence"])
            for b in cal["reliability"]
            if b["count"]
        )
    )
    assert (cal["temperature"], cal["recorded"]) == (1.5, recorded)
    assert cal["recorded_unknown_threshold"]["value"] == 0.9
    full = cal["coverage"][0]
    assert (full["coverage"], full["answered"], full["accuracy"]) == (1.0, 12, m["accuracy"])
    at = cal["unknown_threshold"]
    assert at["threshold"] == 0.9 and 0 <= at["answered"] <= 12
    with (out / "accuracy_coverage.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["rule"] == "coverage" and float(rows[0]["coverage"]) == 1.0
    assert rows[-1]["rule"] == "unknown_threshold" and int(rows[-1]["answered"]) == at["answered"]
    for name in ("reliability_diagram.png", "accuracy_coverage.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert main(["evaluate", str(bundle), str(mislabelled_tree)]) == 0
    printed = capsys.readouterr().out
    assert f"ECE {cal['ece']:.4f} (15 bins); recorded on val: T=1.500, ECE 0.2000 -> 0.0400" in (
        printed
    )
    assert "unknown_threshold 0.9000: answers" in printed
