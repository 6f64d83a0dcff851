"""The ``shelfedge`` command line.

The CLI is the composition root: the one package that imports ``sdk``, ``converters``,
``runtimes`` and ``demo_app`` together. Each command is a module with
``add_arguments(parser)`` and ``run(args) -> int``; :func:`main` parses, routes other
libraries' output to a log file (:mod:`cli._logs`), and turns a :class:`ShelfedgeError`, or
an optional backend that is not installed, into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

import sdk
from cli._common import data_dir, emit, log, missing_backend
from cli._logs import routed_output
from sdk.errors import ShelfedgeError

__all__ = ["COMMANDS", "build_parser", "data_dir", "emit", "log", "main"]

# command name -> (module, help); each module has add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "devices": ("cli.devices", "installed runtimes, versions, devices, GPU present or not"),
    "profiles": ("cli.profiles", "list hardware profiles or show one"),
    "export": ("cli.export", "export a Keras model / SavedModel to LiteRT, OpenVINO and ONNX bundles"),
    "teacher": (
        "cli.teacher",
        "train or reuse the reference server model (EfficientNet-Lite fine-tuned on the Grocery photos)",
    ),
    "distill": ("cli.distill", "distil a smaller student from the teacher, with and without KD, and compare"),
    "convert": ("cli.convert", "quantize (and distil) a model for hardware profiles within an accuracy budget"),
    "inspect": ("cli.inspect", "show and verify a bundle's manifest"),
    "keygen": ("cli.keygen", "a new ECDSA P-256 key pair (private key mode 0600) for signing bundles"),
    "sign": ("cli.sign", "sign every file of a bundle with OpenSSF Model Signing (model.sig in the bundle)"),
    "encrypt": ("cli.encrypt", "encrypt a bundle's model files in place (AES-256-GCM; key from --key-file or env)"),
    "verify": ("cli.verify", "check a bundle's signature against trusted public keys; exit 1 if unsigned or invalid"),
    "classify": ("cli.classify", "classify images with a bundle on a runtime/device"),
    "recommend": ("cli.recommend", "recommend items for a basket or history with a recommendation bundle"),
    "eval": ("cli.eval", "accuracy of bundles on a labelled image dataset, through sdk.load"),
    "kiosk-bundle": (
        "cli.kiosk_bundle",
        "the kiosk's image bundle: the model re-exported with its embedding and a calibrated unknown-product rule",
    ),
    "rec-bench": (
        "cli.rec_bench",
        "recommend() latency end to end per recommendation bundle and runtime, interleaved, p50/p90/p99",
    ),
    "rec-cost": (
        "cli.rec_cost",
        "recommend() p50/p99 vs catalogue size (1k-1M) per runtime, in-graph top-k vs numpy, IVF past the budget",
    ),
    "rec-distill": (
        "cli.rec_distill",
        "the on-device recommendation student with and without KD at equal epochs, vs the teacher, with CIs",
    ),
    "rec-compare": (
        "cli.rec_compare",
        "recommenders side by side on a dataset (popularity, item-kNN, EASE, ALS): HR/NDCG/MRR/coverage with CIs",
    ),
    "reference": ("cli.reference", "save the server model's outputs (npz + input hashes) to compare elsewhere"),
    "parity": ("cli.parity", "bundles on every runtime vs the server reference, tiered checks; exit 1 on failure"),
    "bench": (
        "cli.bench",
        "latency (end to end and inference only), throughput, cold start, memory and budgets per bundle x runtime",
    ),
    "matrix": (
        "cli.matrix",
        "parity + bench for every bundle x hardware profile that can run here, one table and report",
    ),
    "quickstart": ("cli.quickstart", "the main job: train, export to every format, compare runtimes"),
    "demo": ("cli.demo", "the kiosk web app (recognise, basket, recommend) on loopback, over bundles only"),
}


def version_text() -> str:
    """``shelfedge <distribution version> (sdk <sdk.__version__>)``, as ``--version`` prints it."""
    try:
        package = importlib.metadata.version("shelfedge")
    except importlib.metadata.PackageNotFoundError:
        package = "(not installed: run from a source tree)"
    return f"shelfedge {package} (sdk {sdk.__version__})"


def build_parser() -> argparse.ArgumentParser:
    """The ``shelfedge`` parser: ``--version``, and one sub-command per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog="shelfedge",
        description="Edge deployment SDK for retail AI: export, run and compare models on edge runtimes.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show other libraries' messages (TensorFlow, NNCF, OpenVINO, ...) here, not in a log file",
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``shelfedge`` command; returns its exit code (2: a usage or setup error)."""
    args = build_parser().parse_args(argv)
    with routed_output(args.command, verbose=args.verbose):
        try:
            return int(_run(args) or 0)
        except ShelfedgeError as e:
            if args.json:  # the machine-readable error on stdout, the human one on stderr
                emit(args, {"error": type(e).__name__, "message": str(e)}, "")
            log(f"shelfedge {args.command}: {type(e).__name__}: {e}")
            return 2
        except KeyboardInterrupt:
            log("interrupted")
            return 130


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args._run(args) or 0)
    except ImportError as e:
        # The command boundary: an optional backend that is missing is a setup error with a fix.
        error = missing_backend(e, args.command)
        if error is None:
            raise
        raise error from e


if __name__ == "__main__":
    sys.exit(main())
