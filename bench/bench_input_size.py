"""What a larger input size costs the node: MobileNetV2 a0.35 at 96, 128, 160 and 224 px.

Per-frame LiteRT cost of one 640x480 camera frame (decode excluded, resize + inference
included, `Classifier.classify`) and of a batch of 4 crops at the input size (the ROI path's
floor), each the best of 4 medians; ratios against 224 px (the trainer's default) and 96 px (the
ROI demo's). Also the size of model.tflite. Weights do not change speed.

    python bench/bench_input_size.py --workdir /tmp/bench_sizes
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_models import _median_ms, batch_floor, ensure_bundle

SIZES = (96, 128, 160, 224)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_input_size"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tl_perception.inference import Classifier

    camera = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rows = {}
    for size in SIZES:
        bundle = ensure_bundle("mobilenet_v2_0.35", args.workdir, (size, size))
        litert = Classifier(bundle, backend="litert")
        frame_ms = _median_ms(lambda c=litert: c.classify([camera]), 60)
        crops_ms = batch_floor(bundle, (4,))["4"]["batched_ms"]
        rows[size] = (frame_ms, crops_ms, (bundle / "model.tflite").stat().st_size / 1e6)
    print(f"load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    print("| input | frame (ms) | x224 | x96 | 4 crops (ms) | x224 | x96 | model.tflite (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, (frame, crops, mb) in rows.items():
        f224, f96 = frame / rows[224][0], frame / rows[96][0]
        c224, c96 = crops / rows[224][1], crops / rows[96][1]
        print(
            f"| {size} | {frame:.2f} | {f224:.2f} | {f96:.2f} | {crops:.2f} | {c224:.2f} | "
            f"{c96:.2f} | {mb:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
