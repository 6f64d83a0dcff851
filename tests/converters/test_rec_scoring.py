"""Scoring + mask + top-k inside the graph: the same top-k as numpy on every runtime, split or fused.

A tiny recommender (200 items, dim 8, window 5) is packaged once with its int8 item table; the
scoring models are built from the table as the recommender dequantizes it, exported to LiteRT,
OpenVINO and ONNX, and asked the recommender's own questions through :class:`GraphPath`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.export.rec_scoring import build_scoring_model, export_scoring  # noqa: E402
from converters.models.rec_student import StudentConfig, build_student  # noqa: E402
from sdk import load  # noqa: E402
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat  # noqa: E402
from sdk.errors import ConfigError  # noqa: E402
from sdk.qa.rec_cost import synthetic_catalogue  # noqa: E402
from sdk.qa.rec_topk import MASKED, GraphPath, time_topk  # noqa: E402
from sdk.recommender import Recommender  # noqa: E402
from sdk.recommender_items import read_item_files  # noqa: E402

N, DIM, MAX_LEN, K = 200, 8, 5, 10
RUNTIME_MODULES = {"litert": "ai_edge_litert", "openvino": "openvino", "onnxruntime": "onnxruntime"}
FORMATS = tuple(
    f
    for f in (ModelFormat.TFLITE, ModelFormat.OPENVINO, ModelFormat.ONNX)
    if importlib.util.find_spec(RUNTIME_MODULES[RUNTIMES_FOR_FORMAT[f][0].value]) is not None
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("scoring")
    encoder, _ = build_student(StudentConfig(n_items=N, shape="mean", dim=DIM, max_len=MAX_LEN, seed=2))
    rng = np.random.default_rng(4)
    table = rng.normal(size=(N, DIM)).astype(np.float32)
    bias = rng.normal(0, 0.5, N).astype(np.float32)
    formats = [f.value for f in FORMATS]
    encoders = package_recommender(
        encoder, table, bias, synthetic_catalogue(N), np.ones(N), out_dir=out, name="enc", kind="sequences",
        formats=formats, max_len=MAX_LEN,
    )  # fmt: skip
    spec = encoders[FORMATS[0]].manifest.recommendation
    assert spec is not None
    scored_table = read_item_files(encoders[FORMATS[0]].path, spec).dequantized()  # as the recommender scores it
    split = export_scoring(scored_table, bias, k=K, out_dir=out, name="split", formats=formats)
    fused = export_scoring(scored_table, bias, k=K, out_dir=out, name="fused", encoder=encoder, formats=formats)
    return {"encoders": encoders, "split": split, "fused": fused, "table": scored_table, "bias": bias}


def _histories(count: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    ids = synthetic_catalogue(N).ids
    return [[ids[i] for i in rng.choice(N, int(n), replace=False)] for n in rng.integers(1, 9, size=count)]


@pytest.mark.contract
@pytest.mark.parametrize("fmt", FORMATS, ids=[f.value for f in FORMATS])
def test_in_graph_top_k_succeeds_with_numpy_top_k_on_every_runtime(setup: dict[str, Any], fmt: ModelFormat) -> None:
    runtime = RUNTIMES_FOR_FORMAT[fmt][0].value
    with Recommender.from_bundle(setup["encoders"][fmt].path, runtime=runtime) as recommender:
        with load(setup["split"][fmt], runtime=runtime) as split, load(setup["fused"][fmt], runtime=runtime) as fused:
            paths = [GraphPath(split, recommender.model, recommender), GraphPath(fused, None, recommender)]
            assert [p.fused for p in paths] == [False, True] and paths[0].k == K
            for history in _histories(15, seed=1):
                want = [item.index for item in recommender.recommend(history, K).items]
                for path in paths:
                    got = path.top(history)
                    assert got == want, (fmt, path.fused, history)
                    assert not set(got) & {int(i[1:]) for i in history}  # the history is never returned


def test_scoring_model_succeeds_with_masked_items_left_out_and_k_reduced(setup: dict[str, Any]) -> None:
    model = build_scoring_model(setup["table"], setup["bias"], k=K)
    user = np.random.default_rng(0).normal(size=(1, DIM)).astype(np.float32)
    mask = np.full((1, N), MASKED, np.float32)
    mask[0, [3, 50, 199]] = 0.0  # an allow-list of three items
    scores, indices = (np.asarray(t) for t in model([user, mask]))
    expected = setup["table"] @ user[0] + setup["bias"]
    allowed = [i for i in np.argsort(-expected) if i in (3, 50, 199)]
    assert indices[0, :3].tolist() == allowed and np.all(scores[0, 3:] < MASKED / 2)
    np.testing.assert_allclose(scores[0, :3], expected[allowed], rtol=1e-5)


def test_time_topk_succeeds_with_every_path_timed_and_checked(setup: dict[str, Any]) -> None:
    fmt = FORMATS[-1]
    runtime = RUNTIMES_FOR_FORMAT[fmt][0].value
    with Recommender.from_bundle(setup["encoders"][fmt].path, runtime=runtime) as recommender:
        with load(setup["split"][fmt], runtime=runtime) as split:
            paths = {"graph": (runtime, GraphPath(split, recommender.model, recommender))}
            rows = time_topk({runtime: recommender}, paths, _histories(6, 2), blocks=2, calls_per_block=3, warmup=1)
            assert [(r.path, r.runtime, r.n_items) for r in rows] == [("numpy", runtime, N), ("in-graph", runtime, N)]
            assert all(r.latency.count == 6 for r in rows) and rows[1].overlap == 1.0
            with pytest.raises(ConfigError, match="needs a numpy path on its runtime"):
                time_topk({"other": recommender}, paths, _histories(2, 3))


def test_scoring_model_fails_with_bad_arguments(setup: dict[str, Any], tmp_path: Path) -> None:
    table, bias = setup["table"], setup["bias"]
    with pytest.raises(ConfigError, match=r"k must be an integer in 1..200"):
        build_scoring_model(table, bias, k=201)
    with pytest.raises(ConfigError, match=r"bias has shape \(3,\), expected \(200,\)"):
        build_scoring_model(table, bias[:3], k=K)
    with pytest.raises(ConfigError, match="NaN or inf"):
        build_scoring_model(np.full((4, 2), np.inf, np.float32), None, k=1)
    encoder, _ = build_student(StudentConfig(n_items=N, shape="mean", dim=DIM + 1, max_len=MAX_LEN))
    with pytest.raises(ConfigError, match="outputs 9-dim users, the table is 8-dim"):
        build_scoring_model(table, bias, k=K, encoder=encoder)
    with pytest.raises(ConfigError, match="name 'a b'"):
        export_scoring(table, bias, k=K, out_dir=tmp_path, name="a b")
