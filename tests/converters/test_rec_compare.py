"""rec-compare: the baselines side by side on planted synthetic baskets, with reports written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("scipy")

from cli import main
from converters.training.rec_compare import RecCompareConfig, compare_recommenders, write_comparison
from sdk.errors import ConfigError
from sdk.rec_datasets import open_rec_dataset


def test_compare_recommenders_succeeds_with_co_occurrence_beating_popularity(tmp_path: Path) -> None:
    dataset = open_rec_dataset("synthetic-baskets")
    config = RecCompareConfig(baselines=("popularity", "item-knn", "ease"), tune=False, resamples=200)
    lines: list[str] = []
    comparison = compare_recommenders(dataset, config, log=lines.append)
    ndcg = {row.name: row.report.metric("ndcg@10").value for row in comparison.rows}
    # The planted partner is the answer for half of the hidden items: co-occurrence finds it.
    assert ndcg["item-knn"] > ndcg["popularity"] + 0.2 and ndcg["ease"] > ndcg["popularity"] + 0.2
    assert comparison.best in ("item-knn", "ease")
    [versus_popularity] = [p for p in comparison.paired if "popularity" in p.to_dict().values()]
    assert versus_popularity.verdict("ndcg@10").value.endswith("better")
    paths = write_comparison(comparison, tmp_path)
    payload = json.loads(paths["json"].read_text())
    assert [row["name"] for row in payload["rows"]] == ["popularity", "item-knn", "ease"]
    assert "Paired comparisons" in paths["markdown"].read_text() and paths["plot"].stat().st_size > 1000
    assert any("test NDCG@10" in line for line in lines)


def test_rec_compare_config_fails_with_unknown_baseline() -> None:
    with pytest.raises(ConfigError, match="unknown baseline"):
        RecCompareConfig(baselines=("svd",))


def test_cli_rec_compare_succeeds_with_json_on_synthetic_sequences(tmp_path: Path, capsys) -> None:
    code = main(
        ["rec-compare", "--dataset", "synthetic-sequences", "--baselines", "popularity,ease", "--no-tune",
         "--resamples", "100", "--out", str(tmp_path), "--json"]
    )  # fmt: skip
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["dataset"] == "synthetic-sequences" and len(payload["rows"]) == 2
    assert (tmp_path / "rec_compare.md").is_file()


def test_cli_rec_compare_succeeds_with_the_teacher_trained_then_reused(tmp_path: Path, capsys) -> None:
    pytest.importorskip("keras")
    args = ["rec-compare", "--dataset", "synthetic-baskets", "--baselines", "popularity", "--no-tune",
            "--teacher", "--teacher-epochs", "1", "--teacher-dir", str(tmp_path / "teacher"), "--resamples", "100",
            "--out", str(tmp_path), "--json"]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in first["rows"]] == ["popularity", "teacher (set attention)"]
    assert (tmp_path / "teacher" / "teacher.keras").is_file()
    assert main(args) == 0  # the second run reuses the trained teacher: the same scores
    second = json.loads(capsys.readouterr().out)
    assert second["rows"][1]["test"] == first["rows"][1]["test"]


def test_cli_rec_distill_succeeds_with_kd_twin_and_teacher_compared_paired(tmp_path: Path, capsys) -> None:
    pytest.importorskip("keras")
    args = ["rec-distill", "--dataset", "synthetic-baskets", "--dim", "8", "--epochs", "1", "--teacher-epochs", "1",
            "--teacher-dir", str(tmp_path / "teacher"), "--resamples", "100", "--out", str(tmp_path),
            "--json"]  # fmt: skip
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    names = [row["name"] for row in payload["rows"]]
    assert names == ["teacher (set attention)", "student, labels only", "student, KD"]
    pairs = [(p["model_a"], p["model_b"]) for p in payload["paired_vs_best"]]
    assert pairs[0] == ("student, KD", "student, labels only")
    kd = payload["rows"][2]["params"]
    assert kd["shape"] == "mean" and kd["dim"] == 8 and 0 < kd["macs_vs_teacher"] < 1
    # The chosen student ships as bundles that `shelfedge recommend` serves.
    assert sorted(payload["bundles"]) == ["onnx", "openvino", "tflite"]
    assert main(["recommend", payload["bundles"]["tflite"], "--history", "category 004", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["items"]) == 3 and "category 004" not in [item["id"] for item in answer["items"]]


def test_compare_recommenders_fails_with_a_pair_naming_an_unranked_model() -> None:
    dataset = open_rec_dataset("synthetic-baskets")
    config = RecCompareConfig(baselines=("popularity",), tune=False, resamples=100)
    with pytest.raises(ConfigError, match="pairs name ease, which were not ranked; ranked: popularity"):
        compare_recommenders(dataset, config, pairs=(("popularity", "ease"),), log=lambda line: None)


def test_teacher_for_fails_with_an_unreadable_trained_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("keras")
    from types import SimpleNamespace

    from converters.training import rec_compare

    junk = tmp_path / "teacher.keras"
    junk.write_bytes(b"not a keras archive")
    monkeypatch.setattr(rec_compare, "train_recommender_teacher", lambda *a, **k: SimpleNamespace(model_path=junk))
    with pytest.raises(
        ConfigError, match="cannot load the trained teacher.*delete that folder or pass another --teacher-dir"
    ):
        rec_compare.teacher_for(open_rec_dataset("synthetic-baskets"), tmp_path, log=lambda line: None)
