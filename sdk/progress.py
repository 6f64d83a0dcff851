"""Progress reporting shared by the converters, the QA harness and the CLI.

Long jobs take a ``log`` callable and call it with one line per stage; the CLI passes its
progress printer, tests pass ``list.append``, a library user can pass ``logging.info``.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def quiet(message: str) -> None:
    """A ``Log`` that drops every line."""
