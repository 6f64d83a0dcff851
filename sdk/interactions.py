"""User-item interactions for the recommenders: real datasets and a generic CSV, read strictly.

Two shapes of data, one type:
- **baskets** (``kind="baskets"``): one set of items per row, no order, no user (the Groceries
  point-of-sale baskets): basket completion, "what else goes in this basket?";
- **sequences** (``kind="sequences"``): one time-ordered history per user or session (MovieLens
  ratings as implicit interactions): next-item recommendation.

Items are indexed ``0..n_items-1`` in catalogue order; the catalogue keeps the external ids (the
category name, the movieId) and a display name for each. Every loader refuses malformed input with
a :class:`~sdk.errors.ConfigError` naming the file and line and saying what to fix.

Everything here is immutable and safe to share across threads.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from sdk.errors import ConfigError

Kind = Literal["baskets", "sequences"]
USER_COLUMNS = ("user", "user_id", "userid", "session", "session_id", "sessionid", "basket", "basket_id")
ITEM_COLUMNS = ("item", "item_id", "itemid", "movieid", "product", "product_id")
TIME_COLUMNS = ("timestamp", "time", "ts")
OPTIONAL_COLUMNS = ("rating", "name", "title")
_MAX_FIELD = 1000  # characters: an item id or name longer than this is not one


@dataclasses.dataclass(frozen=True, kw_only=True)
class Catalogue:
    """The items a recommender ranks, in index order.

    Attributes:
        ids: external item ids (a basket category name, a MovieLens movieId as text), unique.
        names: display names, one per item (the id when there is none).
        categories: per item, the categories it belongs to (MovieLens genres, a basket
            category's department); empty when the data has none. The recommender's
            ``category=`` filter reads them.
    """

    ids: tuple[str, ...]
    names: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise ConfigError(f"catalogue: {len(self.ids)} ids but {len(self.names)} names; give one name per item")
        if len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ConfigError(f"catalogue: item id {duplicate!r} appears twice; item ids must be unique")
        if self.categories and len(self.categories) != len(self.ids):
            raise ConfigError(
                f"catalogue: {len(self.categories)} category lists for {len(self.ids)} items; give one per item "
                "(an empty list for an item without a category)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self) -> dict[str, int]:
        """External id -> item index."""
        return {item: i for i, item in enumerate(self.ids)}

    def category_index(self) -> dict[str, np.ndarray]:
        """Category -> the indices of its items (int64, ascending); empty without categories."""
        members: dict[str, list[int]] = {}
        for i, names in enumerate(self.categories):
            for name in names:
                members.setdefault(name, []).append(i)
        return {name: np.asarray(rows, np.int64) for name, rows in sorted(members.items())}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interactions:
    """Baskets or per-user histories over one catalogue.

    Attributes:
        kind: ``"baskets"`` (unordered sets) or ``"sequences"`` (time-ordered histories).
        catalogue: the items, index order.
        rows: one int32 array of item indices per basket / user (sequences oldest first; a basket
            holds each item once).
        row_ids: the basket number or user/session id of each row.
        source: where the data came from (a path, or ``synthetic(...)``).
    """

    kind: Kind
    catalogue: Catalogue
    rows: tuple[np.ndarray, ...]
    row_ids: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_items(self) -> int:
        return len(self.catalogue)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(r) for r in self.rows))

    def popularity(self) -> np.ndarray:
        """How many rows hold each item (float64, length ``n_items``)."""
        counts = np.zeros(self.n_items, np.float64)
        for row in self.rows:
            np.add.at(counts, np.unique(row), 1.0)
        return counts

    def describe(self) -> str:
        what = "baskets" if self.kind == "baskets" else "histories"
        return (
            f"{len(self):,} {what}, {self.n_items:,} items, {self.n_interactions:,} interactions "
            f"({self.n_interactions / max(len(self), 1):.1f} per row) from {self.source}"
        )


def load_baskets(path: str | Path, *, categories: str | Path | None = None) -> Interactions:
    """Read a baskets file: one basket per line, items separated by commas (the Groceries format).

    Items are indexed by first appearance; an item repeated within a basket counts once.
    ``categories`` is an optional ``item,category`` CSV (``#`` comment lines allowed) giving
    each item its department; items it does not list have none.

    Raises:
        ConfigError: a file is missing, empty, not text, or a line is empty or holds an
            over-long or empty item (file and line named).
    """
    path = Path(path)
    lines = _read_lines(path)
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        items = [field.strip() for field in next(csv.reader([line]))]
        for item in items:
            _check_field(item, "item", path, number)
        unique = list(dict.fromkeys(items))
        rows.append(np.asarray([index.setdefault(item, len(index)) for item in unique], np.int32))
    if not rows:
        raise ConfigError(f"{path}: no baskets (every line is empty); one basket per line, items separated by commas")
    ids = tuple(index)
    departments = _read_categories(Path(categories)) if categories is not None else {}
    return Interactions(
        kind="baskets",
        catalogue=Catalogue(
            ids=ids,
            names=ids,
            categories=tuple(departments.get(i, ()) for i in ids) if departments else (),
        ),
        rows=tuple(rows),
        row_ids=tuple(str(i) for i in range(len(rows))),
        source=str(path),
    )


def load_movielens(root: str | Path, *, min_rating: float = 0.0) -> Interactions:
    """Read MovieLens ``ratings.csv`` (and ``movies.csv`` for titles) as implicit histories.

    Every rating counts as an interaction (``min_rating`` drops lower ones); each user's history is
    sorted by timestamp (ties by file order); the catalogue holds every movie of ``movies.csv``,
    so items nobody rated are still ranked.

    Raises:
        ConfigError: a file is missing or malformed (file and line named).
    """
    root = Path(root)
    titles, genres = _read_movies(root / "movies.csv") if (root / "movies.csv").is_file() else ({}, {})
    interactions = load_csv(root / "ratings.csv", kind="sequences", min_rating=min_rating, names=titles)
    if titles:
        # Movies with no rating are part of the catalogue too: they can be recommended.
        known = set(interactions.catalogue.ids)
        extra = [movie for movie in titles if movie not in known]
        ids = interactions.catalogue.ids + tuple(extra)
        catalogue = Catalogue(
            ids=ids,
            names=tuple(titles.get(i, i) for i in ids),
            categories=tuple(genres.get(i, ()) for i in ids) if genres else (),
        )
        interactions = dataclasses.replace(interactions, catalogue=catalogue, source=str(root))
    return interactions


def load_csv(
    path: str | Path,
    *,
    kind: Kind = "sequences",
    min_rating: float = 0.0,
    names: dict[str, str] | None = None,
) -> Interactions:
    """Read a generic ``user|session, item[, timestamp]`` CSV with a header row.

    Column names are matched case-insensitively: a user column (``user``, ``userId``, ``session``,
    ``basket``...), an item column (``item``, ``itemId``, ``movieId``, ``product``...), optionally
    ``timestamp`` (orders each history; file order otherwise), ``rating`` (kept when
    ``>= min_rating``), ``name``/``title`` (the item's display name). Any other column is an error,
    so a file meant for something else is not silently misread.

    Raises:
        ConfigError: the file is missing or empty, the header lacks a user or item column or has an
            unknown or repeated one, or a row has the wrong number of fields, an empty id or a
            timestamp/rating that is not a number (file and line named).
    """
    path = Path(path)
    lines = _read_lines(path)
    reader = csv.reader(lines)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ConfigError(f"{path}: empty file; expected a header row such as 'user,item,timestamp'")
    columns = _columns(header, path)
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    item_names: dict[str, str] = dict(names or {})
    for number, fields in enumerate(reader, start=2):
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise ConfigError(
                f"{path}, line {number}: {len(fields)} fields, the header has {len(header)}; "
                "quote fields that contain commas"
            )
        user = fields[columns["user"]].strip()
        item = fields[columns["item"]].strip()
        _check_field(user, "user id", path, number)
        _check_field(item, "item id", path, number)
        if "rating" in columns and _number(fields[columns["rating"]], "rating", path, number) < min_rating:
            continue
        when = _number(fields[columns["time"]], "timestamp", path, number) if "time" in columns else float(number)
        if "name" in columns:
            item_names.setdefault(item, fields[columns["name"]].strip() or item)
        by_user.setdefault(user, []).append((when, number, item))
    if not by_user:
        raise ConfigError(f"{path}: no interactions after the header; add rows of user, item[, timestamp]")
    index: dict[str, int] = {}
    rows: list[np.ndarray] = []
    for events in by_user.values():
        ordered = [item for _, _, item in sorted(events)]
        if kind == "baskets":
            ordered = list(dict.fromkeys(ordered))
        rows.append(np.asarray([index.setdefault(item, len(index)) for item in ordered], np.int32))
    ids = tuple(index)
    return Interactions(
        kind=kind,
        catalogue=Catalogue(ids=ids, names=tuple(item_names.get(i, i) for i in ids)),
        rows=tuple(rows),
        row_ids=tuple(by_user),
        source=str(path),
    )


def from_rows(
    rows: Iterable[Sequence[int]], catalogue: Catalogue, *, kind: Kind, source: str = "memory"
) -> Interactions:
    """Interactions from item-index rows already in memory (tests, generated data).

    Raises:
        ConfigError: the catalogue is empty, a row holds an index outside it, or there are no rows.
    """
    if not len(catalogue):
        raise ConfigError(f"{source}: the catalogue is empty; a recommender needs at least one item to rank")
    arrays = tuple(np.asarray(row, np.int32) for row in rows)
    if not arrays:
        raise ConfigError(f"{source}: no rows; give at least one basket or history")
    for number, row in enumerate(arrays):
        if row.size and (row.min() < 0 or row.max() >= len(catalogue)):
            raise ConfigError(f"{source}: row {number} holds an item index outside 0..{len(catalogue) - 1}")
    return Interactions(
        kind=kind, catalogue=catalogue, rows=arrays, row_ids=tuple(str(i) for i in range(len(arrays))), source=source
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass the path of the interactions file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); pass a CSV file") from e
    if "\0" in text:
        raise ConfigError(f"{path}: holds NUL bytes, so it is not a text file; pass a CSV file")
    if not text.strip():
        raise ConfigError(f"{path}: empty file; expected interactions, one per line")
    return text.splitlines()


def _columns(header: Sequence[str], path: Path) -> dict[str, int]:
    roles = {"user": USER_COLUMNS, "item": ITEM_COLUMNS, "time": TIME_COLUMNS}
    columns: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = raw.strip().lower()
        role = next((r for r, names in roles.items() if name in names), None)
        if role is None and name in OPTIONAL_COLUMNS:
            role = "name" if name in ("name", "title") else name
        if role is None:
            raise ConfigError(
                f"{path}, line 1: unknown column {raw.strip()!r}; expected a user column "
                f"({', '.join(USER_COLUMNS[:3])}...), an item column ({', '.join(ITEM_COLUMNS[:3])}...) "
                "and optionally timestamp, rating, name"
            )
        if role in columns:
            raise ConfigError(
                f"{path}, line 1: two {role} columns ({header[columns[role]]!r}, {raw.strip()!r}); keep one"
            )
        columns[role] = position
    for role in ("user", "item"):
        if role not in columns:
            raise ConfigError(
                f"{path}, line 1: no {role} column in {', '.join(h.strip() for h in header)}; "
                f"name one of {', '.join(roles[role])}"
            )
    return columns


def _read_movies(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Titles and genres (``Comedy|Drama``; "(no genres listed)" is none) by movieId."""
    lines = _read_lines(path)
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader)]
    if "movieid" not in header or "title" not in header:
        raise ConfigError(f"{path}, line 1: expected the columns movieId and title, got {', '.join(header)}")
    movie, title = header.index("movieid"), header.index("title")
    genre = header.index("genres") if "genres" in header else None
    titles: dict[str, str] = {}
    genres: dict[str, tuple[str, ...]] = {}
    for number, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise ConfigError(f"{path}, line {number}: {len(fields)} fields, the header has {len(header)}")
        key = fields[movie].strip()
        _check_field(key, "movieId", path, number)
        titles[key] = fields[title].strip()
        if genre is not None:
            genres[key] = tuple(g.strip() for g in fields[genre].split("|") if g.strip() and not g.startswith("("))
    return titles, genres


def _read_categories(path: Path) -> dict[str, tuple[str, ...]]:
    """An ``item,category`` CSV (header row, ``#`` comments) -> each item's categories."""
    lines = [line for line in _read_lines(path) if not line.startswith("#")]
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    if len(header) != 2 or header[0] != "item":
        raise ConfigError(f"{path}: expected the header 'item,category' (or item,department), got {header}")
    found: dict[str, tuple[str, ...]] = {}
    for number, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != 2:
            raise ConfigError(f"{path}, line {number}: {len(fields)} fields; expected item,category")
        item, category = fields[0].strip(), fields[1].strip()
        _check_field(item, "item", path, number)
        _check_field(category, "category", path, number)
        found[item] = (*found.get(item, ()), category)
    return found


def _check_field(value: str, what: str, path: Path, number: int) -> None:
    if not value:
        raise ConfigError(f"{path}, line {number}: empty {what}; remove the line or fill it in")
    if len(value) > _MAX_FIELD:
        raise ConfigError(f"{path}, line {number}: {what} of {len(value):,} characters; is this the right file?")


def _number(text: str, what: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise ConfigError(f"{path}, line {number}: {what} {text.strip()!r} is not a number") from e
    if not np.isfinite(value):
        raise ConfigError(f"{path}, line {number}: {what} {text.strip()!r} is not a finite number")
    return value
