"""The ``shelfedge`` command line.

The CLI is the composition root: it is the one place in ``sdk`` that reaches into
``converters`` (for ``export`` and ``quickstart``), and only lazily, inside those commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from sdk.errors import ShelfedgeError

# command name -> (module, help); each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "devices": ("cli.devices", "installed runtimes, versions, devices, GPU present or not"),
    "profiles": ("cli.profiles", "list hardware profiles or show one"),
    "export": ("cli.export", "export a Keras model / SavedModel to LiteRT, OpenVINO and ONNX bundles"),
    "teacher": ("cli.teacher", "train or reuse the reference server model (EfficientNet-Lite fine-tuned on the Grocery photos)"),
    "distill": ("cli.distill", "distil a smaller student from the teacher, with and without KD, and compare"),
    "convert": ("cli.convert", "quantize (and distil) a model for hardware profiles within an accuracy budget"),
    "inspect": ("cli.inspect", "show and verify a bundle's manifest"),
    "classify": ("cli.classify", "classify images with a bundle on a runtime/device"),
    "eval": ("cli.eval", "accuracy of bundles on a labelled image dataset, through sdk.load"),
    "reference": ("cli.reference", "save the server model's outputs (npz + input hashes) to compare elsewhere"),
    "parity": ("cli.parity", "bundles on every runtime vs the server reference, tiered checks; exit 1 on failure"),
    "bench": ("cli.bench", "latency (end to end and inference only), throughput, cold start, memory and budgets per bundle x runtime"),
    "matrix": ("cli.matrix", "parity + bench for every bundle x hardware profile that can run here, one table and report"),
    "quickstart": ("cli.quickstart", "the main job: train, export to every format, compare runtimes"),
}


# Where results go. While a command runs, sys.stdout points at stderr, so libraries that print
# progress to stdout (NNCF's progress bars, tf2onnx) cannot corrupt the --json output.
_results: list[TextIO] = []


def emit(args: argparse.Namespace, payload: Any, text: str | Callable[[], str]) -> None:
    """Print ``payload`` as JSON with --json, else the human ``text``, on the real stdout."""
    out = _results[-1] if _results else sys.stdout
    if getattr(args, "json", False):
        json.dump(payload, out, indent=2, default=str)
        out.write("\n")
    else:
        out.write((text() if callable(text) else text) + "\n")
    out.flush()


def log(message: str) -> None:
    """Progress goes to stderr so --json stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="shelfedge",
        description="Edge deployment SDK for retail AI: export, run and compare models on edge runtimes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter drowns the output of every command.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf2onnx and TensorFlow log deprecation warnings through Python logging on every export.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    real_stdout = sys.stdout
    _results.append(real_stdout)
    sys.stdout = sys.stderr
    try:
        return int(args._run(args) or 0)
    except ShelfedgeError as e:
        if args.json:
            json.dump({"error": type(e).__name__, "message": str(e)}, real_stdout, indent=2)
            real_stdout.write("\n")
        print(f"shelfedge {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = real_stdout
        _results.pop()


if __name__ == "__main__":
    sys.exit(main())
