"""Recommender: a tiny encoder + item table where every ranking is known, on every runtime.

The encoder is item embedding -> masked mean -> Dense(identity). Item embeddings ``E`` are
orthonormal rows and the table is ``T = W @ E``, so the scores of a one-item history ``[a]`` are
exactly ``W[:, a] + bias``: each column of ``W`` is a permutation of 0..n-1 (gaps of 1, far above
int8 rounding), with "yogurt" planted first for "whole milk". The bundles are exported once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cli import main  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from sdk.bundle import Bundle, write_bundle  # noqa: E402
from sdk.enums import ModelFormat, Precision  # noqa: E402
from sdk.errors import BundleError, ConfigError, InputError  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.recommender import Recommender, RecommenderOptions  # noqa: E402
from sdk.recommender_items import quantize_table  # noqa: E402

IDS = (
    "whole milk", "yogurt", "rolls/buns", "soda", "other vegetables", "tropical fruit",
    "bottled water", "root vegetables", "sausage", "pastry", "citrus fruit", "butter",
)  # fmt: skip
N, DIM, MAX_LEN = len(IDS), 16, 4
RUNTIME_MODULES = {"litert": "ai_edge_litert", "openvino": "openvino", "onnxruntime": "onnxruntime"}
FORMAT_RUNTIMES = (
    (ModelFormat.TFLITE, "litert"),
    (ModelFormat.OPENVINO, "openvino"),
    (ModelFormat.ONNX, "onnxruntime"),
    (ModelFormat.ONNX, "openvino"),
    (ModelFormat.KERAS, "tensorflow"),
)


@dataclasses.dataclass(frozen=True)
class Planted:
    encoder: Any
    embeddings: np.ndarray  # (N, DIM), orthonormal rows
    table: np.ndarray  # (N, DIM) float32 = W @ E
    bias: np.ndarray
    popularity: np.ndarray
    bundles: dict[ModelFormat, Bundle]

    def expected(self, history: list[str], table: np.ndarray | None = None) -> np.ndarray:
        """Scores from the Keras encoder itself: the reference every runtime must rank like."""
        batch = np.zeros((1, MAX_LEN), np.int32)
        rows = [IDS.index(i) + 1 for i in history][-MAX_LEN:]
        batch[0, MAX_LEN - len(rows) :] = rows
        user = np.asarray(self.encoder(batch))[0]
        return (self.table if table is None else table) @ user + self.bias


def build_encoder(embeddings: np.ndarray) -> Any:
    keras.utils.set_random_seed(0)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    embed = keras.layers.Embedding(N + 1, DIM, name="item_embedding")
    pooled = MaskedMean(name="pool")([embed(history), PaddingMask(name="keep")(history)])
    dense = keras.layers.Dense(DIM, name="user")
    model = keras.Model(history, dense(pooled), name="tiny_rec_encoder")
    embed.set_weights([np.vstack([np.zeros((1, DIM)), embeddings]).astype(np.float32)])
    dense.set_weights([np.eye(DIM, dtype=np.float32), np.zeros(DIM, np.float32)])
    return model


def _formats() -> tuple[ModelFormat, ...]:
    needs = {ModelFormat.TFLITE: "litert", ModelFormat.OPENVINO: "openvino", ModelFormat.ONNX: "onnxruntime"}
    return tuple(
        f for f in ModelFormat if f is ModelFormat.KERAS or (f in needs and _installed(RUNTIME_MODULES[needs[f]]))
    )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    rng = np.random.default_rng(5)
    embeddings = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0][:N].astype(np.float32)
    weights = np.stack([rng.permutation(N) for _ in range(N)], axis=1).astype(np.float32)
    weights[1, 0] = N  # "yogurt" is the answer for "whole milk"
    table = (weights @ embeddings).astype(np.float32)
    bias = (0.01 * rng.permutation(N)).astype(np.float32)  # breaks the ties of two-item means
    popularity = np.array([50, 40, 30, 3, 20, 10, 9, 8, 7, 6, 5, 4], np.float64)
    encoder = build_encoder(embeddings)
    bundles = package_recommender(
        encoder, table, bias, Catalogue(ids=IDS, names=tuple(i.title() for i in IDS)), popularity,
        out_dir=tmp_path_factory.mktemp("rec"), name="planted", kind="baskets", formats=_formats(),
    )  # fmt: skip
    return Planted(encoder, embeddings, table, bias, popularity, bundles)


def _top(scores: np.ndarray, k: int, skip: list[str] = ()) -> list[str]:
    order = [IDS[i] for i in np.argsort(-scores, kind="stable") if IDS[i] not in skip]
    return order[:k]


@pytest.fixture(scope="module")
def onnx_rec(planted: Planted) -> Recommender:
    pytest.importorskip("onnxruntime")
    with Recommender.from_bundle(planted.bundles[ModelFormat.ONNX].path, runtime="onnxruntime") as rec:
        yield rec


@pytest.mark.contract
@pytest.mark.parametrize(("fmt", "runtime"), FORMAT_RUNTIMES, ids=[f"{f.value}-{r}" for f, r in FORMAT_RUNTIMES])
def test_recommender_succeeds_with_the_keras_top_k_on_every_runtime(planted: Planted, fmt, runtime) -> None:
    if runtime in RUNTIME_MODULES:
        pytest.importorskip(RUNTIME_MODULES[runtime])
    path = planted.bundles[fmt].path
    int8_table = quantize_table(planted.table, Precision.INT8)
    dequantized = int8_table[0].astype(np.float32) * int8_table[1][:, None]
    with Recommender.from_bundle(path, runtime=runtime, k=5) as rec:
        for history in (["whole milk"], ["soda", "pastry"], ["butter", "sausage", "soda"]):
            result = rec.recommend(history)
            expected = planted.expected(history, dequantized)
            assert list(result.ids) == _top(expected, 5, history), (runtime, history)
            scores = [expected[IDS.index(i)] for i in result.ids]
            np.testing.assert_allclose([i.score for i in result.items], scores, rtol=1e-5, atol=1e-4)
        assert rec.recommend(["whole milk"]).items[0].id == "yogurt"
        assert result.ran.runtime.value == runtime


def test_recommender_succeeds_with_int8_table_ranking_like_fp32(planted: Planted) -> None:
    stored, scales = quantize_table(planted.table, Precision.INT8)
    assert stored.dtype == np.int8 and scales.shape == (N,)
    dequantized = stored.astype(np.float32) * scales[:, None]
    for item in IDS:
        assert _top(planted.expected([item], dequantized), N, [item]) == _top(planted.expected([item]), N, [item])


def test_recommender_succeeds_with_exclusion_and_allow_list(planted: Planted, onnx_rec: Recommender) -> None:
    expected = _top(planted.expected(["whole milk"]), N, ["whole milk"])
    assert onnx_rec.recommend(["whole milk"], k=3).ids == tuple(expected[:3])
    excluded = onnx_rec.recommend(["whole milk"], k=3, exclude=["yogurt"])
    assert excluded.ids == tuple(expected[1:4])
    allowed = ["butter", "soda", "yogurt", "whole milk"]
    result = onnx_rec.recommend(["whole milk"], k=10, allow=allowed)
    assert result.ids == tuple(i for i in expected if i in allowed) and "whole milk" not in result.ids
    assert result.k_reduced and len(result.items) == 3
    again = onnx_rec.recommend(["whole milk"], k=N, exclude_history=False)
    assert "whole milk" in again.ids and len(again.items) == N and not again.k_reduced


def test_recommender_succeeds_with_popular_items_on_cold_start(planted: Planted, onnx_rec: Recommender) -> None:
    result = onnx_rec.recommend([], k=3)
    assert result.cold_start and result.ids == ("whole milk", "yogurt", "rolls/buns")
    assert result.timings.encode_ms == 0.0 and result.items[0].score == 50.0
    only_unknown = onnx_rec.recommend(["caviar"], k=2, exclude=["whole milk"])
    assert only_unknown.cold_start and only_unknown.ids == ("yogurt", "rolls/buns")
    assert any("cold start" in note for note in only_unknown.notes())


def test_recommender_succeeds_with_unknown_ids_ignored_counted_and_named(onnx_rec: Recommender) -> None:
    result = onnx_rec.recommend(["caviar", "whole milk", "caviar", "truffles"], k=4)
    assert result.ids == onnx_rec.recommend(["whole milk"], k=4).ids
    assert result.unknown_ids == ("caviar", "truffles") and result.unknown_count == 3
    assert result.history_used == 1 and not result.cold_start
    assert "caviar, truffles" in result.notes()[0]
    filtered = onnx_rec.recommend(["whole milk"], allow=["yogurt", "foie gras"])
    assert filtered.ids == ("yogurt",) and filtered.unknown_filter_ids == ("foie gras",)


def test_recommender_succeeds_with_the_most_recent_of_an_over_long_history(onnx_rec: Recommender) -> None:
    history = ["butter", "pastry", "soda", "sausage", "citrus fruit", "yogurt"]
    result = onnx_rec.recommend(history, k=3)
    assert result.truncated and result.dropped == 2 and result.history_used == MAX_LEN
    recent = onnx_rec.recommend(history[-MAX_LEN:], k=3, exclude=history[:2])
    assert result.ids == recent.ids
    assert any("2 oldest" in note for note in result.notes())
    # A basket counts an item once: repeats neither fill the window nor weigh double.
    assert onnx_rec.recommend(["soda", "soda", "pastry"]).ids == onnx_rec.recommend(["soda", "pastry"]).ids


def test_recommender_scores_succeed_with_the_scores_recommend_ranks(onnx_rec: Recommender) -> None:
    history = ["butter", "pastry", "soda", "sausage", "citrus fruit", "yogurt"]
    scores = onnx_rec.scores(history)
    assert scores.shape == (N,) and scores.dtype == np.float32
    result = onnx_rec.recommend(history, k=3)
    assert [float(scores[i.index]) for i in result.items] == pytest.approx([i.score for i in result.items])
    # The window keeps the most recent MAX_LEN items, as recommend() does.
    np.testing.assert_allclose(scores, onnx_rec.scores(history[-MAX_LEN:]), rtol=1e-6)
    np.testing.assert_array_equal(onnx_rec.scores(["caviar"]), onnx_rec.scores([]))
    with pytest.raises(InputError, match="single string"):
        onnx_rec.scores("whole milk")  # type: ignore[arg-type]


def test_recommender_succeeds_with_a_category_filter(planted: Planted, tmp_path: Path) -> None:
    departments = tuple(("dairy",) if i in ("whole milk", "yogurt", "butter") else ("other",) for i in IDS)
    catalogue = Catalogue(ids=IDS, names=IDS, categories=departments)
    bundle = package_recommender(
        planted.encoder, planted.table, planted.bias, catalogue, planted.popularity,
        out_dir=tmp_path, name="dept", kind="baskets", formats=["onnx"],
    )[ModelFormat.ONNX]  # fmt: skip
    with Recommender.from_bundle(bundle.path) as rec:
        assert rec.categories == ("dairy", "other") and rec.catalogue.categories == departments
        dairy = rec.recommend(["whole milk"], k=5, category="dairy")
        assert dairy.ids == ("yogurt", "butter") and dairy.k_reduced
        assert rec.recommend(["soda"], k=12, category="other").ids == tuple(
            i for i in rec.recommend(["soda"], k=12).ids if i not in ("whole milk", "yogurt", "butter")
        )
        with pytest.raises(InputError, match="'bakery' is not in this bundle's catalogue; known: dairy, other"):
            rec.recommend(["soda"], category="bakery")
    with Recommender.from_bundle(planted.bundles[ModelFormat.KERAS].path) as plain:
        with pytest.raises(InputError, match="no categories"):
            plain.recommend(["soda"], category="dairy")
    items = json.loads((bundle.path / "items.json").read_text())
    items["categories"] = items["categories"][:-1]
    _rewrite_json(bundle, "items.json", items)
    with pytest.raises(BundleError, match="'categories' must list 12 lists"):
        Recommender.create(bundle.path)


def _rewrite_json(bundle: Bundle, name: str, data: Any) -> None:
    (bundle.path / name).write_text(json.dumps(data))
    write_bundle(bundle.path, bundle.manifest)  # re-hash: the check under test is the content's


def test_recommender_succeeds_with_blas_threads_reported_and_timings_split(onnx_rec: Recommender) -> None:
    assert onnx_rec.info.details["scoring_blas_threads"] == "1 (process-wide)"
    result = onnx_rec.recommend(["whole milk", "soda"])
    t = result.timings
    assert t.encode_ms > 0 and t.score_ms > 0 and t.encode_ms + t.score_ms <= t.total_ms
    with pytest.raises(ConfigError, match="blas_threads is 0"):
        RecommenderOptions(blas_threads=0)


def test_recommender_succeeds_with_all_items_when_k_is_larger(onnx_rec: Recommender) -> None:
    result = onnx_rec.recommend(["whole milk", "soda"], k=50)
    assert len(result.items) == N - 2 and result.k_reduced and result.k_requested == 50
    nothing = onnx_rec.recommend(["whole milk"], allow=["whole milk"])
    assert nothing.items == () and nothing.k_reduced


def test_recommender_fails_with_bad_arguments(onnx_rec: Recommender, planted: Planted) -> None:
    with pytest.raises(InputError, match="single string"):
        onnx_rec.recommend("whole milk")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="k must be a positive integer"):
        onnx_rec.recommend(["whole milk"], k=0)
    with pytest.raises(InputError, match="strings as in the catalogue"):
        onnx_rec.recommend([3])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="RecommenderOptions.k"):
        RecommenderOptions(k=True)
    with pytest.raises(ConfigError, match="RecommenderOptions.runtime"):
        RecommenderOptions(runtime="tensorrt")
    with pytest.raises(ConfigError, match="pass RecommenderOptions"):
        Recommender.create(planted.bundles[ModelFormat.ONNX].path, {"k": 3})  # type: ignore[arg-type]


def _copy(bundle: Bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle.path, tmp_path / bundle.path.name))


def test_recommender_fails_with_tampered_items_file(planted: Planted, tmp_path: Path) -> None:
    path = _copy(planted.bundles[ModelFormat.ONNX], tmp_path)
    with np.load(path / "items.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["table"][1] = arrays["table"][0]  # someone "promotes" an item
    np.savez(path / "items.npz", **arrays)
    with pytest.raises(BundleError, match=r"'items\.npz' has sha256 .* re-export the bundle"):
        Recommender.from_bundle(path, runtime="onnxruntime")


def _rewrite_table(path: Path, table: np.ndarray, **spec_changes: Any) -> None:
    np.savez(path / "items.npz", table=table, scales=np.ones(len(table), np.float32), bias=np.zeros(0, np.float32))
    manifest = Bundle.open(path, verify=False).manifest
    spec = dataclasses.replace(manifest.recommendation, has_bias=False, **spec_changes)
    write_bundle(path, manifest.with_changes(recommendation=spec))  # hashes match: only the shapes are wrong


def test_recommender_fails_with_a_table_that_does_not_match_the_model(planted: Planted, tmp_path: Path) -> None:
    path = _copy(planted.bundles[ModelFormat.ONNX], tmp_path)
    _rewrite_table(path, np.ones((N, DIM - 1), np.int8), dim=DIM - 1)
    with pytest.raises(BundleError, match=r"model\.onnx: output .* items\.npz holds 15-dim item vectors"):
        Recommender.from_bundle(path, runtime="onnxruntime")


def test_recommender_fails_with_a_table_that_does_not_match_its_manifest(planted: Planted, tmp_path: Path) -> None:
    path = _copy(planted.bundles[ModelFormat.ONNX], tmp_path)
    _rewrite_table(path, np.ones((N - 1, DIM), np.int8))
    with pytest.raises(BundleError, match=r"items\.npz: the item table is 11 x 16, the manifest says 12 items"):
        Recommender.from_bundle(path, runtime="onnxruntime")


def test_recommend_cli_succeeds_with_json(planted: Planted, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    allow = tmp_path / "in-stock.txt"
    allow.write_text("yogurt\nbutter\nsoda\npastry\n", encoding="utf-8")
    bundle = str(planted.bundles[ModelFormat.ONNX].path)
    argv = ["recommend", bundle, "--history", "whole milk, caviar", "-k", "2", "--exclude", "soda"]
    assert main([*argv, "--allow", str(allow), "--runtime", "onnxruntime", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    expected = [i for i in _top(planted.expected(["whole milk"]), N) if i in ("yogurt", "butter", "pastry")]
    assert [item["id"] for item in payload["items"]] == expected[:2]
    assert payload["unknown_ids"] == ["caviar"] and payload["ran"]["runtime"] == "onnxruntime"
    assert set(payload["timings"]) == {"encode_ms", "score_ms", "total_ms"}
    assert main(["recommend", bundle, "--history", "whole milk", "-k", "1"]) == 0
    text = capsys.readouterr().out
    assert "| yogurt | Yogurt |" in text and "total" in text


def test_bench_recommenders_succeeds_with_every_contender_timed_on_the_same_calls(
    planted: Planted, onnx_rec: Recommender
) -> None:
    from sdk.qa.rec_bench import bench_recommenders, markdown

    pytest.importorskip("ai_edge_litert")
    with Recommender.from_bundle(planted.bundles[ModelFormat.TFLITE].path) as litert:
        rows = bench_recommenders(
            {"onnx": onnx_rec, "tflite": litert}, [["whole milk"], ["soda", "butter"]], k=3, blocks=3,
            calls_per_block=4, warmup=1,
        )  # fmt: skip
    assert [r.label for r in rows] == ["onnx", "tflite"] and [r.runtime for r in rows] == ["onnxruntime", "litert"]
    for row in rows:
        s = row.latency
        assert s.count == 3 * 4 and s.p50_ms <= s.p90_ms <= s.p99_ms and row.n_items == N
        assert row.encode_p50_ms + row.score_p50_ms <= s.max_ms * 2  # the split is part of the whole call
    assert "| onnx | onnxruntime" in markdown(rows)
    with pytest.raises(ConfigError, match="at least one recommender"):
        bench_recommenders({}, [["soda"]])
    with pytest.raises(ConfigError, match="blocks 0 and calls_per_block 4 must be >= 1"):
        bench_recommenders({"onnx": onnx_rec}, [["soda"]], blocks=0, calls_per_block=4)


def test_cli_rec_bench_succeeds_with_json_and_reports(planted: Planted, tmp_path: Path, capsys) -> None:
    from cli import main

    pytest.importorskip("onnxruntime")
    args = ["rec-bench", str(planted.bundles[ModelFormat.ONNX].path), "--dataset", "synthetic-baskets",
            "--runtimes", "onnxruntime,litert", "--blocks", "2", "--calls-per-block", "3", "--out", str(tmp_path),
            "--json"]  # fmt: skip
    assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)
    # litert cannot open an ONNX bundle: skipped with a line, the ONNX Runtime row is there.
    assert [row["runtime"] for row in payload["rows"]] == ["onnxruntime"]
    assert (tmp_path / "rec_bench.md").is_file() and (tmp_path / "rec_bench.json").is_file()


def test_cli_bench_succeeds_with_recommendation_bundles_and_fails_over_budget(
    planted: Planted, tmp_path: Path, capsys
) -> None:
    from cli import main

    bundle = str(planted.bundles[ModelFormat.ONNX].path)
    assert main(["bench", "--bundle", bundle, "--quick", "--out", str(tmp_path / "ok"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["task"] == "recommendation" and "popularity" in payload["histories"]
    assert {row["runtime"] for row in payload["rows"]} >= {"onnxruntime"} and payload["rows"][0]["bundle_bytes"] > 0
    profile = tmp_path / "tight.yaml"
    text = (Path(__file__).parents[2] / "hw_profiles" / "onnxruntime-cpu.yaml").read_text()
    profile.write_text(
        text.replace("id: onnxruntime-cpu", "id: tight").replace("p99_recommend_ms: 10", "p99_recommend_ms: 1.0e-6")
    )
    assert main(["bench", "--bundle", bundle, "--profile", str(profile), "--quick", "--out", str(tmp_path / "no")]) == 1
    assert "budget FAIL" in capsys.readouterr().out
    assert main(["bench", "--bundle", bundle, "--baseline", bundle, "--quick"]) == 2
    assert "bench recommendation bundles on their own" in capsys.readouterr().err
