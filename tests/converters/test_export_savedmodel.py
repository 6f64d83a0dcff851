"""The SavedModel bundle: every file of the tree hashed, run by the TensorFlow adapter without custom classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from converters.export.pipeline import DEFAULT_FORMATS, export, parse_formats  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.export.savedmodel import MODEL_FILE  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from sdk.bundle import Bundle  # noqa: E402
from sdk.enums import ModelFormat, Precision  # noqa: E402
from sdk.errors import BundleError, ConfigError, InferenceError  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.loading import load  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402
from sdk.recommender import Recommender, RecommenderOptions  # noqa: E402

pytestmark = pytest.mark.tensorflow

N_ITEMS, DIM, MAX_LEN = 9, 8, 5
LABELS, SIZE = ("apple", "banana", "milk", "yoghurt"), 32  # the suite's tiny CNN (tests/conftest.py)


def _encoder() -> Any:
    """A recommender encoder built on the project's custom layers (registered only by converters.models)."""
    keras.utils.set_random_seed(3)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    embedded = keras.layers.Embedding(N_ITEMS + 1, DIM, name="items")(history)
    pooled = MaskedMean(name="pool")([embedded, PaddingMask(name="keep")(history)])
    return keras.Model(history, keras.layers.Dense(DIM, name="user")(pooled), name="tiny_encoder")


@pytest.fixture(scope="module")
def rec_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    bias = rng.normal(size=N_ITEMS).astype(np.float32)
    ids = tuple(f"item{i}" for i in range(N_ITEMS))
    encoder = _encoder()
    bundles = package_recommender(
        encoder, table, bias, Catalogue(ids=ids, names=ids), np.arange(N_ITEMS, dtype=float),
        out_dir=tmp_path_factory.mktemp("sm"), name="tiny", kind="sequences", formats=["savedmodel"],
        table_precision="fp32",
    )  # fmt: skip
    return bundles[ModelFormat.SAVEDMODEL], encoder, table, bias


def test_export_savedmodel_succeeds_with_every_file_hashed_and_same_outputs(tiny_model, tmp_path: Path) -> None:
    model = tiny_model
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    bundle = export(model, out_dir=tmp_path, formats=["savedmodel"], name="tiny", labels=LABELS, preprocessing=pre)[
        ModelFormat.SAVEDMODEL
    ]
    manifest = bundle.manifest
    assert bundle.path.name == "tiny-savedmodel-fp32"
    assert (manifest.format, manifest.precision, manifest.model_file) == (
        ModelFormat.SAVEDMODEL,
        Precision.FP32,
        MODEL_FILE,
    )
    assert any(name.startswith("saved_model/variables/") for name in manifest.files)
    assert [s.name for s in manifest.provenance.steps][-1] == "copy_savedmodel"
    x = np.random.default_rng(1).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    with load(bundle, runtime="tensorflow") as session:
        out = session.run({manifest.inputs[0].name: x})[manifest.outputs[0].name]
    np.testing.assert_allclose(out, np.asarray(model(x)), atol=1e-5)
    # A changed weight file is refused like any bundle file.
    variables = next(p for p in (bundle.path / "saved_model" / "variables").iterdir() if "data" in p.name)
    variables.write_bytes(variables.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match="variables"):
        Bundle.open(bundle.path)


def test_export_formats_succeed_with_savedmodel_only_on_request() -> None:
    assert "savedmodel" not in DEFAULT_FORMATS
    assert parse_formats(["savedmodel", "tflite", "savedmodel"]) == [ModelFormat.SAVEDMODEL, ModelFormat.TFLITE]
    with pytest.raises(ConfigError, match="savedmodel"):
        parse_formats(["tensorrt"])


def test_rec_savedmodel_bundle_succeeds_on_the_tensorflow_runtime(rec_bundle) -> None:
    bundle, encoder, table, bias = rec_bundle
    history = ["item3", "item1", "item7"]
    window = np.zeros((1, MAX_LEN), np.int32)
    window[0, -3:] = [4, 2, 8]
    expected = table @ np.asarray(encoder(window))[0] + bias
    with Recommender.create(bundle, RecommenderOptions(runtime="tensorflow")) as rec:
        assert rec.info.runtime.value == "tensorflow"
        np.testing.assert_allclose(rec.scores(history), expected, rtol=1e-5, atol=1e-5)
        best = [int(i) for i in np.argsort(-expected, kind="stable") if i not in (3, 1, 7)][:3]
        assert [item.index for item in rec.recommend(history, 3).items] == best


def test_rec_savedmodel_bundle_succeeds_without_the_custom_layer_classes(
    rec_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, encoder, table, bias = rec_bundle
    ids = tuple(f"item{i}" for i in range(N_ITEMS))
    keras_bundle = package_recommender(
        encoder, table, bias, Catalogue(ids=ids, names=ids), np.ones(N_ITEMS),
        out_dir=tmp_path, name="tiny", kind="sequences", formats=["keras"],
    )[ModelFormat.KERAS]  # fmt: skip
    # As on a machine without converters/: the custom layers are not registered with Keras.
    registered = keras.saving.get_custom_objects()
    for name in [key for key in registered if key.startswith("shelfedge>")]:
        monkeypatch.delitem(registered, name)
    with pytest.raises(InferenceError):
        Recommender.create(keras_bundle, RecommenderOptions(runtime="tensorflow"))
    window = np.zeros((1, MAX_LEN), np.int32)
    window[0, -2:] = [3, 6]
    with Recommender.create(bundle, RecommenderOptions(runtime="tensorflow")) as rec:
        scores = rec.scores(["item2", "item5"])
    np.testing.assert_allclose(scores, table @ np.asarray(encoder(window))[0] + bias, rtol=1e-5, atol=1e-5)
