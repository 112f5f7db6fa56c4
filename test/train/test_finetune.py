"""`finetune` end to end on small generated image folders (tiny inputs, 1-2 epochs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tl_perception.bundle import read_bundle
from tl_perception.errors import DatasetError, TrainingError
from tl_perception.train.config import FinetuneConfig, load_config
from tl_perception.train.finetune import finetune

from support import REPO, child_env
from support.finetune_helpers import make_color_dataset, tiny, write_png


@pytest.fixture(scope="module")
def color_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_color_dataset(tmp_path_factory.mktemp("data") / "colors")
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_feature_extraction_bundle_round_trips_through_the_classifier(
    color_dataset: Path, tmp_path: Path
) -> None:
    from tl_perception.backbones import weights_fingerprint
    from tl_perception.inference import Classifier
    from tl_perception.train.data import load_training_data

    logs: list[str] = []
    result = finetune(
        color_dataset, tmp_path / "bundle", tiny(tmp_path), log=logs.append, verbose=0
    )
    bundle = read_bundle(result.bundle_path)
    assert bundle.class_names == ("blue", "green", "red")
    assert bundle.input_size == (32, 32)
    assert bundle.meta["strategy"] == "feature_extraction"
    assert bundle.meta["decision"] == {"strategy": "feature_extraction", "reason": "set by user"}
    assert [p["trainable_weights"] for p in result.phases] == [2]
    # the broken file is skipped and listed, in the log and in bundle.json
    assert any("broken.png" in line for line in logs)
    assert [Path(s["path"]).name for s in bundle.meta["dataset"]["skipped"]] == ["broken.png"]
    # the frozen base left training untouched
    model = bundle.load_keras_model()
    base = next(layer for layer in model.layers if hasattr(layer, "layers"))
    assert weights_fingerprint(base) == bundle.meta["base_weights_sha256"]
    # the Classifier gives the training model's val accuracy on the same val images
    data = load_training_data(color_dataset, 32, 0.2, 0, log=lambda _: None)
    probs = Classifier(result.bundle_path, backend="keras").predict_proba(list(data.val.images))
    accuracy = float(np.mean(probs.argmax(axis=1) == data.val.labels))
    assert accuracy == pytest.approx(result.val_accuracy)
    report = bundle.report_dir
    assert json.loads((report / "history.json").read_text())["val_accuracy"]
    assert "strategy: feature_extraction" in (report / "config.yaml").read_text()
    assert any((report / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_litert_export_agrees_with_keras(color_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("tl_perception.train.export", reason="export module not present")
    from tl_perception.inference import Classifier

    result = finetune(
        color_dataset, tmp_path / "b", tiny(tmp_path, export_tflite=True), log=print, verbose=0
    )
    bundle = read_bundle(result.bundle_path)
    assert bundle.tflite_path.is_file()
    images = [np.asarray(p, dtype=np.uint8) for p in np.random.default_rng(1).integers(
        0, 256, (6, 40, 40, 3))]  # fmt: skip
    keras_probs = Classifier(bundle.path, backend="keras").predict_proba(images)
    lite_probs = Classifier(bundle.path, backend="litert").predict_proba(images)
    np.testing.assert_allclose(keras_probs, lite_probs, atol=1e-4)


def test_truncate_trains_a_head_on_the_cut_base(color_dataset: Path, tmp_path: Path) -> None:
    result = finetune(
        color_dataset, tmp_path / "b", tiny(tmp_path, strategy="truncate"), log=print, verbose=0
    )
    meta = read_bundle(result.bundle_path).meta
    assert meta["cut_layer"] == meta["feature_layer"] == "block_9_expand_relu"
    assert [p["trainable_weights"] for p in result.phases] == [2]


@pytest.mark.slow
def test_fine_tune_trains_head_then_all_layers_and_can_keep_batchnorm_frozen(
    color_dataset: Path, tmp_path: Path
) -> None:
    from tl_perception.backbones import weights_fingerprint

    cfg = tiny(
        tmp_path, strategy="fine_tune", epochs=1, head_epochs=1, augment="none", batchnorm="frozen"
    )
    result = finetune(color_dataset, tmp_path / "b", cfg, log=print, verbose=0)
    names = [p["name"] for p in result.phases]
    assert names == ["head", "all"]
    head, full = result.phases
    assert head["trainable_weights"] == 2
    assert full["trainable_weights"] > 50  # every conv kernel; BatchNorm stays frozen
    assert set(result.history) >= {"head_val_accuracy", "all_val_accuracy"}
    model = read_bundle(result.bundle_path).load_keras_model()
    base = next(layer for layer in model.layers if hasattr(layer, "layers"))
    assert weights_fingerprint(base) != read_bundle(result.bundle_path).meta["base_weights_sha256"]
    for layer in base.layers:  # random init: BN in inference mode keeps mean 0, variance 1
        if layer.__class__.__name__ == "BatchNormalization":
            np.testing.assert_array_equal(layer.moving_mean.numpy(), 0.0)
            np.testing.assert_array_equal(layer.moving_variance.numpy(), 1.0)


@pytest.mark.slow
def test_mirrored_distribution_trains_on_one_device(color_dataset: Path, tmp_path: Path) -> None:
    result = finetune(
        color_dataset, tmp_path / "b", tiny(tmp_path, distribute="mirrored"), log=print, verbose=0
    )
    assert read_bundle(result.bundle_path).meta["config"]["distribute"] == "mirrored"


@pytest.mark.slow
def test_from_scratch_trains_every_layer_including_batchnorm(
    color_dataset: Path, tmp_path: Path
) -> None:
    cfg = tiny(tmp_path, strategy="from_scratch", epochs=1, augment="none")
    result = finetune(color_dataset, tmp_path / "b", cfg, log=print, verbose=0)
    (phase,) = result.phases
    assert phase["name"] == "all"
    model = read_bundle(result.bundle_path).load_keras_model()
    preprocessing = model.get_layer("preprocess_tf")
    assert not preprocessing.weights
    expected = sum(len(layer.weights) for layer in model.layers if layer.name != "pool")
    bn_stats = sum(
        2 for layer in model.layers[2].layers if layer.__class__.__name__ == "BatchNormalization"
    )
    assert phase["trainable_weights"] == expected - bn_stats  # moving mean/var never train
    assert result.history["loss"]


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(color_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    state = tmp_path / "bundle.partial" / "state.json"
    options = dict(epochs=400, patience=400, cache_dir=str(tmp_path / "cache"))
    code = (
        "from tl_perception.train.finetune import finetune\n"
        "from support.finetune_helpers import tiny\n"
        "from pathlib import Path\n"
        f"finetune({str(color_dataset)!r}, {str(out)!r}, "
        f"tiny(Path({str(tmp_path)!r}), **{options!r}), verbose=0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if state.is_file():
                phases = json.loads(state.read_text()).get("phases", {})
                done = phases.get("head", {}).get("epochs_done", 0)
                if done >= 2:
                    break
            time.sleep(0.05)
        assert done >= 2, "the run never checkpointed an epoch"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    interrupted = json.loads(state.read_text())["phases"]["head"]
    first_epochs = interrupted["history"]["loss"]
    logs: list[str] = []
    resumed = tiny(tmp_path, epochs=len(first_epochs) + 2, patience=400, resume=True)
    result = finetune(color_dataset, out, resumed, log=logs.append, verbose=0)
    assert any(f"resuming at epoch {len(first_epochs) + 1}" in line for line in logs)
    assert result.history["loss"][: len(first_epochs)] == first_epochs
    assert len(result.history["loss"]) == len(first_epochs) + 2
    assert not (tmp_path / "bundle.partial").exists()


def test_resume_with_other_options_is_refused(color_dataset: Path, tmp_path: Path) -> None:
    partial = tmp_path / "b.partial"
    partial.mkdir()
    (partial / "state.json").write_text(json.dumps({"config": {"backbone": "vgg16"}}))
    with pytest.raises(TrainingError, match="differ from the interrupted run"):
        finetune(color_dataset, tmp_path / "b", tiny(tmp_path, resume=True), log=print)


def test_empty_dataset_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        finetune(tmp_path / "data", tmp_path / "b", tiny(tmp_path), log=print)
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "b.partial").exists()


def test_class_with_one_image_is_a_clear_error(tmp_path: Path) -> None:
    root = make_color_dataset(tmp_path / "data", per_class=3)
    for extra in sorted((root / "blue").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DatasetError, match=r"\['blue'\] have fewer than 2"):
        finetune(root, tmp_path / "b", tiny(tmp_path), log=print)


def test_only_corrupt_files_is_a_clear_error(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no readable training images"):
        finetune(tmp_path / "data", tmp_path / "b", tiny(tmp_path), log=print)


def test_unknown_backbone_is_a_clear_error(color_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="unknown backbone 'resnet9000'; choose one of"):
        finetune(color_dataset, tmp_path / "b", tiny(tmp_path, backbone="resnet9000"))


def test_validation_split_keeps_sequences_together(tmp_path: Path) -> None:
    from tl_perception.train.data import load_training_data

    root = tmp_path / "data"
    rows = ["path,split,label,class_dir,sequence"]
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for seq in range(5):
            for i in range(4):
                rel = f"train/{cls}/{seq}_{i}.png"
                write_png(root / rel, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                rows.append(f"{rel},train,{cls},{cls},{cls}{seq}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    data = load_training_data(root, 8, 0.2, seed=3, log=print)
    train_seqs = {s.sequence for s in data.train.samples}
    val_seqs = {s.sequence for s in data.val.samples}
    assert val_seqs and not train_seqs & val_seqs
    assert {s.class_name for s in data.val.samples} == {"a", "b"}


def write_tracks(root: Path, tracks: int = 6, frames: int = 5) -> Path:
    """A plain tree whose file names are TRACK_FRAME.png, frames of a track near-identical.

    Like GTSRB: every frame of a track is the same object with a little noise, so pixel
    hashes differ and nothing but the file name tells the tracks apart.
    """
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for track in range(tracks):
            base = rng.integers(0, 256, (8, 8, 3)).astype(np.int16)
            for frame in range(frames):
                noise = rng.integers(-3, 4, base.shape)
                rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
                write_png(root / cls / f"{cls}{track:03d}_{frame:02d}.png", rgb)
    return root


def _straddling(data) -> set[str]:
    """Tracks (file-name prefixes) with frames on both sides of the split."""

    def tracks(split) -> set[str]:
        return {s.path.name.split("_")[0] for s in split.samples}

    return tracks(data.train) & tracks(data.val)


def test_group_regex_keeps_each_track_on_one_side_of_the_val_split(tmp_path: Path) -> None:
    from tl_perception.train.data import load_training_data

    root = write_tracks(tmp_path / "data")
    leaky = load_training_data(root, 8, 0.3, seed=0, log=print)
    assert _straddling(leaky)  # what a plain tree does without the regex
    logs: list[str] = []
    data = load_training_data(root, 8, 0.3, seed=0, log=logs.append, group_regex=r"^(\w+?)_")
    assert not _straddling(data)
    assert {s.class_name for s in data.val.samples} == {"a", "b"}
    assert 0.2 <= len(data.val) / (len(data.train) + len(data.val)) <= 0.4
    assert "group_regex" in data.val_source
    assert "no sequences known" in leaky.val_source


def test_group_regex_that_misses_a_file_name_is_a_one_line_error(tmp_path: Path) -> None:
    from tl_perception.train.data import load_training_data

    root = write_tracks(tmp_path / "data", tracks=2, frames=2)
    write_png(root / "b" / "stray.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"matches no sequence in 1 of 9 .*'b/stray.png'"):
        load_training_data(root, 8, 0.2, seed=0, log=print, group_regex=r"^(\w+?)_")


def test_group_regex_is_checked_before_any_image_is_read(
    color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TrainingError, match="has no group"):
        FinetuneConfig(group_regex=r"^\d+_").validate()
    with pytest.raises(TrainingError, match="not a valid regex"):
        load_config(None, group_regex="^(")
    from tl_perception.cli import main

    code = main(
        ["finetune", str(color_dataset), "--out", str(tmp_path / "b"), "--group-regex", "("]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "group_regex '(' is not a valid regex" in err[0]


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("backbone: mobilenet\ninput-size: 64\nepochs: 3\n")
    cfg = load_config(path, epochs=5, seed=None)
    assert (cfg.backbone, cfg.input_size, cfg.epochs, cfg.seed) == ("mobilenet", 64, 5, 0)
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(TrainingError, match=r"unknown option\(s\) \['learning_rat'\]"):
        load_config(path)


def test_cli_finetune_writes_a_bundle(color_dataset: Path, tmp_path: Path) -> None:
    from tl_perception.cli import main

    code = main(
        [
            "finetune", str(color_dataset), "--out", str(tmp_path / "b"), "--weights", "none",
            "--input-size", "32", "--strategy", "feature_extraction", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache"), "--no-export", "--no-calibrate",
        ]
    )  # fmt: skip
    assert code == 0
    meta = read_bundle(tmp_path / "b").meta
    assert meta["config"]["epochs"] == 1
    assert (meta["config"]["calibrate"], meta["calibration"]["fitted"]) == (False, False)
    assert meta["calibration"]["temperature"] == 1.0


def test_cli_reports_bad_input_size_in_one_line(
    color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tl_perception.cli import main

    code = main(
        [
            "finetune", str(color_dataset), "--out", str(tmp_path / "b"),
            "--backbone", "inception_v3", "--input-size", "64", "--weights", "none",
        ]
    )  # fmt: skip
    assert code == 2
    assert "valid for inception_v3: use 75 to 1024" in capsys.readouterr().err


@pytest.mark.slow
def test_vehicles_feature_extraction_reaches_093_on_test(shared_dir: Path, tmp_path: Path) -> None:
    """Real data: MobileNetV2 a0.35 with the shared ImageNet weights, frozen base."""
    from tl_perception.dataset import read_dataset
    from tl_perception.images import read_image_file
    from tl_perception.inference import Classifier

    cfg = FinetuneConfig(
        input_size=96,
        weights=str(shared_dir / "weights" / "mobilenet_v2_0.35_imagenet_no_top.h5"),
        strategy="feature_extraction",
        cache_dir=str(tmp_path / "cache"),
        export_tflite=False,
        evaluate=False,
    )
    result = finetune(shared_dir / "data" / "vehicles" / "train", tmp_path / "b", cfg, verbose=0)
    test = read_dataset(shared_dir / "data" / "vehicles" / "test").samples
    classifier = Classifier(result.bundle_path, backend="keras")
    probs = classifier.predict_proba([read_image_file(s.path) for s in test])
    labels = np.array([classifier.class_names.index(s.class_name) for s in test])
    accuracy = float(np.mean(probs.argmax(axis=1) == labels))
    assert accuracy >= 0.93, accuracy


def make_confusable_dataset(root: Path, per_class: int = 40) -> Path:
    """Colour classes where every third image is noise: val has mistakes to calibrate on."""
    from support.helpers import color_image

    rng = np.random.default_rng(7)
    for name in ("red", "green", "blue"):
        for i in range(per_class):
            rgb = color_image(name, (32, 32), seed=i)
            if i % 3 == 0:
                rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            write_png(root / name / f"{i:03d}.png", rgb)
    return root


def test_finetune_folds_a_val_temperature_into_the_model_and_records_it(tmp_path: Path) -> None:
    from tl_perception.inference import Classifier
    from tl_perception.train.calibration import expected_calibration_error
    from tl_perception.train.data import load_training_data

    root = make_confusable_dataset(tmp_path / "data")
    logs: list[str] = []
    result = finetune(root, tmp_path / "b", tiny(tmp_path, epochs=8), log=logs.append, verbose=0)
    bundle = read_bundle(result.bundle_path)
    record = bundle.meta["calibration"]
    assert record["fitted"] is True and (record["bins"], record["split"]) == (15, "val")
    assert record == result.calibration
    assert bundle.temperature == record["temperature"] > 0
    assert record["nll_after"] <= record["nll_before"]
    assert any(line.startswith("calibration: T=") for line in logs)
    # the model's own scores are the calibrated ones: their val ECE is the one recorded
    data = load_training_data(root, 32, 0.2, 0, log=lambda _: None)
    assert record["n"] == len(data.val) >= 20
    probs = Classifier(bundle.path, backend="keras").predict_proba(list(data.val.images))
    assert expected_calibration_error(probs, data.val.labels) == pytest.approx(
        record["ece_after"], abs=1e-3
    )
    assert float(np.mean(probs.argmax(axis=1) == data.val.labels)) == result.val_accuracy
    threshold = bundle.meta["unknown_threshold"]
    assert (threshold["split"], threshold["target_precision"]) == ("val", 0.95)
    assert bundle.unknown_threshold == threshold["value"]
    if threshold["value"] is not None:  # the rule, checked against the model's own scores
        answered = probs.max(axis=1) >= threshold["value"] - 1e-6  # float32 scores
        right = probs.argmax(axis=1) == data.val.labels
        assert float(np.mean(right[answered])) >= 0.95


def test_finetune_copies_the_dataset_crop_policy_into_the_bundle(tmp_path: Path) -> None:
    from tl_perception.crop import CropPolicy

    root = make_color_dataset(tmp_path / "data", per_class=6)
    policy = CropPolicy(context=0.2, square=True, fill="reflect", fill_value=0, min_box=8.0)
    summary = {"format": "tl_perception.dataset", "version": 2, "status": "complete"}
    (root / "dataset.json").write_text(json.dumps({**summary, "crop_policy": policy.to_dict()}))
    result = finetune(root, tmp_path / "b", tiny(tmp_path, epochs=1), log=print, verbose=0)
    bundle = read_bundle(result.bundle_path)
    assert bundle.crop_policy == policy
    assert bundle.meta["crop"] == policy.to_dict()
    # no policy in the dataset: the bundle classifies whole frames
    (root / "dataset.json").write_text(json.dumps(summary))
    plain = finetune(root, tmp_path / "c", tiny(tmp_path, epochs=1), log=print, verbose=0)
    assert "crop" not in read_bundle(plain.bundle_path).meta
    assert read_bundle(plain.bundle_path).crop_policy is None


def test_a_damaged_dataset_crop_policy_stops_before_any_image_is_read(tmp_path: Path) -> None:
    root = make_color_dataset(tmp_path / "data", per_class=3)
    for image in root.rglob("*.png"):  # decoding first would fail with "no readable images"
        image.write_bytes(b"junk")
    summary = {"format": "tl_perception.dataset", "version": 2, "status": "complete"}
    (root / "dataset.json").write_text(json.dumps({**summary, "crop_policy": {"version": 1}}))
    with pytest.raises(DatasetError, match=r"dataset\.json: crop_policy: missing 'context'"):
        finetune(root, tmp_path / "b", tiny(tmp_path), log=print)
    assert not (tmp_path / "b").exists()


def test_calibration_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="calibrate must be true or false"):
        load_config(None, calibrate="yes")
    with pytest.raises(TrainingError, match=r"unknown_precision must be a number in \(0, 1\]"):
        load_config(None, unknown_precision=1.5)
    assert load_config(None).calibrate is True
