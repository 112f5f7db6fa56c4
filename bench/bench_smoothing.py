"""Label smoothing on a held-out synthetic drive: flicker against switch delay, per setting.

1. `tl-perception synth` a training drive (seed 1) and a held-out drive (seed 2), kind signs;
2. `tl-perception extract` the training drive (labels from /label) and `tl-perception finetune`
   a small bundle (MobileNetV2 a0.35, ImageNet weights, fine_tune at 96 px, ~2 min on 2 cores;
   feature_extraction takes 25 s, but its frozen, nearly mirror-invariant base confuses signs
   such as keep_left/keep_right (docs/demo.md): 0.64 raw accuracy held out, against 0.81);
3. `Classifier` (LiteRT, as the node) gives per-frame probabilities for the held-out frames,
   read with the package's bag reader, truth from its /label topic; three conditions:
   clean frames, degraded frames scattered at random, and degraded frames in bursts of 2-4
   (a passing truck, glare, a wiper): synthetic frames are clean, the degraded ones stand in
   for the blur, night and occlusions of a real drive;
4. `LabelSmoother` for every setting (mode none / EMA alpha 0.7, 0.5, 0.3 x switch_frames 1, 2,
   3, 5), scored with `tl_perception.smoothing_metrics`; prints one Markdown table (as in
   docs/performance.md, "Smoothing: flicker against delay").

Steps 1-2 are cached in --workdir (default: a directory under the system temp dir), keyed by
their settings, so a second run only classifies and smooths.

    .venv/bin/python bench/bench_smoothing.py [--workdir DIR] [--heldout-frames 3000]
        [--degrade-fraction 0.25] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from tl_perception.smoothing import LabelSmoother, SmoothingConfig  # noqa: E402
from tl_perception.smoothing_metrics import (  # noqa: E402
    LabelSequence,
    flicker_per_second,
    label_accuracy,
    switch_delay_frames,
)

TRAIN_SEED, HELDOUT_SEED, DEGRADE_SEED = 1, 2, 3
RATE_HZ = 10.0
LABEL_TOLERANCE_S = 0.5 / RATE_HZ  # as the demo: a label describes one frame
ALPHAS: tuple[float | None, ...] = (None, 0.7, 0.5, 0.3)  # None: mode "none"
SWITCH_FRAMES: tuple[int, ...] = (1, 2, 3, 5)
BURST_FRAMES = (2, 4)
BATCH = 64


@dataclass(frozen=True)
class Drive:
    """The held-out drive as the node would see it: frames, header stamps, truth per frame."""

    frames: list[np.ndarray]
    stamps: list[float]
    truth: list[str | None]


@dataclass(frozen=True)
class Row:
    """One (condition, setting) measurement."""

    condition: str
    setting: str
    flicker_per_s: float
    delay_mean: float | None
    delay_p95: float | None
    never: int
    changes: int
    accuracy: float | None


def main() -> int:
    args = _parse()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    bundle, heldout = prepare(args, work)
    drive = read_drive(heldout)
    rows, raw = measure(bundle, drive, args)
    facts = _facts(args, drive, raw, time.monotonic() - started)
    print(markdown(rows, facts))
    if args.json:
        payload = {"facts": facts, "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    default_work = Path(tempfile.gettempdir()) / "tl_perception_bench_smoothing"
    parser.add_argument("--workdir", default=str(default_work), help="cache of steps 1-2")
    parser.add_argument("--train-frames", type=int, default=1600)
    parser.add_argument("--heldout-frames", type=int, default=3000)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--strategy", default="fine_tune", help="finetune --strategy")
    parser.add_argument("--epochs", type=int, help="finetune --epochs (default: its own)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (KERAS_HOME) or a path")
    parser.add_argument("--degrade-fraction", type=float, default=0.25)
    parser.add_argument("--json", help="also write the rows here")
    return parser.parse_args()


# --- steps 1-2: drives and a bundle, cached ---------------------------------------------------


Env = dict[str, str] | None


def _cli(*argv: str, env: Env = None) -> None:
    """`tl-perception ARGV` with this Python; its output goes to our stderr."""
    command = [sys.executable, "-m", "tl_perception.cli", *argv]
    print(f"$ tl-perception {' '.join(argv)}", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, stdout=sys.stderr, env=env)


def _step(work: Path, output: Path, argv: list[str], upstream: Any, env: Env = None) -> Any:
    """Run `tl-perception ARGV` unless it ran with the same argv and upstream settings and
    `output` is still there; returns its settings, which the steps after it depend on."""
    settings = {"argv": argv, "upstream": upstream}
    record = work / f"{output.name}.json"
    done = record.is_file() and json.loads(record.read_text(encoding="utf-8")) == settings
    if done and output.exists():
        print(f"[{output.name}] reused", file=sys.stderr)
        return settings
    record.unlink(missing_ok=True)
    if output.exists():
        shutil.rmtree(output)
    began = time.monotonic()
    _cli(*argv, env=env)
    record.write_text(json.dumps(settings), encoding="utf-8")
    print(f"[{output.name}] {time.monotonic() - began:.1f} s", file=sys.stderr)
    return settings


def _keras_env(work: Path) -> dict[str, str]:
    """A writable copy of the shared Keras cache, so `--weights imagenet` resolves offline."""
    env = dict(os.environ)
    source = SHARED / "weights" / "keras-cache"
    if "KERAS_HOME" in env or not source.is_dir():
        return env
    home = work / "keras_home"
    if not home.is_dir():
        shutil.copytree(source, home)
        for path in home.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    env["KERAS_HOME"] = str(home)
    return env


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """Synthesise, extract and train (each step only when its settings changed)."""
    train_bag, heldout_bag = work / "train_bag", work / "heldout_bag"
    synth = ["synth", "--kind", "signs", "--rate", str(RATE_HZ)]
    drive = _step(
        work,
        train_bag,
        [*synth, "--frames", str(args.train_frames), "--seed", str(TRAIN_SEED), str(train_bag)],
        None,
    )
    _step(
        work,
        heldout_bag,
        [
            *synth,
            "--frames",
            str(args.heldout_frames),
            "--seed",
            str(HELDOUT_SEED),
            str(heldout_bag),
        ],
        None,
    )
    dataset = work / "dataset"
    extract = ["extract", str(train_bag), "--topic", "/camera/image_raw", "--label-topic", "/label"]
    extract += ["--label-tolerance", str(LABEL_TOLERANCE_S), "--split", "0.7,0.15,0.15"]
    data = _step(work, dataset, [*extract, "--out", str(dataset), "--no-progress"], drive)
    bundle = work / "bundle"
    train = ["finetune", str(dataset), "--out", str(bundle), "--strategy", args.strategy]
    train += ["--input-size", str(args.input_size), "--weights", args.weights, "--seed", "0"]
    train += ["--epochs", str(args.epochs)] if args.epochs else []
    train += ["--cache-dir", str(work / "feature_cache")]
    _step(work, bundle, train, data, _keras_env(work))
    return bundle, heldout_bag


# --- step 3: the held-out drive and its per-frame probabilities -------------------------------


def read_drive(bag: Path) -> Drive:
    """Frames and header stamps of /camera/image_raw; truth = the /label in force at each."""
    from tl_perception.bag.labels import read_label_track
    from tl_perception.bag.reader import deserialize, iter_messages, open_bag
    from tl_perception.images import message_to_rgb

    labels = read_label_track(bag, "/label")
    tolerance_ns = round(LABEL_TOLERANCE_S * 1e9)
    frames, stamps, truth = [], [], []
    with open_bag(bag) as reader:
        for conn, log_ns, raw in iter_messages(reader, bag, ["/camera/image_raw"]):
            msg = deserialize(reader, bag, raw, conn.msgtype)
            frames.append(message_to_rgb(msg))
            stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
            truth.append(labels.at(log_ns, tolerance_ns))
    return Drive(frames, stamps, truth)


def degrade(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the ways a real frame goes bad: motion blur, night noise, glare, occlusion."""
    kind = int(rng.integers(4))
    img: np.ndarray = rgb.astype(np.float64)
    if kind == 0:  # motion blur, horizontal, 9-15 px
        size = int(rng.integers(9, 16))
        kernel = np.zeros((size, size), np.float64)
        kernel[size // 2, :] = 1.0 / size
        img = cv2.filter2D(img, -1, kernel)
    elif kind == 1:  # dark and noisy
        img = img * 0.35 + rng.normal(0.0, 30.0, img.shape)
    elif kind == 2:  # glare: washed out towards white
        img = img * 0.35 + 200.0
    else:  # a vertical band (pole, pedestrian, wiper) over 35-50 % of the width
        w = img.shape[1]
        band = int(w * rng.uniform(0.35, 0.5))
        x = int(rng.integers(0, w - band))
        img[:, x : x + band] = rng.uniform(40, 160, 3)
    out: np.ndarray = np.clip(img, 0, 255).astype(np.uint8)
    return out


def degraded_mask(count: int, fraction: float, bursts: bool, seed: int) -> np.ndarray:
    """Which frames to degrade: each at random, or in bursts of 2-4 frames; about `fraction`."""
    rng = np.random.default_rng(seed)
    if not bursts:
        return rng.random(count) < fraction
    mean_len = sum(BURST_FRAMES) / 2
    start_p = fraction / (mean_len * (1.0 - fraction))  # clean wait 1/p, then a burst
    mask = np.zeros(count, dtype=bool)
    i = 0
    while i < count:
        if rng.random() < start_p:
            length = int(rng.integers(BURST_FRAMES[0], BURST_FRAMES[1] + 1))
            mask[i : i + length] = True
            i += length + 1  # a burst is followed by at least one clean frame
        else:
            i += 1
    return mask


def probabilities(classifier: Any, frames: Sequence[np.ndarray]) -> np.ndarray:
    """(N, C) probabilities, in batches."""
    parts = [classifier.predict_proba(frames[i : i + BATCH]) for i in range(0, len(frames), BATCH)]
    return np.concatenate(parts).astype(np.float64)


def conditions(drive: Drive, fraction: float) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Condition name -> (frames, degraded mask)."""
    out = {"clean": (drive.frames, np.zeros(len(drive.frames), dtype=bool))}
    for name, bursts in ((f"scattered {fraction:.0%}", False), (f"bursts {fraction:.0%}", True)):
        mask = degraded_mask(len(drive.frames), fraction, bursts, DEGRADE_SEED)
        rng = np.random.default_rng([DEGRADE_SEED, int(bursts)])
        frames = [degrade(f, rng) if m else f for f, m in zip(drive.frames, mask, strict=True)]
        out[name] = (frames, mask)
    return out


# --- step 4: smoothing and scoring ------------------------------------------------------------


def settings() -> list[tuple[str, SmoothingConfig]]:
    """Every mode x alpha x switch_frames of the grid, named as in the table."""
    grid = []
    for alpha in ALPHAS:
        for n in SWITCH_FRAMES:
            if alpha is None:
                name, cfg = f"none, N={n}", SmoothingConfig(mode="none", switch_frames=n)
            else:
                name = f"ema {alpha}, N={n}"
                cfg = SmoothingConfig(mode="ema", alpha=alpha, switch_frames=n)
            grid.append((name, cfg))
    return grid


def smooth(cfg: SmoothingConfig, probs: np.ndarray, stamps: Sequence[float]) -> list[int]:
    """The published class per frame, one camera key, as the node would run it."""
    smoother = LabelSmoother(cfg)
    return [smoother.update("camera", p, t).class_index for p, t in zip(probs, stamps, strict=True)]


def score(condition: str, setting: str, seq: LabelSequence) -> Row:
    delay = switch_delay_frames(seq)
    return Row(
        condition,
        setting,
        flicker_per_second(seq),
        delay.mean_frames,
        delay.p95_frames,
        delay.never,
        delay.changes,
        label_accuracy(seq),
    )


def measure(
    bundle: Path, drive: Drive, args: argparse.Namespace
) -> tuple[list[Row], dict[str, Any]]:
    """Rows for every condition x setting, and per condition the raw classifier's facts."""
    from tl_perception.inference import Classifier

    classifier = Classifier(bundle)
    names = classifier.class_names
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for condition, (frames, mask) in conditions(drive, args.degrade_fraction).items():
        began = time.monotonic()
        probs = probabilities(classifier, frames)
        top1 = probs.argmax(axis=1)
        labelled = np.array([t is not None for t in drive.truth])
        hits = np.array([names[c] == t for c, t in zip(top1, drive.truth, strict=True)])
        raw[condition] = {
            "degraded_frames": int(mask.sum()),
            "accuracy_degraded": _mean(hits[labelled & mask]),
            "accuracy_intact": _mean(hits[labelled & ~mask]),
            "classify_s": round(time.monotonic() - began, 1),
        }
        for setting, cfg in settings():
            published = [names[c] for c in smooth(cfg, probs, drive.stamps)]
            rows.append(
                score(condition, setting, LabelSequence(drive.stamps, drive.truth, published))
            )
    return rows, raw


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


# --- report -----------------------------------------------------------------------------------


def _facts(
    args: argparse.Namespace, drive: Drive, raw: dict[str, Any], seconds: float
) -> dict[str, Any]:
    runs = sum(
        1
        for i, t in enumerate(drive.truth)
        if t is not None and (i == 0 or drive.truth[i - 1] != t)
    )
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "heldout_frames": len(drive.frames),
        "labelled_frames": sum(t is not None for t in drive.truth),
        "sign_runs": runs,
        "rate_hz": RATE_HZ,
        "degrade_fraction": args.degrade_fraction,
        "input_size": args.input_size,
        "raw": raw,
        "seconds": round(seconds, 1),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(rows: Sequence[Row], facts: dict[str, Any]) -> str:
    """One table, a row per setting; each cell holds the conditions' values in order."""
    conditions = list(facts["raw"])
    raw = "; ".join(
        f"{name}: {r['degraded_frames']} degraded, top-1 {_fmt(r['accuracy_intact'], 3)} intact"
        + (f" / {_fmt(r['accuracy_degraded'], 3)} degraded" if r["degraded_frames"] else "")
        for name, r in facts["raw"].items()
    )
    lines = [
        f"{facts['date']}, {facts['machine']}; held-out drive {facts['heldout_frames']} frames "
        f"at {facts['rate_hz']:g} Hz, {facts['labelled_frames']} labelled, "
        f"{facts['sign_runs']} sign runs; bench {facts['seconds']:.0f} s",
        "",
        f"Raw classifier: {raw}.",
        "",
        f"Cells: {' / '.join(conditions)}.",
        "",
        "| setting | flicker / s | switch delay, mean frames | p95 frames | never followed "
        "| accuracy |",
        "|---|---|---|---|---|---|",
    ]
    by_setting: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_setting.setdefault(row.setting, {})[row.condition] = row
    for setting, cells in by_setting.items():
        ordered = [cells[c] for c in conditions]
        lines.append(
            f"| {setting} | "
            + " | ".join(
                " / ".join(values)
                for values in (
                    [f"{r.flicker_per_s:.2f}" for r in ordered],
                    [_fmt(r.delay_mean) for r in ordered],
                    [_fmt(r.delay_p95, 1) for r in ordered],
                    [str(r.never) for r in ordered],
                    [_fmt(r.accuracy, 3) for r in ordered],
                )
            )
            + " |"
        )
    changes = {r.changes for r in rows}
    lines += ["", f"Truth changes timed: {', '.join(map(str, sorted(changes)))}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
