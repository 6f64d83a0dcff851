"""``shelfedge kiosk-bundle``: the image bundle the kiosk app needs to say "I don't know" and to enrol.

It re-exports a trained Keras image model (a Keras reference bundle, e.g. quickstart's) with its
embedding as a second output (``converters.models.embedding.with_embedding_output``) and records a
rejection rule calibrated on the validation photos (``converters.training.calibrate_unknown``):
by default the distance to the class centroids, which on the Grocery data called 37 of 40
generated non-product images unknown where the confidence rule called none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.bundle import Bundle
from sdk.data import load_split
from sdk.enums import ModelFormat

DEFAULT_SOURCE = Path("out/quickstart/bundles/shelf_cnn-keras-fp32")
DEFAULT_OUT = Path("out/quickstart/kiosk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(DEFAULT_SOURCE), help=f"a Keras image bundle (default {DEFAULT_SOURCE})")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--format", default="onnx", choices=("onnx", "tflite", "openvino"), help="bundle format")
    parser.add_argument(
        "--rule", default="distance", choices=("distance", "confidence", "auto"), help="unknown rule (default distance)"
    )
    parser.add_argument("--target", type=float, default=0.95, help="share of correct val photos to keep (default 0.95)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    parser.epilog = "example: shelfedge kiosk-bundle --model out/quickstart/bundles/shelf_cnn-keras-fp32"


def run(args: argparse.Namespace) -> int:
    # Imported here: the converters pull in TensorFlow, which the other commands can do without.
    import keras

    from converters.export.pipeline import export
    from converters.models.embedding import with_embedding_output
    from converters.training.calibrate_unknown import calibrate_unknown

    source = Bundle.open(args.model)
    manifest = source.manifest
    root = data_dir(args.data)
    train, val = load_split(root, "train"), load_split(root, "val")
    model = with_embedding_output(keras.saving.load_model(source.model_path, compile=False))
    log(f"[kiosk-bundle] {source.path.name}: logits + embedding, exporting {args.format}")
    bundle = export(
        model,
        out_dir=Path(args.out),
        formats=[args.format],
        name=f"{manifest.name}-kiosk",
        labels=source.labels,
        preprocessing=manifest.preprocessing,
        progress=lambda m: log(f"[kiosk-bundle] {m}"),
    )[ModelFormat(args.format)]
    calibrated = calibrate_unknown(
        bundle, train=train, val=val, target=args.target, rule=args.rule, progress=lambda m: log(f"[kiosk-bundle] {m}")
    )
    unknown = calibrated.manifest.unknown
    assert unknown is not None  # calibrate_unknown records it
    payload = {"bundle": str(calibrated.path), "unknown": unknown.to_dict()}
    emit(
        args,
        payload,
        lambda: f"kiosk bundle: {calibrated.path} (unknown rule {unknown.rule}, threshold {unknown.threshold:.4f})",
    )
    return 0
