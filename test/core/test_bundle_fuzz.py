"""Bundle fuzz: every broken bundle is refused with one `BundleError` line, and no code runs.

Real bundles (the tiny trained colour model) broken in every way a download, a disk or an
attacker can break them: a corrupt or truncated `model.keras` zip, a model with a Lambda layer
(Keras safe mode refuses it; the Lambda would write a marker file, so "no code ran" is checked,
and a control load without safe mode shows it really would), a config that names foreign
modules, labels that do not match the model's outputs, absurd `input_size`s, a `model.tflite` of
another shape, bit-flipped flatbuffers, and random `bundle.json`/`labels.txt` content. Both
backends load every case, as the node does (`load_classifier`: load and warm up).
Seeded and bounded: about 15 s on two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tl_perception.bundle import read_bundle
from tl_perception.errors import BundleError
from tl_perception.inference import Classifier

from support.bundle_breakers import (
    SEED,
    broken_bundles,
    copy_bundle,
    make_huge_input_bundle,
    make_lambda_bundle,
    make_other_shapes,
)


def load_like_the_node(path: Path, backend: str) -> Classifier:
    clf = Classifier(path, backend=backend)
    clf.warmup()
    return clf


def refusal_problem(path: Path, backend: str) -> tuple[str, str | None]:
    """(BundleError message, None) when refused properly, else ("", what went wrong)."""
    try:
        load_like_the_node(path, backend)
    except BundleError as err:
        message = str(err)
        if "\n" in message or len(message) >= 1000:
            return message, f"not one short line: {message[:300]!r}"
        if str(path) not in message:
            return message, f"does not name the bundle: {message!r}"
        return message, None
    except Exception as err:  # what the fuzz is for: anything else escaping
        return "", f"{type(err).__name__} escaped: {str(err)[:300]!r}"
    return "", "accepted"


def assert_refused_in_one_line(path: Path, backend: str) -> str:
    message, problem = refusal_problem(path, backend)
    assert problem is None, problem
    return message


@pytest.fixture(scope="module")
def other_shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_other_shapes(tmp_path_factory.mktemp("other_shapes"))


@pytest.fixture(scope="module")
def lambda_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_lambda_bundle(tmp_path_factory.mktemp("lambda"))


@pytest.fixture(scope="module")
def huge_input_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_huge_input_bundle(tmp_path_factory.mktemp("huge_input") / "bundle")


def test_a_network_that_takes_absurd_images_is_refused_before_any_allocation(
    huge_input_bundle: Path,
) -> None:
    for backend in ("keras", "litert"):
        assert "input_size" in assert_refused_in_one_line(huge_input_bundle, backend)


def test_every_broken_bundle_is_one_bundle_error_line_on_both_backends(
    color_bundle: Path, other_shapes: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "foreign_code_ran"
    refused: dict[str, str] = {}
    problems: dict[str, str] = {}
    for name, broken in broken_bundles(color_bundle, tmp_path, marker, other_shapes).items():
        for backend in ("keras", "litert"):
            if name.startswith("tflite_") and backend == "keras":
                continue  # the Keras backend never opens model.tflite
            message, problem = refusal_problem(broken, backend)
            if problem is not None:
                problems[f"{name}/{backend}"] = problem
            refused[f"{name}/{backend}"] = message
    assert not problems, "\n".join(f"{case}: {why}" for case, why in problems.items())
    assert not marker.exists(), "a bundle's config made the loader run foreign code"
    assert "2 outputs" in refused["tflite_of_another_class_count/litert"]
    assert "input shape" in refused["tflite_of_another_input_size/litert"]
    assert "labels.txt has 2" in refused["fewer_labels_than_outputs/keras"]


def test_a_lambda_layer_is_refused_and_its_code_never_runs(
    lambda_bundle: tuple[Path, Path],
) -> None:
    bundle, marker = lambda_bundle
    for backend in ("keras", "litert", "auto"):
        message = assert_refused_in_one_line(bundle, backend)
        assert "Lambda" in message
    assert not marker.exists(), "loading the bundle ran the Lambda's code"
    # Control: without safe mode the very same file does run the Lambda, so the marker proves it.
    import keras

    keras.saving.load_model(bundle / "model.keras", safe_mode=False)
    assert marker.exists()
    marker.unlink()


def test_bit_flipped_shipped_tflite_never_escapes_as_anything_but_bundle_error(
    other_shapes: dict[str, Path], tmp_path: Path
) -> None:
    """In a child process: a flatbuffer that crashed LiteRT natively must fail a test, not pytest.

    A flipped byte in the weights gives a model that loads and answers (nothing can tell); every
    other outcome must be a BundleError line.
    """
    source = other_shapes["classes"]
    child = f"""
import json, random, shutil, sys
from pathlib import Path
from tl_perception.errors import BundleError
from tl_perception.inference import Classifier
rng = random.Random({SEED})
src = Path({str(source)!r}); tmp = Path({str(tmp_path)!r})
data = (src / "model.tflite").read_bytes()
outcomes = {{"ok": 0, "refused": 0}}
for i in range(150):
    flipped = bytearray(data)
    for _ in range(rng.choice([1, 3, 12])):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    case = tmp / f"case{{i}}"
    shutil.copytree(src, case, ignore=shutil.ignore_patterns("model.tflite*"))
    (case / "model.tflite").write_bytes(bytes(flipped))
    try:
        clf = Classifier(case, backend="litert")
        clf.warmup()
        outcomes["ok"] += 1
    except BundleError as err:
        assert "\\n" not in str(err), str(err)
        outcomes["refused"] += 1
    shutil.rmtree(case)
print(json.dumps(outcomes))
"""
    run = subprocess.run(
        [sys.executable, "-c", child], check=False, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    outcomes = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcomes["refused"] > 50 and sum(outcomes.values()) == 150, outcomes


def test_read_bundle_refuses_a_huge_bundle_json_without_reading_it(
    color_bundle: Path, tmp_path: Path
) -> None:
    broken = copy_bundle(color_bundle, tmp_path / "huge")
    with open(broken / "bundle.json", "r+b") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(BundleError, match="too large"):
        read_bundle(broken)
