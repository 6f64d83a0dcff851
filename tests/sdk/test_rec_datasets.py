"""Recommendation datasets by name or path, with their evaluation split."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.errors import ConfigError
from sdk.rec_datasets import open_rec_dataset


def test_open_rec_dataset_succeeds_with_synthetic_names() -> None:
    baskets = open_rec_dataset("synthetic-baskets")
    assert baskets.synthetic and baskets.interactions.kind == "baskets" and len(baskets.split.test)
    sequences = open_rec_dataset("synthetic-sequences")
    assert sequences.interactions.kind == "sequences" and "leave-last-out" in sequences.split.method


def test_open_rec_dataset_succeeds_with_a_fallback_only_when_allowed(tmp_path: Path) -> None:
    stand_in = open_rec_dataset("baskets", root=tmp_path, fallback=True)
    assert stand_in.synthetic and "not found: using synthetic baskets" in stand_in.note
    with pytest.raises(ConfigError, match="does not exist; pass --dataset synthetic-sequences"):
        open_rec_dataset("movielens", root=tmp_path)


def test_open_rec_dataset_succeeds_with_csv_files_of_either_kind(tmp_path: Path) -> None:
    baskets = tmp_path / "tills.csv"
    baskets.write_text("milk,bread\nmilk,eggs,bread\nsoda,chips\ncoffee,milk\n" * 5)
    opened = open_rec_dataset(str(baskets))
    assert opened.name == "tills" and opened.interactions.kind == "baskets"
    histories = tmp_path / "events.csv"
    histories.write_text(
        "user,item,timestamp\n" + "".join(f"u{u},i{(u + t) % 7},{t}\n" for u in range(5) for t in range(4))
    )
    assert open_rec_dataset(str(histories)).interactions.kind == "sequences"


def test_open_rec_dataset_fails_with_unknown_name_or_folder_without_ratings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a known name"):
        open_rec_dataset("groceries")
    with pytest.raises(ConfigError, match="without ratings.csv"):
        open_rec_dataset(str(tmp_path))
