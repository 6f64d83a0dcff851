"""``shelfedge classify BUNDLE IMAGE...``."""

from __future__ import annotations

import argparse

from cli import emit
from sdk.classifier import ClassifierOptions, ImageClassifier
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument(
        "--runtime", help="litert | openvino | onnxruntime | tensorflow (default: the profile's, else the format's)"
    )
    parser.add_argument("--device", help="CPU | GPU | NPU | TPU | AUTO (default: the profile's, else CPU)")
    parser.add_argument("--profile", help="hardware profile id or YAML path")
    parser.add_argument("--fallback", choices=["strict", "record"], help="override the profile's fallback policy")
    parser.add_argument("--threads", type=int, help="inference threads")
    parser.add_argument("--top-k", type=int, default=5, help="categories per image (default 5)")
    parser.epilog = (
        "example: shelfedge classify out/quickstart/bundles/shelf_cnn-onnx-fp32 "
        "../shared/data/grocery/val/Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg --runtime onnxruntime --json"
    )


def run(args: argparse.Namespace) -> int:
    options = ClassifierOptions(
        profile=args.profile,
        runtime=args.runtime,
        device=args.device,
        fallback=args.fallback,
        threads=args.threads,
        top_k=args.top_k,
    )
    with ImageClassifier.create(args.bundle, options) as classifier:
        results = [(image, classifier.classify(image)) for image in args.images]
        info = classifier.info
    payload = {
        "bundle": args.bundle,
        "ran": info.to_dict(),
        "results": [{"image": image, **result.to_dict()} for image, result in results],
    }

    def text() -> str:
        rows = [
            {
                "image": image,
                "top-1": r.top1.label,
                "score": r.top1.score,
                f"top-{len(r.categories)}": ", ".join(c.label for c in r.categories),
                "pre ms": r.timings.preprocess_ms,
                "infer ms": r.timings.inference_ms,
                "post ms": r.timings.postprocess_ms,
            }
            for image, r in results
        ]
        ran = (
            f"ran on {info.runtime.value} {info.runtime_version}, device {info.actual_device}"
            f" (requested {info.requested_device.value}), precision {info.precision.value}"
        )
        if info.fell_back:
            ran += f"; FELL BACK: {info.fallback_reason}"
        return ran + "\n\n" + markdown_table(rows)

    emit(args, payload, text)
    return 0
