"""Evaluation splits for the recommenders, and synthetic interactions with a known answer.

- Baskets: a seeded split of whole baskets into train / validation / test; every validation and test
  basket with at least two items gives one ranking case per item: that item hidden, the rest as the
  history, every other item ranked (basket completion).
- Sequences: leave-last-out per user: the last interaction is the test target (history: everything
  before it), the one before it the validation target (history: everything before that); models are
  fitted on each history without its last two interactions. Users with fewer than three
  interactions only train.

Every ranking excludes the items already in the history. Cases remember the basket or user they came
from (``groups``): a bootstrap of the metrics resamples groups, because the cases of one basket are
not independent.

Everything here is immutable and safe to share across threads.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sdk.errors import ConfigError
from sdk.interactions import Catalogue, Interactions, from_rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalCases:
    """Ranking cases: rank every item not in ``histories[i]``; the right answer is ``targets[i]``.

    Attributes:
        histories: the basket's other items, or the user's history (oldest first), int32 indices.
        targets: the hidden item of each case (int32).
        groups: the basket / user each case comes from, for a grouped bootstrap (int32).
    """

    histories: tuple[np.ndarray, ...]
    targets: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.histories)

    def head(self, n: int) -> EvalCases:
        """The first ``n`` cases (whole groups are not guaranteed; for quick runs)."""
        return EvalCases(histories=self.histories[:n], targets=self.targets[:n], groups=self.groups[:n])


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecSplit:
    """What to fit on and what to rank, for one dataset.

    Attributes:
        interactions: the whole dataset (catalogue, kind, source).
        train: the rows models are fitted on.
        valid: cases for every choice (epochs, distillation settings, the student's shape).
        test: cases for reporting only.
        method: how the split was made, in words (goes into reports).
    """

    interactions: Interactions
    train: tuple[np.ndarray, ...]
    valid: EvalCases
    test: EvalCases
    method: str

    @property
    def n_items(self) -> int:
        return self.interactions.n_items

    def describe(self) -> str:
        return (
            f"{self.method}: {len(self.train):,} training rows, {len(self.valid):,} validation and "
            f"{len(self.test):,} test cases over {self.n_items:,} items"
        )


def split_baskets(
    interactions: Interactions, *, test_fraction: float = 0.2, valid_fraction: float = 0.1, seed: int = 0
) -> RecSplit:
    """A seeded split of whole baskets; validation and test baskets become hide-one-item cases.

    Raises:
        ConfigError: the fractions are not in (0, 1) or leave no training baskets, or the data has no
            basket of two or more items to evaluate.
    """
    if not (0 < test_fraction < 1 and 0 < valid_fraction < 1 and test_fraction + valid_fraction < 1):
        raise ConfigError(
            f"basket split: test_fraction {test_fraction} and valid_fraction {valid_fraction} must be in (0, 1) "
            "and leave baskets to train on"
        )
    order = np.random.default_rng(seed).permutation(len(interactions))
    n_test = round(len(order) * test_fraction)
    n_valid = round(len(order) * valid_fraction)
    test_rows, valid_rows, train_rows = order[:n_test], order[n_test : n_test + n_valid], order[n_test + n_valid :]
    test, valid = _hide_each(interactions, test_rows), _hide_each(interactions, valid_rows)
    if not len(test) or not len(valid):
        raise ConfigError(
            f"{interactions.source}: no basket of two or more items in the validation or test part; "
            "basket completion needs baskets with at least two items"
        )
    return RecSplit(
        interactions=interactions,
        train=tuple(interactions.rows[i] for i in sorted(train_rows)),
        valid=valid,
        test=test,
        method=(
            f"baskets split by seed {seed}: {len(train_rows):,} train / {len(valid_rows):,} validation / "
            f"{len(test_rows):,} test baskets, one case per item of each held-out basket"
        ),
    )


def split_leave_last(interactions: Interactions, *, min_length: int = 3) -> RecSplit:
    """Leave-last-out per user: last interaction = test, the one before = validation.

    Raises:
        ConfigError: ``min_length`` < 3, or no user has ``min_length`` interactions.
    """
    if min_length < 3:
        raise ConfigError(f"leave-last-out: min_length {min_length} must be at least 3 (train, validation, test)")
    train: list[np.ndarray] = []
    valid: list[tuple[np.ndarray, int, int]] = []
    test: list[tuple[np.ndarray, int, int]] = []
    for user, row in enumerate(interactions.rows):
        if len(row) < min_length:
            train.append(row)
            continue
        train.append(row[:-2])
        valid.append((row[:-2], int(row[-2]), user))
        test.append((row[:-1], int(row[-1]), user))
    if not test:
        raise ConfigError(
            f"{interactions.source}: no history of {min_length} or more interactions; leave-last-out needs them"
        )
    return RecSplit(
        interactions=interactions,
        train=tuple(train),
        valid=_cases(valid),
        test=_cases(test),
        method=f"leave-last-out per user ({len(test):,} users with {min_length}+ interactions)",
    )


def synthetic_baskets(
    *, n_baskets: int = 2000, n_items: int = 60, pair_probability: float = 0.9, seed: int = 0
) -> Interactions:
    """Baskets with planted co-occurrences: item ``2k+1`` joins item ``2k`` with ``pair_probability``.

    Items are drawn with a Zipf-like popularity; a basket holding an even item ``2k`` also holds its
    partner ``2k+1`` with ``pair_probability``, so hiding ``2k+1`` from such a basket has one right
    answer that any recommender worth the name ranks first. Names read like grocery categories.

    Raises:
        ConfigError: ``n_items`` is odd or below 4, or ``n_baskets`` < 10.
    """
    if n_items < 4 or n_items % 2 or n_baskets < 10:
        raise ConfigError(f"synthetic baskets: n_items {n_items} must be even and >= 4, n_baskets {n_baskets} >= 10")
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items // 2 + 1) ** 0.8
    weights /= weights.sum()
    rows = []
    for _ in range(n_baskets):
        size = int(rng.integers(1, 4))
        evens = 2 * rng.choice(n_items // 2, size=size, replace=False, p=weights)
        items = [int(e) for e in evens]
        items += [int(e) + 1 for e in evens if rng.random() < pair_probability]
        rows.append(sorted(set(items)))
    ids = tuple(f"category {i:03d}" for i in range(n_items))
    return from_rows(
        rows, Catalogue(ids=ids, names=ids), kind="baskets", source=f"synthetic baskets (seed {seed}, planted pairs)"
    )


def synthetic_sequences(
    *, n_users: int = 300, n_items: int = 100, length: int = 20, follow_probability: float = 0.8, seed: int = 0
) -> Interactions:
    """Histories with a planted next item: after item ``i`` comes ``(i + 1) % n_items`` with ``follow_probability``.

    Items never repeat within a history, so the planted successor is always still unseen.

    Raises:
        ConfigError: ``length`` < 3 or larger than ``n_items``, or ``n_users`` < 1.
    """
    if not (3 <= length <= n_items) or n_users < 1:
        raise ConfigError(f"synthetic sequences: need 3 <= length ({length}) <= n_items ({n_items}) and n_users >= 1")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_users):
        row = [int(rng.integers(n_items))]
        while len(row) < length:
            successor = (row[-1] + 1) % n_items
            if successor not in row and rng.random() < follow_probability:
                row.append(successor)
            else:
                unseen = np.setdiff1d(np.arange(n_items), row)
                row.append(int(rng.choice(unseen)))
        rows.append(row)
    ids = tuple(str(i) for i in range(n_items))
    names = tuple(f"item {i}" for i in range(n_items))
    return from_rows(
        rows,
        Catalogue(ids=ids, names=names),
        kind="sequences",
        source=f"synthetic sequences (seed {seed}, planted successors)",
    )


def _hide_each(interactions: Interactions, rows: np.ndarray) -> EvalCases:
    cases: list[tuple[np.ndarray, int, int]] = []
    for row_index in sorted(rows.tolist()):
        basket = interactions.rows[row_index]
        if len(basket) < 2:
            continue
        for position in range(len(basket)):
            cases.append((np.delete(basket, position), int(basket[position]), row_index))
    return _cases(cases)


def _cases(cases: list[tuple[np.ndarray, int, int]]) -> EvalCases:
    return EvalCases(
        histories=tuple(history for history, _, _ in cases),
        targets=np.asarray([target for _, target, _ in cases], np.int32),
        groups=np.asarray([group for _, _, group in cases], np.int32),
    )
