"""What every shelfedge fuzz target shares: expected errors pass, anything else is a finding.

A target's body gets the fuzzer's bytes. A :class:`~sdk.errors.ShelfedgeError` is the expected
answer to hostile input; any other exception (``TypeError``, ``cv2.error``, ``MemoryError``,
...) is a *generic exception*: recorded as one JSON line in ``$SHELFEDGE_FUZZ_FINDINGS`` with
the input saved beside it, and fuzzing goes on, so one run counts all of them.
Crashes (signals), hangs (``-timeout``) and memory over ``-rss_limit_mb`` stop libFuzzer;
``fuzz/run.py`` counts those, restarts it and prints the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python3 fuzz/fuzz_x.py` without an installed shelfedge
    sys.path.insert(0, str(ROOT))

FINDINGS_ENV = "SHELFEDGE_FUZZ_FINDINGS"


def record(data: bytes, error: BaseException) -> None:
    """Append a generic exception to the findings file and keep its input beside it."""
    digest = hashlib.sha1(data).hexdigest()
    findings = os.environ.get(FINDINGS_ENV)
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    entry = {
        "type": type(error).__name__,
        "message": str(error)[:500],
        "where": f"{frame.filename}:{frame.lineno}" if frame else "",
        "input_sha1": digest,
        "input_bytes": len(data),
    }
    if findings:
        path = Path(findings)
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / f"generic-{digest}").write_bytes(data)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    else:
        print(f"GENERIC EXCEPTION {json.dumps(entry)}", file=sys.stderr, flush=True)


def fuzz(body: Callable[[bytes], None], expected: tuple[type[BaseException], ...]) -> None:
    """Run libFuzzer (through atheris) on ``body``; command-line flags are libFuzzer's."""

    def one_input(data: bytes) -> None:
        try:
            body(data)
        except expected:
            pass
        except Exception as e:  # a finding, not a failure of the harness
            record(data, e)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
