"""Fuzz target: bytes as ``manifest.json`` -> ``sdk.manifest.Manifest.load``.

The manifest reader is the public way a bundle's manifest is parsed (size cap, regular file,
strict JSON, schema); each input is written to one temporary file and loaded. Only shelfedge
errors (ManifestError and its kin) are expected answers.

Usage: ``python3 fuzz/fuzz_manifest.py [libFuzzer flags] CORPUS_DIR [SEED_DIR ...]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _harness
import atheris

with atheris.instrument_imports(include=["sdk"]):
    from sdk.errors import ShelfedgeError
    from sdk.manifest import Manifest

_PATH = Path(tempfile.mkdtemp(prefix="shelfedge-fuzz-")) / "manifest.json"


def load_manifest(data: bytes) -> None:
    """The target body: one input read as a bundle's manifest."""
    _PATH.write_bytes(data)
    Manifest.load(_PATH)


if __name__ == "__main__":
    _harness.fuzz(load_manifest, (ShelfedgeError,))
