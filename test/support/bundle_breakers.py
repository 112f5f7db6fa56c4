"""Ways to break a model bundle, shared by the bundle, node and start-up fuzz tests.

Each breaker edits a fresh copy of a real bundle in place, seeded; `cases` lists them all.
"""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from tl_perception.inference import Classifier

from support.helpers import make_color_bundle

SEED = 9
Breaker = Callable[[Path, random.Random], None]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.tflite*"))
    return dst


# ------------------------------------------------------------------ builders of broken bundles
def _meta(path: Path) -> dict:
    return json.loads((path / "bundle.json").read_text(encoding="utf-8"))


def _write_meta(path: Path, meta: object) -> None:
    (path / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")


def _edit_meta(**fields: object) -> Breaker:
    def breaker(path: Path, _rng: random.Random) -> None:
        _write_meta(path, {**_meta(path), **fields})

    return breaker


def _rewrite_zip(path: Path, edit: Callable[[dict[str, bytes]], dict[str, bytes]]) -> None:
    with zipfile.ZipFile(path / "model.keras") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path / "model.keras", "w") as archive:
        for name, data in edit(members).items():
            archive.writestr(name, data)


def truncated_zip(path: Path, rng: random.Random) -> None:
    data = (path / "model.keras").read_bytes()
    (path / "model.keras").write_bytes(data[: rng.randrange(1, len(data) - 1)])


def bit_flipped_weights(path: Path, rng: random.Random) -> None:
    def edit(members: dict[str, bytes]) -> dict[str, bytes]:
        weights = bytearray(members["model.weights.h5"])
        for _ in range(64):
            weights[rng.randrange(len(weights))] ^= 0xFF
        return {**members, "model.weights.h5": bytes(weights)}

    _rewrite_zip(path, edit)


def garbage_config(path: Path, rng: random.Random) -> None:
    _rewrite_zip(path, lambda m: {**m, "config.json": rng.randbytes(200)})


def config_is_a_list(path: Path, _rng: random.Random) -> None:
    _rewrite_zip(path, lambda m: {**m, "config.json": b"[1, 2, 3]"})


def missing_weights(path: Path, _rng: random.Random) -> None:
    _rewrite_zip(path, lambda m: {k: v for k, v in m.items() if k != "model.weights.h5"})


def empty_zip(path: Path, _rng: random.Random) -> None:
    _rewrite_zip(path, lambda m: {})


def foreign_module_in_config(marker: Path) -> Breaker:
    """A config naming `subprocess.Popen`/`os.system` to run a command as it deserialises."""

    def breaker(path: Path, _rng: random.Random) -> None:
        def edit(members: dict[str, bytes]) -> dict[str, bytes]:
            config = json.loads(members["config.json"])
            config["config"]["layers"][1] = {
                "module": "subprocess",
                "class_name": "Popen",
                "config": {"args": ["touch", str(marker)]},
                "registered_name": "Popen",
                "name": "evil",
                "inbound_nodes": config["config"]["layers"][1].get("inbound_nodes", []),
            }
            layer = config["config"]["layers"][-1]
            layer["config"]["activation"] = {
                "module": "os",
                "class_name": "function",
                "config": "system",
                "registered_name": "function",
            }
            return {**members, "config.json": json.dumps(config).encode()}

        _rewrite_zip(path, edit)

    return breaker


