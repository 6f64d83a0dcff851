"""The recommendation datasets by name, and their evaluation split, for every command alike.

``--dataset`` takes a name or a path:
- ``baskets``: the Groceries point-of-sale baskets (``<data>/groceries-baskets/baskets.csv``);
- ``movielens``: MovieLens ml-latest-small (``<data>/movielens-small``);
- ``synthetic-baskets`` / ``synthetic-sequences``: generated, with planted answers (no data needed);
- a ``.csv`` file: a generic ``user|session, item[, timestamp]`` file (histories), or one basket per
  line when it has no header (``kind`` says which);
- a directory holding ``ratings.csv``: the MovieLens layout.

``<data>`` is ``$SHELFEDGE_REC_DATA`` or ``../shared/data``. When a named real dataset is absent, the
synthetic one of the same kind stands in only if the caller allows it (``fallback=True``), and the
returned description says so.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sdk.errors import ConfigError
from sdk.interaction_splits import (
    RecSplit,
    split_baskets,
    split_leave_last,
    synthetic_baskets,
    synthetic_sequences,
)
from sdk.interactions import Interactions, Kind, load_baskets, load_csv, load_movielens

REC_DATA_ENV = "SHELFEDGE_REC_DATA"
# The Groceries categories' departments (project data): the recommender's category filter on baskets.
GROCERIES_DEPARTMENTS = Path(__file__).with_name("datasets") / "groceries_departments.csv"
NAMED = ("baskets", "movielens", "synthetic-baskets", "synthetic-sequences")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecDataset:
    """A dataset opened by name or path, with its evaluation split. Immutable: safe to share.

    Attributes:
        name: the name asked for (``baskets``) or the path's stem.
        interactions: the data.
        split: train rows and validation/test cases (baskets: seeded basket split; sequences:
            leave-last-out).
        synthetic: True when generated data stands in (asked for, or the real data is absent).
        note: one line on where the data came from, for progress output and reports.
    """

    name: str
    interactions: Interactions
    split: RecSplit
    synthetic: bool
    note: str


def default_rec_root() -> Path:
    return Path(os.environ.get(REC_DATA_ENV) or Path("..") / "shared" / "data")


def open_rec_dataset(
    spec: str, *, root: Path | None = None, kind: Kind | None = None, seed: int = 0, fallback: bool = False
) -> RecDataset:
    """Open ``spec`` (a name or a path, see the module docstring) and split it for evaluation.

    Args:
        spec: ``baskets``, ``movielens``, ``synthetic-baskets``, ``synthetic-sequences``, a CSV
            file or a MovieLens-layout directory.
        root: where the named datasets live (default ``$SHELFEDGE_REC_DATA`` or ``../shared/data``).
        kind: for a CSV file, ``baskets`` or ``sequences`` (default: sequences when it has a
            header naming a user and item column, else baskets).
        seed: the basket split's seed.
        fallback: a named real dataset that is absent is replaced by its synthetic kin (said in
            ``note``) instead of raising.

    Raises:
        ConfigError: an unknown name, a missing path, or data the loaders refuse (file and line).
    """
    root = root or default_rec_root()
    synthetic = False
    if spec in ("baskets", "movielens"):
        path = root / ("groceries-baskets/baskets.csv" if spec == "baskets" else "movielens-small")
        if not path.exists():
            if not fallback:
                raise ConfigError(
                    f"dataset {spec!r}: {path} does not exist; pass --dataset synthetic-{_kin(spec)} "
                    f"or a CSV file, or set ${REC_DATA_ENV} to the folder holding it"
                )
            interactions, synthetic = _synthetic(_kin(spec)), True
            note = f"{path} not found: using {interactions.source}"
        else:
            interactions = (
                load_baskets(path, categories=GROCERIES_DEPARTMENTS) if spec == "baskets" else load_movielens(path)
            )
            note = interactions.describe()
    elif spec in ("synthetic-baskets", "synthetic-sequences"):
        interactions, synthetic = _synthetic(spec.removeprefix("synthetic-")), True
        note = interactions.describe()
    else:
        interactions = _from_path(Path(spec), kind)
        note = interactions.describe()
    split = split_baskets(interactions, seed=seed) if interactions.kind == "baskets" else split_leave_last(interactions)
    return RecDataset(
        name=Path(spec).stem if spec not in NAMED else spec,
        interactions=interactions,
        split=split,
        synthetic=synthetic,
        note=note,
    )


def _kin(name: str) -> str:
    return "baskets" if name == "baskets" else "sequences"


def _synthetic(kind: str) -> Interactions:
    return synthetic_baskets() if kind == "baskets" else synthetic_sequences()


def _from_path(path: Path, kind: Kind | None) -> Interactions:
    if path.is_dir():
        if not (path / "ratings.csv").is_file():
            raise ConfigError(f"{path}: a directory without ratings.csv; pass a CSV file or a MovieLens folder")
        return load_movielens(path)
    if not path.is_file():
        raise ConfigError(
            f"dataset {str(path)!r}: neither a known name ({', '.join(NAMED)}) nor an existing file or folder"
        )
    if kind == "baskets" or (kind is None and not _has_header(path)):
        return load_baskets(path)
    return load_csv(path, kind=kind or "sequences")


def _has_header(path: Path) -> bool:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().strip().lower()
    names = {c.strip() for c in first.split(",")}
    return bool(names & {"user", "userid", "user_id", "session", "session_id", "basket", "basket_id"})
