"""Recommendation bundles: an int32-input encoder through every export step, with its item files.

A tiny random encoder (item embedding -> masked mean -> Dense) is packaged once per session; the
bundle's manifest, hashes and item files are read back, and every wrong argument is refused before
anything is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")

from converters.export.rec_bundle import add_items_from, package_recommender  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from sdk.bundle import Bundle, sha256_file, write_bundle  # noqa: E402
from sdk.enums import ModelFormat, OutputKind, Precision, Task  # noqa: E402
from sdk.errors import ConfigError, ManifestError  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.manifest import MANIFEST_NAME, Manifest  # noqa: E402
from sdk.recommender import Recommender  # noqa: E402

N, DIM, MAX_LEN = 9, 6, 5
CATALOGUE = Catalogue(ids=tuple(f"item{i}" for i in range(N)), names=tuple(f"Item {i}" for i in range(N)))
POPULARITY = np.arange(N, 0, -1).astype(np.float64)


def build_encoder(*, dtype: str = "int32", dim: int = DIM) -> Any:
    keras.utils.set_random_seed(1)
    history = keras.Input((MAX_LEN,), dtype=dtype, name="history")
    embedded = keras.layers.Embedding(N + 1, dim, name="item_embedding")(history)
    pooled = MaskedMean(name="pool")([embedded, PaddingMask(name="keep")(history)])
    return keras.Model(history, keras.layers.Dense(dim, name="user")(pooled), name="tiny_encoder")


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(N, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def bundles(table: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[ModelFormat, Bundle]:
    lines: list[str] = []
    result = package_recommender(
        build_encoder(), table, np.linspace(0, 1, N), CATALOGUE, POPULARITY,
        out_dir=tmp_path_factory.mktemp("rec-bundle"), name="tiny-rec", kind="sequences",
        formats=("onnx", "keras"), progress=lines.append,
    )  # fmt: skip
    assert any(line.startswith("onnx: ") for line in lines)
    return result


def test_rec_bundle_succeeds_with_manifest_hashes_and_item_files(bundles, table: np.ndarray) -> None:
    bundle = bundles[ModelFormat.ONNX]
    m = bundle.manifest
    assert bundle.path.name == "tiny-rec-onnx-fp32"
    assert (m.task, m.output_kind, m.preprocessing, m.labels_file) == (
        Task.RECOMMENDATION,
        OutputKind.EMBEDDING,
        None,
        None,
    )
    assert (m.inputs[0].dtype, m.inputs[0].shape, m.outputs[0].shape) == ("int32", (-1, MAX_LEN), (-1, DIM))
    spec = m.recommendation
    assert (spec.n_items, spec.dim, spec.max_len, spec.kind, spec.table_precision, spec.has_bias) == (
        N,
        DIM,
        MAX_LEN,
        "sequences",
        Precision.INT8,
        True,
    )
    for name in ("items.npz", "items.json", "model.onnx"):
        assert m.files[name] == sha256_file(bundle.path / name)
    assert Manifest.load(bundle.path / MANIFEST_NAME) == m
    with np.load(bundle.path / "items.npz") as data:
        stored, scales, bias = data["table"], data["scales"], data["bias"]
    assert stored.dtype == np.int8 and np.abs(stored).max(axis=1).tolist() == [127] * N
    np.testing.assert_allclose(stored * scales[:, None], table, atol=float(scales.max()) / 2 + 1e-7)
    np.testing.assert_allclose(bias, np.linspace(0, 1, N), rtol=1e-6)
    items = json.loads((bundle.path / "items.json").read_text(encoding="utf-8"))
    assert items == {"ids": list(CATALOGUE.ids), "names": list(CATALOGUE.names), "popularity": list(range(N, 0, -1))}
    assert bundles[ModelFormat.KERAS].manifest.recommendation == spec


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", np.float16), ("fp32", np.float32)])
def test_rec_bundle_succeeds_with_float_tables(table: np.ndarray, tmp_path: Path, precision: str, dtype) -> None:
    bundle = package_recommender(
        build_encoder(), table, None, CATALOGUE, POPULARITY, out_dir=tmp_path, name="f", kind="baskets",
        formats=("onnx",), table_precision=precision,
    )[ModelFormat.ONNX]  # fmt: skip
    with np.load(bundle.path / "items.npz") as data:
        assert data["table"].dtype == dtype and data["scales"].size == 0 and data["bias"].size == 0
    assert bundle.manifest.recommendation.table_precision.value == precision
    with Recommender.from_bundle(bundle, runtime="onnxruntime") as rec:
        assert len(rec.recommend(["item0"], k=3).items) == 3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"encoder": "float32"}, "one \\(batch, max_len\\) int32 input"),
        ({"table": np.zeros((N, DIM + 1), np.float32)}, "one \\(batch, 7\\) user vector"),
        ({"catalogue": Catalogue(ids=("a",), names=("a",))}, "catalogue has 1 items but the item table has 9"),
        (
            {"table": np.zeros((0, DIM), np.float32)},
            "item_table must be a float \\(n_items, dim\\) array, got shape \\(0, 6\\)",
        ),
        ({"popularity": np.ones(N - 1)}, "popularity: expected 9 finite numbers"),
        ({"bias": np.ones((N, 1))}, "item bias: expected 9 finite numbers"),
        ({"table_precision": "int4"}, "table_precision 'int4' is not one of"),
        ({"table_precision": "int16x8"}, "is not one of: int8, fp16, fp32"),
        ({"kind": "sessions"}, "kind 'sessions' is not one of: baskets, sequences"),
        ({"max_len": MAX_LEN + 1}, "max_len is 6 but .* takes 5 items"),
        ({"name": "no spaces"}, "name 'no spaces' must start"),
        ({"formats": ("coreml",)}, "choose from"),
        ({"ivf_lists": 0}, r"ivf_lists must be an integer in 1..9 \(the catalogue size\), got 0"),
        ({"ivf_lists": 10}, r"ivf_lists must be an integer in 1..9 .* got 10"),
    ],
)
def test_rec_bundle_fails_with_wrong_arguments_before_writing(
    table: np.ndarray, tmp_path: Path, change: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {
        "table": table,
        "bias": None,
        "catalogue": CATALOGUE,
        "popularity": POPULARITY,
        "kind": "baskets",
        "formats": ("onnx",),
        "name": "bad",
    }
    arguments.update(change)
    encoder = build_encoder(dtype=arguments.pop("encoder", "int32"))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        package_recommender(
            encoder, arguments.pop("table"), arguments.pop("bias"), arguments.pop("catalogue"),
            arguments.pop("popularity"), out_dir=out, **arguments,
        )  # fmt: skip
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def test_rec_bundle_succeeds_adding_items_to_a_bundle_of_the_same_encoder(bundles, tmp_path: Path) -> None:
    source = bundles[ModelFormat.ONNX]
    path = Path(shutil.copytree(source.path, tmp_path / "encoder-only"))
    for name in ("items.npz", "items.json"):
        (path / name).unlink()
    files = {k: v for k, v in source.manifest.files.items() if not k.startswith("items.")}
    bare = write_bundle(path, source.manifest.with_changes(recommendation=None, files=files))
    with pytest.raises(ConfigError, match="without item files"):
        Recommender.from_bundle(bare, runtime="onnxruntime")
    with pytest.raises(ConfigError, match="not a recommendation bundle with item files"):
        add_items_from(source, bare)
    added = add_items_from(bare, source)
    assert added.manifest.recommendation == source.manifest.recommendation
    with Recommender.from_bundle(added, runtime="onnxruntime") as rec, Recommender.from_bundle(source) as ref:
        assert rec.recommend(["item1", "item2"], k=4).ids == ref.recommend(["item1", "item2"], k=4).ids


def _manifest_dict(bundle: Bundle) -> dict[str, Any]:
    return json.loads((bundle.path / MANIFEST_NAME).read_text(encoding="utf-8"))


def test_rec_bundle_fails_with_a_malformed_recommendation_section(bundles) -> None:
    data = _manifest_dict(bundles[ModelFormat.ONNX])
    with pytest.raises(ManifestError, match=r"recommendation: unknown key\(s\) 'colour'"):
        Manifest.from_dict({**data, "recommendation": {**data["recommendation"], "colour": "red"}})
    with pytest.raises(ManifestError, match="dim must be a positive integer"):
        Manifest.from_dict({**data, "recommendation": {**data["recommendation"], "dim": 0}})
    with pytest.raises(ManifestError, match="'items.json' is not listed in 'files'"):
        files = {k: v for k, v in data["files"].items() if k != "items.json"}
        Manifest.from_dict({**data, "files": files})
    with pytest.raises(ManifestError, match="image_classification bundle cannot have a 'recommendation' section"):
        Manifest.from_dict({**data, "task": "image_classification"})


def test_rec_bundle_succeeds_with_an_ivf_index_carried_by_add_items_from(bundles, table, tmp_path: Path) -> None:
    lines: list[str] = []
    indexed = package_recommender(
        build_encoder(), table, np.linspace(0, 1, N), CATALOGUE, POPULARITY, out_dir=tmp_path / "ivf", name="ivf",
        kind="sequences", formats=("onnx",), ivf_lists=3, progress=lines.append,
    )[ModelFormat.ONNX]  # fmt: skip
    assert any("3-list IVF index" in line for line in lines)
    spec = indexed.manifest.recommendation
    assert spec.index is not None and (spec.index.n_lists, spec.index.seed, spec.index.iters) == (3, 0, 10)
    assert spec.files == ("items.npz", "items.json", "items.ivf.npz")
    assert indexed.manifest.files["items.ivf.npz"] == sha256_file(indexed.path / "items.ivf.npz")
    with Recommender.from_bundle(indexed, runtime="onnxruntime") as rec:
        assert rec.items.index is not None and rec.items.index.n_lists == 3
    # A plain encoder copy gets the index with the items; given plain items again, the old index goes.
    target = Path(shutil.copytree(bundles[ModelFormat.ONNX].path, tmp_path / "copy"))
    carried = add_items_from(Bundle.open(target), indexed)
    assert carried.manifest.recommendation == spec and (target / "items.ivf.npz").is_file()
    plain = add_items_from(carried, bundles[ModelFormat.ONNX])
    assert plain.manifest.recommendation.index is None and "items.ivf.npz" not in plain.manifest.files
    assert not (target / "items.ivf.npz").exists()
    data = _manifest_dict(indexed)
    with pytest.raises(ManifestError, match="'items.ivf.npz' is not listed in 'files'"):
        Manifest.from_dict({**data, "files": {k: v for k, v in data["files"].items() if k != "items.ivf.npz"}})
    with pytest.raises(ManifestError, match="index n_lists 30 exceeds the 9 items"):
        index = {**data["recommendation"]["index"], "n_lists": 30, "sample": None}
        Manifest.from_dict({**data, "recommendation": {**data["recommendation"], "index": index}})
