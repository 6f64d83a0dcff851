"""``shelfedge export``: a Keras model or SavedModel -> fp32 LiteRT, OpenVINO, ONNX bundles."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import emit, log
from sdk.enums import ColorOrder, ModelFormat, ResizeMode
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a Keras 3 .keras file or a TF SavedModel directory")
    parser.add_argument("--out", required=True, help="directory for the bundles (one sub-directory each)")
    parser.add_argument("--labels", required=True, help="text file, one class label per line, in output order")
    parser.add_argument("--name", help="bundle name prefix (default: the model file's stem)")
    parser.add_argument(
        "--formats",
        default="tflite,openvino,onnx,keras",
        help="comma-separated: tflite,openvino,onnx,keras (default: all)",
    )
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), required=True, help="model input height and width"
    )
    parser.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=(127.5, 127.5, 127.5),
        help="per-channel mean in 0..255 pixel units (default 127.5 x3)",
    )
    parser.add_argument(
        "--std",
        type=float,
        nargs=3,
        default=(127.5, 127.5, 127.5),
        help="per-channel std in 0..255 pixel units (default 127.5 x3)",
    )
    parser.add_argument("--color-order", default="RGB", choices=["RGB", "BGR"])
    parser.add_argument("--resize-mode", default="shorter_side_crop", choices=["shorter_side_crop", "stretch"])
    parser.add_argument("--crop-fraction", type=float, default=0.875)
    parser.epilog = (
        "example: shelfedge export --model out/quickstart/shelf_cnn.keras --labels "
        "out/quickstart/labels.txt --size 96 96 --out out/exported"
    )


def run(args: argparse.Namespace) -> int:
    from converters.export.pipeline import export

    labels_path = Path(args.labels)
    if not labels_path.is_file():
        raise ConfigError(f"--labels {labels_path}: no such file; give a text file with one label per line")
    labels = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        formats = [ModelFormat.parse(f, "format") for f in args.formats.split(",") if f.strip()]
        preprocessing = Preprocessing(
            size=tuple(args.size),
            mean=tuple(args.mean),
            std=tuple(args.std),
            color_order=ColorOrder.parse(args.color_order, "color order"),
            resize_mode=ResizeMode.parse(args.resize_mode, "resize mode"),
            crop_fraction=args.crop_fraction,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    name = args.name or Path(args.model).stem
    bundles = export(
        Path(args.model),
        out_dir=Path(args.out),
        formats=formats,
        name=name,
        labels=labels,
        preprocessing=preprocessing,
        progress=log,
    )
    rows = [
        {
            "format": fmt.value,
            "bundle": str(b.path),
            "size MB": b.size_bytes() / 1e6,
            "inputs": ", ".join(f"{t.name} {t.shape} {t.dtype}" for t in b.manifest.inputs),
        }
        for fmt, b in bundles.items()
    ]
    emit(
        args,
        {"bundles": {f.value: str(b.path) for f, b in bundles.items()}, "rows": rows},
        lambda: markdown_table(rows),
    )
    return 0
