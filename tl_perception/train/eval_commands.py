"""`tl-perception evaluate` and `tl-perception export` (registered by `train/commands.py`).

Thin shells: parse, call `train.evaluate` / `train.export`, print a summary. TensorFlow and
matplotlib are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from tl_perception.cliutil import lazy_choice


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `evaluate` and `export` to `tl-perception`."""
    ev = subparsers.add_parser(
        "evaluate",
        help="accuracy, per-class metrics, confusion matrix and worst mistakes of a bundle",
        description="Evaluate a model bundle on a dataset: an extraction output or split tree "
        "(--split picks the split) or a plain class-per-folder tree (every image counts). "
        "Writes evaluation.json, confusion_matrix.csv/.png and worst_mistakes.png.",
    )
    ev.add_argument("bundle", metavar="BUNDLE", help="model bundle directory")
    ev.add_argument("dataset", metavar="DATASET", help="dataset directory")
    ev.add_argument("--split", default="test", help="split of a split tree (default: test)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics JSON to FILE")
    ev.add_argument(
        "--out",
        metavar="DIR",
        help="report directory (default: BUNDLE/report/eval_<split>, or eval_all for a plain tree)",
    )
    ev.add_argument(
        "--backend",
        type=lazy_choice("tl_perception.inference", "BACKENDS"),
        default="keras",
        help="keras (the reference, default), litert (the TFLite model) or auto",
    )
    ev.set_defaults(func=run_evaluate)

    ex = subparsers.add_parser(
        "export",
        help="write model.tflite into a bundle and record its agreement with Keras",
        description="Convert a bundle's model.keras to model.tflite (float32, float16 or int8) "
        "and record in bundle.json how often its top-1 agrees with Keras on the validation "
        "split. Float exports below 99%% agreement are refused.",
    )
    ex.add_argument("bundle", metavar="BUNDLE", help="model bundle directory")
    ex.add_argument(
        "--tflite", action="store_true", help="export TFLite (the only format; the default)"
    )
    ex.add_argument(
        "--quantize",
        type=lazy_choice("tl_perception.inference.convert", "QUANTIZE_MODES"),
        default=None,
        help="float16 or int8 weight quantisation (default: float32); int8 calibrates on "
        "training images",
    )
    ex.add_argument(
        "--dataset",
        "--calibration",
        dest="dataset",
        metavar="DATASET",
        help="dataset for calibration (train split) and agreement (val split); default: the "
        "dataset recorded in bundle.json",
    )
    ex.set_defaults(func=run_export)


def run_evaluate(args: argparse.Namespace) -> int:
    from tl_perception.bundle import REPORT_DIR, read_bundle
    from tl_perception.dataset import read_dataset
    from tl_perception.train.evaluate import evaluate, summary_table

    bundle = read_bundle(args.bundle)
    out = args.out
    if out is None:
        plain = not read_dataset(args.dataset).splits()
        out = bundle.path / REPORT_DIR / f"eval_{'all' if plain else args.split}"
    metrics = evaluate(
        bundle.path,
        args.dataset,
        split=args.split,
        json_path=args.json,
        out_dir=out,
        backend=args.backend,
    )
    print(summary_table(metrics))
    for skipped in metrics["skipped"]:
        print(f"skipped {skipped['path']}: {skipped['error']}")
    print(f"report: {Path(out)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tl_perception.train.export import export_tflite

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = export_tflite(args.bundle, quantize=args.quantize, dataset_path=args.dataset)
    for warning in caught:
        print(f"warning: {warning.message}")
    agreement = record["top1_agreement"]
    agreed = "not measured" if agreement is None else f"{agreement:.4f}"
    print(
        f"wrote {Path(args.bundle) / record['file']} ({record['quantize'] or 'float32'}, "
        f"{record['size_bytes'] / 1e6:.2f} MB); top-1 agreement with Keras {agreed} "
        f"on {record['num_images']} images"
    )
    return 0
