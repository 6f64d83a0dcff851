"""Other libraries' chatter goes to a log file; the terminal shows shelfedge's progress and results.

TensorFlow, absl, NNCF, OpenVINO and tf2onnx log through Python ``logging``, print to
stdout/stderr, and (TensorFlow's C++ runtime) write to file descriptor 2 directly; on a
quickstart run that was half of the lines on the terminal. While a command runs, all of it
goes to ``<log dir>/<command>-<time>-<pid>.log`` (``$SHELFEDGE_LOG_DIR``, else
``~/.cache/shelfedge/logs``), whose path is said at the end; ``--verbose`` leaves it on the
terminal. Only the routing changes: log levels stay the libraries' own, so the file holds
exactly what the terminal would have shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from cli._common import _results, _terminal, log

LOG_DIR_ENV = "SHELFEDGE_LOG_DIR"
# Loggers that already exist when a command starts (imported by an earlier command in the same
# process) and that print themselves (own handlers, no propagation, as NNCF's) are rerouted by
# name; loggers created during the command reach the file through the root logger.
THIRD_PARTY = ("tensorflow", "absl", "keras", "nncf", "openvino", "tf2onnx", "onnx", "onnxruntime", "h5py")
KEEP_LOGS = 50
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir() -> Path:
    """``$SHELFEDGE_LOG_DIR``, else ``$XDG_CACHE_HOME/shelfedge/logs`` (``~/.cache/shelfedge/logs``)."""
    env = os.environ.get(LOG_DIR_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "shelfedge" / "logs"


@contextlib.contextmanager
def routed_output(command: str, *, verbose: bool) -> Iterator[None]:
    """Route other libraries' output while ``command`` runs; restore everything afterwards.

    The real stdout stays the results' stream (:func:`cli.emit`) and the real stderr the
    progress stream (:func:`cli.log`) throughout.
    """
    real_stdout, real_stderr = sys.stdout, sys.stderr
    _results.append(real_stdout)
    _terminal.append(real_stderr)
    sink = None if verbose else _open_log(command)
    try:
        if sink is None:
            # Libraries' stdout still must not corrupt --json: it joins the progress on stderr.
            sys.stdout = real_stderr
            yield
            return
        # Before TensorFlow is first imported (commands import it lazily): its C++ INFO/WARNING lines.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _routed(sink, real_stderr):
            yield
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        _results.pop()
        _terminal.pop()
        if sink is not None:
            _close_log(sink)


@contextlib.contextmanager
def _routed(sink: TextIO, real_stderr: TextIO) -> Iterator[None]:
    restore_fd = _redirect_fd2(sink)
    if restore_fd is not None and _writes_to_fd2(real_stderr):
        # The terminal is now only reachable through a copy of the original descriptor 2.
        _terminal[-1] = os.fdopen(os.dup(restore_fd.saved), "w", buffering=1, errors="backslashreplace")
    restore_loggers = _route_loggers(sink)
    sys.stdout = sys.stderr = sink
    try:
        yield
    finally:
        sys.stdout.flush()
        restore_loggers()
        if restore_fd is not None:
            if _terminal[-1] is not real_stderr:
                _terminal[-1].close()
                _terminal[-1] = real_stderr
            restore_fd()


class _Fd2:
    """Puts the original descriptor 2 back when called."""

    def __init__(self, saved: int) -> None:
        self.saved = saved

    def __call__(self) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)


def _redirect_fd2(sink: TextIO) -> _Fd2 | None:
    # C++ runtimes (TensorFlow's absl logging, oneDNN notices) write to descriptor 2 itself.
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return None  # no descriptor 2 (a GUI process, an odd embedding): nothing to route
    try:
        os.dup2(sink.fileno(), 2)
    except (OSError, ValueError):
        os.close(saved)
        return None
    return _Fd2(saved)


def _writes_to_fd2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError, AttributeError):
        return False  # a test's capture object, a StringIO: not the descriptor


def _route_loggers(sink: TextIO) -> Callable[[], None]:
    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for logger in _third_party_loggers():
        if logger.handlers or not logger.propagate:
            saved.append((logger, list(logger.handlers), logger.propagate))
            logger.handlers = [handler]
            logger.propagate = False
    root.addHandler(handler)

    def restore() -> None:
        root.removeHandler(handler)
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
        # A library imported during the command bound its handler to the then sys.stdout (NNCF
        # does): point it at the process's stdout, not at the log file about to be closed.
        for logger in _third_party_loggers():
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and h.stream is sink and sys.__stdout__ is not None:
                    h.setStream(sys.__stdout__)

    return restore


def _third_party_loggers() -> list[logging.Logger]:
    return [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.partition(".")[0] in THIRD_PARTY
    ]


def _open_log(command: str) -> TextIO | None:
    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "shelfedge-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _prune(folder)
            return open(folder / name, "a", encoding="utf-8", buffering=1)
        except OSError:
            continue
    return None  # nowhere to write: leave the chatter on the terminal rather than lose it


def _close_log(sink: TextIO) -> None:
    path = Path(sink.name)
    sink.close()
    try:
        empty = path.stat().st_size == 0
        if empty:
            path.unlink()
    except OSError:
        return
    if not empty:
        log(f"other libraries' messages: {path} (--verbose shows them here)")


def _prune(folder: Path) -> None:
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[: max(0, len(logs) - KEEP_LOGS + 1)]:
        with contextlib.suppress(OSError):
            old.unlink()
