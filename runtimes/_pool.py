"""A pool of interchangeable workers (interpreters, infer requests) that makes a session safe to share.

Private to ``runtimes``. A call borrows a worker, runs on it alone and gives it back; workers are
made on demand, up to the pool's limit, so a session used by one thread holds one worker. With
the limit reached, a call waits for a free worker: a pool of 1 is a lock. Never two calls on one
worker, so a backend object that is not thread-safe is never used by two threads at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import numpy as np

from sdk.errors import ConfigError, InferenceError
from sdk.runtime import BaseSession, SessionInfo
from sdk.tensors import TensorSpec

T = TypeVar("T")


class WorkerPool(Generic[T]):
    """Up to ``limit`` workers made by ``make`` (``None``: no limit, for thread-safe backends).

    Safe to share across threads: every method takes the pool's lock.
    """

    def __init__(self, make: Callable[[], T], limit: int | None, *, what: str, first: T | None = None) -> None:
        """``what`` names the session in errors; ``first`` is a worker already made (counts as one).

        Raises:
            ConfigError: ``limit`` is not None or a positive integer.
        """
        check_limit(limit, what)
        self._make = make
        self._limit = limit
        self._what = what
        self._free: list[T] = [] if first is None else [first]
        self._made = 0 if first is None else 1
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def limit(self) -> int | None:
        return self._limit

    @property
    def made(self) -> int:
        """Workers alive now (busy or free)."""
        with self._cond:
            return self._made

    def borrow(self) -> T:
        """A worker no other call holds, made if none is free and the limit allows; else wait.

        Raises:
            InferenceError: the pool was closed (before or while waiting).
            Exception: whatever making a worker raised (the slot is freed again).
        """
        with self._cond:
            while True:
                if self._closed:
                    raise InferenceError(f"{self._what} is closed; open a new session")
                if self._limit is None or self._busy < self._limit:
                    if self._free:
                        self._busy += 1
                        return self._free.pop()
                    if self._limit is None or self._made < self._limit:
                        self._busy += 1
                        self._made += 1
                        break
                self._cond.wait()
        try:
            return self._make()  # outside the lock: making an interpreter or a request takes milliseconds
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._made -= 1
                self._cond.notify()
            raise

    def give_back(self, worker: T) -> None:
        """Return a borrowed worker; dropped instead when the pool shrank or closed."""
        with self._cond:
            self._busy -= 1
            if self._closed or (self._limit is not None and self._made > self._limit):
                self._made -= 1
            else:
                self._free.append(worker)
            if self._closed:
                self._cond.notify_all()  # close() waits for the last call in flight
            else:
                self._cond.notify()

    def set_limit(self, limit: int | None) -> None:
        """Change the limit: more workers are made on demand; surplus ones are dropped as they come back.

        Raises:
            ConfigError: ``limit`` is not None or a positive integer.
        """
        check_limit(limit, self._what)
        with self._cond:
            self._limit = limit
            while limit is not None and self._made > limit and self._free:
                self._free.pop()
                self._made -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new calls (waiting ones raise InferenceError), wait for those running, drop every worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._busy == 0)
            self._made -= len(self._free)
            self._free.clear()


def check_limit(limit: object, what: str) -> None:
    """Refuse a pool limit that is not None or a positive integer.

    Raises:
        ConfigError: naming the session and what to pass.
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(
            f"{what}: concurrency {limit!r} is not a positive integer; pass e.g. concurrency=4, or None for the default"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Concurrency:
    """How an adapter's sessions run concurrent calls: its workers, default size and any cap."""

    worker: str | None  # what one call borrows ("LiteRT interpreter"); None: one shared thread-safe object
    call: str  # the backend call that runs the model, for the description
    default: int | None  # the limit when the options ask for none (None: no limit)
    cap: int | None = None  # never more than this, whatever is asked
    cap_reason: str | None = None

    def limit(self, requested: int | None) -> int | None:
        """The pool limit for ``requested`` calls at once (None: the default), within the cap."""
        limit = self.default if requested is None else requested
        if self.cap is not None:
            limit = self.cap if limit is None else min(limit, self.cap)
        return limit

    def details(self, limit: int | None, requested: int | None) -> dict[str, Any]:
        """``SessionInfo.details`` entries: ``concurrency`` (what happens) and ``max_concurrent_calls``."""
        if self.worker is None:
            how = "no limit" if limit is None else ("one call at a time" if limit == 1 else f"up to {limit} at once")
            text = f"{self.call} is thread-safe: calls from several threads run in parallel, {how}"
        elif limit == 1:
            text = f"one {self.worker} behind a lock: concurrent calls wait their turn"
        else:
            text = f"pool of up to {limit} {self.worker}s, made on demand: up to {limit} calls at once, more wait"
        if requested is not None and limit != requested and self.cap_reason:
            text += f" ({requested} requested; {self.cap_reason})"
        elif limit == self.cap and self.cap_reason:
            text += f" ({self.cap_reason})"
        return {"concurrency": text, "max_concurrent_calls": limit}


class PooledSession(BaseSession, Generic[T]):
    """A session each of whose calls runs on a worker of a :class:`WorkerPool`: safe to share across threads.

    Subclasses implement ``_run_on(worker, feed)``; ``_pool_for(feed)`` may pick another pool
    (OpenVINO's other batch sizes), ``_pools()`` lists every pool to resize and close.
    """

    def __init__(
        self,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
        *,
        policy: Concurrency,
        requested: int | None,
        make: Callable[[], T],
        first: T | None = None,
    ) -> None:
        super().__init__(inputs, outputs, info)
        self._policy = policy
        self._limit = policy.limit(requested)
        self._pool: WorkerPool[T] = WorkerPool(make, self._limit, what=f"{info.runtime.value} session", first=first)
        self.info = dataclasses.replace(info, details={**info.details, **policy.details(self._limit, requested)})

    def set_concurrency(self, calls: int | None) -> None:
        """From now on up to ``calls`` calls at once (None: the adapter's default, within its cap).

        Calls in flight finish on their workers; ``info.details["concurrency"]`` says what is done now.

        Raises:
            ConfigError: ``calls`` is not None or a positive integer.
            InferenceError: the session is closed.
        """
        check_limit(calls, f"{self.info.runtime.value} session")
        if self._closed:
            raise InferenceError(f"{self.info.runtime.value} session is closed; open a new one")
        self._limit = self._policy.limit(calls)
        for pool in self._pools():
            pool.set_limit(self._limit)
        details = self._policy.details(self._limit, calls)
        self.info = dataclasses.replace(self.info, details={**self.info.details, **details})

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pool = self._pool_for(feed)
        worker = pool.borrow()
        try:
            return self._run_on(worker, feed)
        finally:
            pool.give_back(worker)

    def _run_on(self, worker: T, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _pool_for(self, feed: Mapping[str, np.ndarray]) -> WorkerPool[T]:
        return self._pool

    def _pools(self) -> list[WorkerPool[T]]:
        return [self._pool]

    def _close(self) -> None:
        for pool in self._pools():
            pool.close()
