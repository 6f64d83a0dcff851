"""Per-browser-session baskets, held in memory with a cap on sessions and on items per basket.

A session is a random id (``secrets.token_urlsafe``) the server sets as an HttpOnly cookie; it
is only a key into this store, so nothing a client sends can forge another session's basket.
When the store is full the least recently used session is dropped.

Thread safety: :class:`BasketStore` is safe to share across request threads (one lock).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

from sdk.errors import ConfigError, InputError

SESSION_COOKIE = "shelfedge_session"


class BasketStore:
    """Baskets by session id: at most ``max_sessions`` sessions of at most ``max_items`` labels each."""

    def __init__(self, *, max_sessions: int = 10_000, max_items: int = 50) -> None:
        """
        Raises:
            ConfigError: a cap is not a positive integer.
        """
        for name, value in (("max_sessions", max_sessions), ("max_items", max_items)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BasketStore {name} is {value!r}; pass a positive integer")
        self._max_sessions = max_sessions
        self._max_items = max_items
        self._baskets: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_urlsafe(24)

    def __len__(self) -> int:
        with self._lock:
            return len(self._baskets)

    def get(self, session: str) -> list[str]:
        """The session's basket, oldest first (empty for an unknown session)."""
        with self._lock:
            basket = self._baskets.get(session)
            if basket is None:
                return []
            self._baskets.move_to_end(session)
            return list(basket)

    def add(self, session: str, label: str) -> list[str]:
        """Add ``label`` to the session's basket (again if already there: a basket has quantities).

        Raises:
            InputError: the basket already holds ``max_items`` items.
        """
        with self._lock:
            basket = self._baskets.get(session)
            if basket is None:
                basket = self._baskets[session] = []
                while len(self._baskets) > self._max_sessions:
                    self._baskets.popitem(last=False)
            self._baskets.move_to_end(session)
            if len(basket) >= self._max_items:
                raise InputError(
                    f"the basket already holds {self._max_items} items, the most it may; remove some first"
                )
            basket.append(label)
            return list(basket)

    def remove(self, session: str, label: str | None = None) -> list[str]:
        """Remove one ``label`` (the most recently added), or empty the basket when ``label`` is None.

        Raises:
            InputError: ``label`` is not in the basket.
        """
        with self._lock:
            basket = self._baskets.get(session, [])
            if label is None:
                self._baskets.pop(session, None)
                return []
            if label not in basket:
                raise InputError(f"{label!r} is not in the basket; GET /api/basket lists what is")
            del basket[len(basket) - 1 - basket[::-1].index(label)]
            return list(basket)
