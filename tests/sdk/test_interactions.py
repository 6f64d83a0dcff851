"""Interactions for the recommenders: strict loaders, evaluation splits, planted synthetic data."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from sdk.errors import ConfigError
from sdk.interaction_splits import split_baskets, split_leave_last, synthetic_baskets, synthetic_sequences
from sdk.interactions import Catalogue, from_rows, load_baskets, load_csv, load_movielens
from sdk.rec_datasets import GROCERIES_DEPARTMENTS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_load_baskets_succeeds_with_items_indexed_by_first_appearance(tmp_path: Path) -> None:
    path = _write(tmp_path, 'whole milk,yogurt\n\n"rolls/buns",whole milk,whole milk\nsoda\n')
    baskets = load_baskets(path)
    assert baskets.kind == "baskets" and len(baskets) == 3
    assert baskets.catalogue.ids == ("whole milk", "yogurt", "rolls/buns", "soda")
    assert [r.tolist() for r in baskets.rows] == [[0, 1], [2, 0], [3]]  # a repeated item counts once
    assert baskets.popularity().tolist() == [2.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty file"),
        ("\n\n  \n", "empty file"),
        (b"\x89PNG\r\n\x1a\n\0\0", "NUL bytes|not UTF-8"),
        ("milk,,bread\n", "line 1: empty item"),
        ("milk\n" + "x" * 2000 + "\n", "line 2: item of 2,000 characters"),
    ],
)
def test_load_baskets_fails_with_malformed_file(tmp_path: Path, content: str | bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_baskets(_write(tmp_path, content))


def test_load_baskets_succeeds_with_categories_from_a_department_file(tmp_path: Path) -> None:
    departments = tmp_path / "departments.csv"
    departments.write_text("# a comment\nitem,department\nwhole milk,dairy\nyogurt,dairy\nyogurt,chilled\n")
    baskets = load_baskets(_write(tmp_path, "whole milk,yogurt\nsoda\n"), categories=departments)
    assert baskets.catalogue.categories == (("dairy",), ("dairy", "chilled"), ())
    assert {k: v.tolist() for k, v in baskets.catalogue.category_index().items()} == {"chilled": [1], "dairy": [0, 1]}
    departments.write_text("item,department\nwhole milk\n")
    with pytest.raises(ConfigError, match="line 2: 1 fields; expected item,category"):
        load_baskets(_write(tmp_path, "whole milk\n"), categories=departments)
    with pytest.raises(ConfigError, match="category lists for 2 items"):
        Catalogue(ids=("a", "b"), names=("a", "b"), categories=(("x",),))


def test_groceries_departments_succeed_with_one_department_per_category() -> None:
    departments = {}
    for line in GROCERIES_DEPARTMENTS.read_text().splitlines()[3:]:
        item, department = line.rsplit(",", 1)
        assert item.strip('"') not in departments
        departments[item.strip('"')] = department
    assert len(departments) == 169 and len(set(departments.values())) == 10
    if (SHARED / "groceries-baskets" / "baskets.csv").is_file():
        baskets = load_baskets(SHARED / "groceries-baskets" / "baskets.csv", categories=GROCERIES_DEPARTMENTS)
        assert all(len(c) == 1 for c in baskets.catalogue.categories)


def test_load_baskets_fails_with_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_baskets(tmp_path / "nope.csv")


def test_load_csv_succeeds_with_histories_ordered_by_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path, "UserId,itemId,Timestamp,rating\nu1,b,20,5\nu1,a,10,4\nu2,c,5,1\nu1,c,30,3\n")
    data = load_csv(path, min_rating=2)
    assert data.kind == "sequences" and data.row_ids == ("u1",)  # u2's only rating is below min_rating
    assert [data.catalogue.ids[i] for i in data.rows[0]] == ["a", "b", "c"]


def test_load_csv_succeeds_with_file_order_and_names_without_timestamps(tmp_path: Path) -> None:
    data = load_csv(_write(tmp_path, "session,product,name\ns,p2,Oat drink\ns,p1,\n"), kind="baskets")
    assert data.catalogue.ids == ("p2", "p1") and data.catalogue.names == ("Oat drink", "p1")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("user,item\n", "no interactions after the header"),
        ("user,item,colour\nu,i,red\n", "line 1: unknown column 'colour'"),
        ("item,timestamp\ni,1\n", "line 1: no user column"),
        ("user,user_id,item\nu,u,i\n", "line 1: two user columns"),
        ("user,item,timestamp\nu,i,1\nu,j\n", "line 3: 2 fields, the header has 3"),
        ("user,item,timestamp\nu,i,yesterday\n", "line 2: timestamp 'yesterday' is not a number"),
        ("user,item,rating\nu,i,nan\n", "line 2: rating 'nan' is not a finite number"),
        ("user,item\n,i\n", "line 2: empty user id"),
    ],
)
def test_load_csv_fails_with_malformed_rows_naming_file_and_line(tmp_path: Path, content: str, match: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=match) as error:
        load_csv(path)
    assert str(path) in str(error.value)


def test_catalogue_fails_with_duplicate_ids_or_missing_names() -> None:
    with pytest.raises(ConfigError, match="'a' appears twice"):
        Catalogue(ids=("a", "b", "a"), names=("a", "b", "a"))
    with pytest.raises(ConfigError, match="2 ids but 1 names"):
        Catalogue(ids=("a", "b"), names=("a",))


def test_from_rows_fails_with_index_outside_the_catalogue_or_no_rows() -> None:
    catalogue = Catalogue(ids=("a", "b"), names=("a", "b"))
    with pytest.raises(ConfigError, match="row 1 holds an item index outside 0..1"):
        from_rows([[0], [2]], catalogue, kind="baskets")
    with pytest.raises(ConfigError, match="no rows"):
        from_rows([], catalogue, kind="baskets")


def test_empty_catalogue_fails_everywhere_with_a_specific_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the catalogue is empty"):
        from_rows([[0]], Catalogue(ids=(), names=()), kind="baskets")
    header_only = tmp_path / "h.csv"
    header_only.write_text("user,item\n")
    with pytest.raises(ConfigError, match="no interactions after the header"):
        load_csv(header_only)


def test_split_baskets_succeeds_with_each_item_hidden_once_per_held_out_basket() -> None:
    data = synthetic_baskets(n_baskets=200, n_items=20, seed=1)
    split = split_baskets(data, test_fraction=0.2, valid_fraction=0.1, seed=3)
    assert len(split.train) == 140
    for cases in (split.valid, split.test):
        for history, target, group in zip(cases.histories, cases.targets, cases.groups, strict=True):
            basket = data.rows[group]
            assert target in basket and target not in history
            assert sorted([*history.tolist(), int(target)]) == sorted(basket.tolist())
    held_out = set(split.valid.groups.tolist()) | set(split.test.groups.tolist())
    # No held-out basket is trained on (train holds the very row arrays of the dataset).
    assert not {id(data.rows[g]) for g in held_out} & {id(r) for r in split.train}
    assert split_baskets(data, seed=3).test.targets.tolist() == split.test.targets.tolist()  # seeded


def test_split_baskets_fails_with_bad_fractions_or_only_single_item_baskets() -> None:
    data = synthetic_baskets(n_baskets=50, n_items=10)
    with pytest.raises(ConfigError, match="must be in"):
        split_baskets(data, test_fraction=0.6, valid_fraction=0.5)
    singles = from_rows([[i % 5] for i in range(40)], data.catalogue, kind="baskets", source="singles")
    with pytest.raises(ConfigError, match="at least two items"):
        split_baskets(singles)


def test_split_leave_last_succeeds_with_last_for_test_and_previous_for_validation() -> None:
    catalogue = Catalogue(ids=tuple("abcdef"), names=tuple("abcdef"))
    data = from_rows([[0, 1, 2, 3], [4, 5]], catalogue, kind="sequences")
    split = split_leave_last(data)
    assert [r.tolist() for r in split.train] == [[0, 1], [4, 5]]  # the short history only trains
    assert split.valid.histories[0].tolist() == [0, 1] and split.valid.targets.tolist() == [2]
    assert split.test.histories[0].tolist() == [0, 1, 2] and split.test.targets.tolist() == [3]
    with pytest.raises(ConfigError, match="no history of 3 or more"):
        split_leave_last(from_rows([[0, 1]], catalogue, kind="sequences"))


def test_synthetic_baskets_succeeds_with_planted_partners() -> None:
    data = synthetic_baskets(n_baskets=500, n_items=20, pair_probability=0.9, seed=0)
    with_even = [r for r in data.rows if 4 in r]
    assert with_even and np.mean([5 in r for r in with_even]) > 0.8
    with pytest.raises(ConfigError, match="must be even"):
        synthetic_baskets(n_items=7)


def test_synthetic_sequences_succeeds_with_planted_successors_and_no_repeats() -> None:
    data = synthetic_sequences(n_users=50, n_items=30, length=10, follow_probability=0.8, seed=2)
    follows = [int(b == (a + 1) % 30) for row in data.rows for a, b in itertools.pairwise(row)]
    assert np.mean(follows) > 0.6
    assert all(len(set(r.tolist())) == len(r) for r in data.rows)


@pytest.mark.skipif(not (SHARED / "movielens-small" / "ratings.csv").is_file(), reason="needs ../shared/data")
def test_load_movielens_succeeds_with_every_movie_in_the_catalogue() -> None:
    data = load_movielens(SHARED / "movielens-small")
    assert len(data) == 610 and data.n_items == 9742 and data.n_interactions == 99616
    index = data.catalogue.index_of()
    assert data.catalogue.names[index["1"]] == "Toy Story (1995)"
    assert data.catalogue.categories[index["1"]] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert len(data.catalogue.category_index()) == 19  # genres; "(no genres listed)" is none