def labels_mismatch(count: int) -> Breaker:
    def breaker(path: Path, _rng: random.Random) -> None:
        names = [f"class{i}" for i in range(count)]
        _write_meta(path, {**_meta(path), "class_names": names})
        (path / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")

    return breaker


def tflite_from(other: Path) -> Breaker:
    """Ship the model.tflite of another bundle (other input size or class count)."""

    def breaker(path: Path, _rng: random.Random) -> None:
        shutil.copy(other / "model.tflite", path / "model.tflite")

    return breaker


def invalid_utf8(name: str) -> Breaker:
    def breaker(path: Path, _rng: random.Random) -> None:
        (path / name).write_bytes(b"\xff\xfe\x00red\ngreen\x80\n")

    return breaker


def deeply_nested_json(path: Path, _rng: random.Random) -> None:
    (path / "bundle.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")


def line_break_in_a_class_name(path: Path, _rng: random.Random) -> None:
    names = ["red", "green\u2028blue", "blue"]
    _write_meta(path, {**_meta(path), "class_names": names})
    (path / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


def random_meta_values(path: Path, rng: random.Random) -> None:
    """One required field replaced by a random JSON value of a random type."""
    values = [
        None,
        True,
        -1,
        0,
        2**70,
        3.5,
        float("1e308"),
        "",
        "x" * 5000,
        "\u202e\x00",
        [],
        [None],
        [[32, 32]],
        {"a": 1},
        [32, 32, 3],
        list(range(40)),
    ]
    meta = _meta(path)
    field = rng.choice(
        ["format", "version", "input_size", "color_order", "backbone", "class_names"]
    )
    meta[field] = rng.choice(values)
    _write_meta(path, meta)


def make_other_shapes(root: Path) -> dict[str, Path]:
    """Bundles whose model.tflite has another input size / another class count."""
    small = make_color_bundle(root / "small", input_size=16)
    two = make_color_bundle(root / "two", classes=("red", "blue"))
    for bundle in (small, two):
        Classifier(bundle, backend="litert")  # converts and caches model.tflite beside it
    return {"input": small, "classes": two}


def make_lambda_bundle(root: Path) -> tuple[Path, Path]:
    """A bundle whose model has a Lambda that appends to a marker file whenever it runs."""
    import keras

    from tl_perception.bundle import bundle_meta, write_bundle

    root.mkdir(parents=True, exist_ok=True)
    marker = root / "lambda_ran"
    # A plain lambda (no defaults, no closure), so a load without safe mode can rebuild it.
    touch = eval(f"lambda t: (open({str(marker)!r}, 'a').write('ran'), t)[1]")
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Lambda(touch)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    meta = bundle_meta(class_names=("red", "green", "blue"), input_size=(32, 32), backbone="x")
    bundle = write_bundle(root / "bundle", model, meta).path
    marker.unlink()  # building the model ran the Lambda once, here, in the test
    return bundle, marker


def make_huge_input_bundle(root: Path, side: int = 5000) -> Path:
    """A consistent bundle whose network really takes side x side images (over MAX_INPUT_SIDE).

    Shapes agree everywhere, so only the size bound can refuse it, before a warm-up allocates
    a frame of that size (at 60000 px that would be 10.8 GB). write_bundle refuses to write it,
    so the files are written as an attacker would.
    """
    import keras

    from tl_perception.bundle import bundle_meta

    inputs = keras.Input((side, side, 3), dtype="uint8")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    meta = bundle_meta(class_names=("a", "b", "c"), input_size=(side, side), backbone="x")
    root.mkdir(parents=True)
    model.save(root / "model.keras")
    (root / "labels.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (root / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


ABSURD_INPUT_SIZES = [
    [0, 0],
    [-3, 32],
    [10**9, 10**9],
    [100_000, 32],
    [True, True],
    [32.0, 32.0],
    "32x32",
    [32, 32, 3],
    [16, 16],  # plausible, but not what the network takes
]


def cases(marker: Path, other_shapes: dict[str, Path]) -> dict[str, Breaker]:
    found: dict[str, Breaker] = {
        "truncated_zip": truncated_zip,
        "bit_flipped_weights": bit_flipped_weights,
        "garbage_config": garbage_config,
        "config_is_a_list": config_is_a_list,
        "missing_weights": missing_weights,
        "empty_zip": empty_zip,
        "foreign_module_in_config": foreign_module_in_config(marker),
        "fewer_labels_than_outputs": labels_mismatch(2),
        "more_labels_than_outputs": labels_mismatch(5),
        "tflite_of_another_input_size": tflite_from(other_shapes["input"]),
        "tflite_of_another_class_count": tflite_from(other_shapes["classes"]),
        "invalid_utf8_labels": invalid_utf8("labels.txt"),
        "invalid_utf8_meta": invalid_utf8("bundle.json"),
        "deeply_nested_json": deeply_nested_json,
        "line_break_in_a_class_name": line_break_in_a_class_name,
    }
    for size in ABSURD_INPUT_SIZES:
        found[f"input_size={size!r}"] = _edit_meta(input_size=size)
    for i in range(8):
        found[f"random_meta_{i}"] = random_meta_values
    return found


def broken_bundles(
    src: Path, root: Path, marker: Path, other_shapes: dict[str, Path]
) -> dict[str, Path]:
    """Every case of `cases`, applied to a fresh copy of `src` under `root` (seeded)."""
    rng = random.Random(SEED)
    made = {}
    for name, breaker in cases(marker, other_shapes).items():
        broken = copy_bundle(src, root / name.replace("/", "_"))
        breaker(broken, rng)
        made[name] = broken
    return made
