"""rec-cost: synthetic tables and bundles, the timed runs, the IVF measurement, the verdicts, the command.

One tiny encoder (mean pooling, dim 8, window 5, 60 items) is packaged as an ONNX bundle once;
synthetic tables of other sizes are paired with it exactly as ``shelfedge rec-cost`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")

from cli import main
from converters.export.rec_bundle import package_recommender
from converters.models.rec_student import StudentConfig, build_student
from sdk.errors import ConfigError
from sdk.qa.bench_stats import latency_stats
from sdk.qa.rec_cost import (
    CostRow,
    measure_search,
    open_searches,
    quantized,
    random_histories,
    synthetic_catalogue,
    synthetic_items,
    time_cost,
    user_vectors,
    with_items,
)
from sdk.qa.rec_cost_report import budgets, cost_markdown, crossings
from sdk.recommender import Recommender

VOCAB, DIM, MAX_LEN = 60, 8, 5


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    encoder, _ = build_student(StudentConfig(n_items=VOCAB, shape="mean", dim=DIM, max_len=MAX_LEN, seed=1))
    table, bias = synthetic_items(VOCAB, DIM, seed=1)
    bundles = package_recommender(
        encoder, table, bias, synthetic_catalogue(VOCAB), np.ones(VOCAB), out_dir=tmp_path_factory.mktemp("enc"),
        name="tiny", kind="sequences", formats=["onnx"], max_len=MAX_LEN,
    )  # fmt: skip
    return next(iter(bundles.values()))


def test_synthetic_items_succeed_seeded_with_or_without_a_template() -> None:
    table, bias = synthetic_items(500, DIM, seed=3)
    again, _ = synthetic_items(500, DIM, seed=3)
    assert table.shape == (500, DIM) and bias.shape == (500,) and table.dtype == np.float32
    assert np.array_equal(table, again) and not np.array_equal(table, synthetic_items(500, DIM, seed=4)[0])
    rows = np.repeat(np.array([[1.0], [3.0]], np.float32), DIM, axis=1)
    like, like_bias = synthetic_items(4000, DIM, seed=0, like=(rows, np.array([2.0, 2.0], np.float32)))
    assert np.all(like_bias == 2.0)  # resampled: a bias without spread gets no noise
    assert abs(float(like.mean()) - 2.0) < 0.05 and 0.9 < float(like.std()) < 1.3  # rows of 1s and 3s, plus noise
    with pytest.raises(ConfigError, match=r"template table is \(2, 8\), expected \(n, 4\)"):
        synthetic_items(10, 4, seed=0, like=(rows, None))


def test_with_items_succeeds_with_a_bundle_of_any_catalogue_size(encoder_bundle, tmp_path: Path) -> None:
    table, bias = synthetic_items(1000, DIM, seed=5)
    items_dir = tmp_path / "items"
    bundle = with_items(encoder_bundle, table, bias, tmp_path / "b1", items_dir=items_dir)
    again = with_items(encoder_bundle, table, bias, tmp_path / "b2", items_dir=items_dir)  # files reused, linked
    assert (items_dir / "items.npz").stat().st_nlink >= 3
    assert [b.manifest.recommendation.n_items for b in (bundle, again) if b.manifest.recommendation] == [1000, 1000]
    with Recommender.from_bundle(bundle.path) as recommender:
        result = recommender.recommend(["i0000001", "i0000002"], 5)
        assert len(result.items) == 5 and len(recommender.catalogue) == 1000
        history = [recommender.catalogue.ids[i] for i in (4, 9)]
        np.testing.assert_allclose(
            recommender.scores(history), quantized(table) @ _user(recommender, [4, 9]) + bias, rtol=1e-4, atol=1e-5
        )
    with pytest.raises(ConfigError, match="does not fit its 8-dim encoder"):
        with_items(encoder_bundle, table[:, :4], bias, tmp_path / "b3")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a bundle"):
        with_items(encoder_bundle, table, bias, tmp_path / "taken", items_dir=items_dir)


def _user(recommender: Recommender, history: list[int]) -> np.ndarray:
    return user_vectors(recommender.model, [history], MAX_LEN)[0]


def test_time_cost_succeeds_with_recommend_and_encoder_timed_together(encoder_bundle, tmp_path: Path) -> None:
    table, bias = synthetic_items(300, DIM, seed=2)
    bundle = with_items(encoder_bundle, table, bias, tmp_path / "b")
    histories = random_histories(VOCAB, MAX_LEN, 8, seed=0)
    assert all(1 <= len(h) <= MAX_LEN and len(set(h)) == len(h) and max(h) < VOCAB for h in histories)
    with Recommender.from_bundle(bundle.path) as recommender:
        [row] = time_cost({"ort": recommender}, histories, k=5, blocks=3, calls_per_block=4, warmup=1)
        assert (row.n_items, row.runtime, row.latency.count, row.encode.count) == (300, "onnxruntime", 12, 12)
        assert row.encode.p50_ms < row.latency.p50_ms and row.rest_p50_ms > 0
        with pytest.raises(ConfigError, match="at least one recommender"):
            time_cost({}, histories)


def test_measure_search_succeeds_with_exact_recall_when_every_list_is_opened(encoder_bundle, tmp_path: Path) -> None:
    table, bias = synthetic_items(900, DIM, seed=6)
    with pytest.raises(ConfigError, match="no IVF index; write the bundle with with_items"):
        open_searches(with_items(encoder_bundle, table, bias, tmp_path / "plain"), "onnxruntime", [1])
    bundle = with_items(encoder_bundle, table, bias, tmp_path / "ivf", ivf_lists=30)
    assert bundle.manifest.recommendation.index.n_lists == 30 and (bundle.path / "items.ivf.npz").is_file()
    histories = random_histories(VOCAB, MAX_LEN, 12, seed=1)
    recommenders = open_searches(bundle, "onnxruntime", [1, 30])
    try:
        assert list(recommenders) == ["exact", "ivf 1", "ivf 30"]
        ids = recommenders["exact"].catalogue.ids
        rows = measure_search(
            recommenders, [[ids[i] for i in h] for h in histories], k=10, blocks=2, calls_per_block=3, resamples=200
        )
        with pytest.raises(ConfigError, match="one contender must search exactly"):
            measure_search({"ivf": recommenders["ivf 1"]}, [["i0000001"]])
    finally:
        for recommender in recommenders.values():
            recommender.close()
    assert [(r.search, r.n_probe) for r in rows] == [("exact", None), ("ivf", 1), ("ivf", 30)]
    assert rows[0].recall == 1.0 and rows[2].recall == 1.0 and rows[0].candidates_mean == 900
    assert rows[2].candidates_mean == 900 and rows[1].candidates_mean < 900 and rows[1].n_lists == 30
    assert rows[1].recall_low <= rows[1].recall <= rows[1].recall_high and rows[1].latency.count == 6
    assert rows[1].score_p50_ms > 0 and 0.0 <= rows[1].widened <= 1.0


def _row(n: int, runtime: str, p99: float) -> CostRow:
    stats = latency_stats([p99 / 2] * 98 + [p99] * 2)
    return CostRow(n_items=n, runtime=runtime, runtime_version="1", latency=stats, encode=latency_stats([0.01]))


def test_crossings_succeed_with_the_size_where_a_budget_is_crossed() -> None:
    rows = [_row(1_000, "a", 0.2), _row(10_000, "a", 1.0), _row(100_000, "a", 10.0), _row(1_000, "b", 9.0)]
    sentences = crossings(rows, {5.0: ["android-arm64"], 20.0: ["kiosk"]})
    assert sentences[0].startswith("5 ms (android-arm64), a: fits up to 10,000 items (p99 1.00 ms), over at 100,000")
    assert "crossing ≈ 50,000 items" in sentences[0]  # log-log: 1 ms -> 10 ms over a decade, 5 ms at 10^4.7
    assert (
        sentences[1]
        == "5 ms (android-arm64), b: over the budget from the smallest measured size (1,000 items, p99 9.00 ms)"
    )
    assert sentences[2].startswith("20 ms (kiosk), a: fits at every measured size")
    assert "| 100,000 | a 1 |" in cost_markdown(rows)
    limits = budgets()
    assert "android-arm64" in limits[5.0] and "x86-kiosk-cpu" in limits[10.0]


def test_rec_cost_cli_succeeds_with_json_table_plot_and_verdicts(encoder_bundle, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    argv = ["rec-cost", "--bundles", str(encoder_bundle.path), "--sizes", "200,400", "--ivf-sizes", "400",
            "--n-probe", "1,20", "--calls", "4", "--calls-per-block", "2", "--histories", "5", "--out", str(tmp_path),
            "--blas-threads", "1", "--json"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [(r["n_items"], r["runtime"]) for r in payload["cost"]] == [(200, "onnxruntime"), (400, "onnxruntime")]
    assert [r["n_probe"] for r in payload["ivf"]] == [None, 1, 20] and payload["ivf"][2]["recall"] == 1.0
    assert [r["search"] for r in payload["ivf"]] == ["exact", "ivf", "ivf"] and len(payload["auto"]) >= 2
    assert any("400 items, 5 ms (android-arm64)" in v and "auto picks exact" in v for v in payload["auto"])
    assert payload["host"]["cpu"] and any("android-arm64" in s for s in payload["crossings"])
    assert "openblas 1 threads" in payload["blas"] or "threadpoolctl" in payload["blas"]
    assert (tmp_path / "rec_cost.png").stat().st_size > 0 and "| 400 | onnxruntime" in (
        tmp_path / "rec_cost.md"
    ).read_text()
    assert main(["rec-cost", "--bundles", str(encoder_bundle.path), "--sizes", "ten", "--out", str(tmp_path)]) == 2
    assert "--sizes takes comma-separated integers" in capsys.readouterr().err
