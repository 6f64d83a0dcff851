"""Enrolment and unknown products in the kiosk API: a tiny bundle with an embedding output and a distance rule."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")

from fastapi.testclient import TestClient  # noqa: E402

from converters.export.pipeline import export  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.models.embedding import with_embedding_output  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from converters.training.calibrate_unknown import record_unknown  # noqa: E402
from demo_app.enrolment import EnrolmentStore, Match, prefers_enrolled  # noqa: E402
from demo_app.server import create_app  # noqa: E402
from sdk import ImageEmbedder  # noqa: E402
from sdk.bundle import Bundle  # noqa: E402
from sdk.enums import ModelFormat  # noqa: E402
from sdk.errors import ConfigError, InputError  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402
from sdk.unknown_spec import UnknownRule, l2_normalise, nearest_centroid_distance  # noqa: E402

LABELS = ("Granny-Smith", "Arla-Standard-Milk", "Bravo-Apple-Juice", "Peach")
CATEGORIES = ("pip fruit", "whole milk", "fruit/vegetable juice", "yogurt")
SIZE, DIM, MAX_LEN = 32, 8, 4
KEY = "enrol-key"


def _png(seed: int, size: int = 40) -> bytes:
    """A distinct picture per seed: smooth colour gradients plus a seeded pattern (PNG: exact pixels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * x * rng.uniform(0.5, 3)), np.cos(5 * y * rng.uniform(0.5, 3)), x * y], -1)
    pixels = ((base - base.min()) / (np.ptp(base) + 1e-6) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


CLASS_PHOTOS = {label: _png(100 + i) for i, label in enumerate(LABELS)}
NEW_PRODUCT = [_png(200), _png(201)]
STRANGER = _png(300)


def _unit(bundle: Path, photos: list[bytes]) -> np.ndarray:
    with ImageEmbedder.from_bundle(bundle) as embedder:
        return np.stack([embedder.embed(p).vector for p in photos])


@pytest.fixture(scope="module")
def bundles(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image bundle with an embedding output and a distance rule whose centroids are the class photos."""
    out = tmp_path_factory.mktemp("enrol")
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    model = with_embedding_output(tiny_cnn(classes=len(LABELS)))
    image = export(model, out_dir=out, name="grocery", labels=LABELS, preprocessing=pre, formats=["onnx"])
    path = image[ModelFormat.ONNX].path
    centroids = l2_normalise(_unit(path, list(CLASS_PHOTOS.values())))
    others = _unit(path, [*NEW_PRODUCT, STRANGER])
    # Half the smallest centroid distance of the non-class photos: class photos known, the rest unknown.
    threshold = float(nearest_centroid_distance(others, centroids).min()) / 2
    assert threshold > 1e-5, "the test photos must embed apart from the class photos"
    rule = UnknownRule(rule="distance", threshold=threshold, target=0.95, centroids_file="centroids.npy")
    record_unknown(Bundle.open(path), rule, centroids)
    keras.utils.set_random_seed(0)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    embed = keras.layers.Embedding(len(CATEGORIES) + 1, DIM, name="item_embedding")
    pooled = MaskedMean(name="pool")([embed(history), PaddingMask(name="keep")(history)])
    encoder = keras.Model(history, keras.layers.Dense(DIM, name="user")(pooled))
    rng = np.random.default_rng(1)
    rec = package_recommender(
        encoder, rng.normal(size=(len(CATEGORIES), DIM)).astype(np.float32), None,
        Catalogue(ids=CATEGORIES, names=CATEGORIES), np.arange(len(CATEGORIES), 0, -1, dtype=np.float64),
        out_dir=out, name="baskets", kind="baskets", formats=[ModelFormat.ONNX],
    )[ModelFormat.ONNX]  # fmt: skip
    return path, rec.path


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "enrolled.sqlite"


@pytest.fixture()
def client(bundles: tuple[Path, Path], db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(*bundles, api_key=KEY, enrol_db=db)) as c:
        yield c


def _enrol(client: TestClient, photos: list[bytes], name: str = "Oat Drink", category: str = "", key: str = KEY):
    files = [("photos", (f"p{i}.png", p, "image/png")) for i, p in enumerate(photos)]
    return client.post("/api/enrol", files=files, data={"name": name, "category": category}, headers={"X-API-Key": key})


def _recognise(client: TestClient, photo: bytes) -> dict:
    r = client.post("/api/recognise", files={"image": ("x.png", photo, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def test_trained_class_photo_is_known_and_stranger_is_unknown_with_the_rule(client: TestClient) -> None:
    body = _recognise(client, CLASS_PHOTOS["Peach"])
    # The random tiny CNN's guess is arbitrary; the photo sits on a centroid, so it is known.
    assert body["known"] and not body["enrolled"] and body["product"] == body["top"][0]
    stranger = _recognise(client, STRANGER)
    assert stranger["known"] is False and stranger["product"] is None
    assert stranger["message"] == "I don't know this product"
    assert stranger["unknown_rule"]["rule"] == "distance" and stranger["unknown_rule"]["threshold"] > 0
    assert len(stranger["top"]) == 3  # the guesses stay available, but are not the answer


def test_enrol_list_recognise_delete(client: TestClient) -> None:
    assert _recognise(client, NEW_PRODUCT[0])["known"] is False
    r = _enrol(client, NEW_PRODUCT, name="  Oat Drink  ", category="whole milk")
    assert r.status_code == 200, r.text
    product = r.json()["product"]
    assert product["name"] == "Oat Drink" and product["photos"] == 2 and product["category"] == "whole milk"
    listed = client.get("/api/enrol").json()
    assert [p["id"] for p in listed["products"]] == [product["id"]]
    assert listed["threshold_source"] == "bundle distance rule"
    body = _recognise(client, NEW_PRODUCT[1])
    assert body["known"] and body["enrolled"] and body["product"]["name"] == "Oat Drink"
    assert body["match"]["distance"] < body["match"]["centroid_distance"] and "embed_ms" in body["timings"]
    trained = _recognise(client, CLASS_PHOTOS["Granny-Smith"])  # trained classes still win on their photos
    assert trained["known"] and not trained["enrolled"] and trained["product"] == trained["top"][0]
    added = client.post("/api/basket", json={"label": product["label"]}, headers={"X-API-Key": KEY})
    assert added.status_code == 200 and added.json()["items"][0]["name"] == "Oat Drink"
    assert "whole milk" in client.get("/api/recommend").json()["basket_categories"]
    assert client.delete(f"/api/enrol/{product['id']}", headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/api/enrol").json()["products"] == []
    assert _recognise(client, NEW_PRODUCT[1])["known"] is False
    assert client.delete(f"/api/enrol/{product['id']}", headers={"X-API-Key": KEY}).status_code == 404


def test_enrolled_products_survive_a_restart(bundles: tuple[Path, Path], db: Path) -> None:
    with TestClient(create_app(*bundles, enrol_db=db)) as first:
        assert _enrol(first, NEW_PRODUCT[:1], name="Rye Crackers").status_code == 200
    with TestClient(create_app(*bundles, enrol_db=db)) as second:
        assert [p["name"] for p in second.get("/api/enrol").json()["products"]] == ["Rye Crackers"]
        assert _recognise(second, NEW_PRODUCT[0])["product"]["name"] == "Rye Crackers"


@pytest.mark.parametrize(
    ("photos", "name", "category", "status", "words"),
    [
        ([], "Oat Drink", "", 400, "photos"),
        ([NEW_PRODUCT[0]] * 6, "Oat Drink", "", 400, "1 to 5 photos"),
        (NEW_PRODUCT, "   ", "", 400, "name is empty"),
        (NEW_PRODUCT, "x" * 81, "", 400, "80"),
        ([b"%PDF-1.4 not a photo"], "Oat Drink", "", 415, "photo 1"),
        ([NEW_PRODUCT[0], b""], "Oat Drink", "", 400, "photo 2"),
        (NEW_PRODUCT, "Oat Drink", "caviar", 400, "basket category"),
    ],
    ids=["no-photos", "six-photos", "empty-name", "long-name", "not-an-image", "empty-photo", "bad-category"],
)
def test_bad_enrol_requests_fail_with_4xx(client: TestClient, photos, name, category, status, words) -> None:
    r = _enrol(client, photos, name=name, category=category)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert client.get("/api/enrol").json()["products"] == []


def test_enrol_needs_the_api_key(client: TestClient) -> None:
    assert _enrol(client, NEW_PRODUCT, key="wrong").status_code == 401
    assert client.delete("/api/enrol/1").status_code == 401


def test_bundle_without_embedding_answers_503_and_creates_no_db(tiny_cnn, bundles, tmp_path: Path) -> None:
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    plain = export(tiny_cnn(classes=len(LABELS)), out_dir=tmp_path, name="plain", labels=LABELS, preprocessing=pre,
                   formats=["onnx"])[ModelFormat.ONNX].path  # fmt: skip
    with TestClient(create_app(plain, bundles[1], enrol_db=tmp_path / "e.sqlite")) as c:
        r = _enrol(c, NEW_PRODUCT)
        assert r.status_code == 503 and "embedding output" in r.json()["error"]
        assert c.get("/api/enrol").status_code == 503
        assert _recognise(c, STRANGER)["known"] is True  # no rule in this bundle: never unknown
    assert not (tmp_path / "e.sqlite").exists()


def test_store_refuses_another_model_and_bad_input(tmp_path: Path) -> None:
    store = EnrolmentStore.open(tmp_path / "s.sqlite", dim=3, model="a" * 64)
    with pytest.raises(InputError, match="3 values"):
        store.add("Tea", None, [np.ones(4, np.float32)])
    store.add("Tea", None, [np.array([1.0, 0.0, 0.0], np.float32)])
    match = store.nearest(np.array([0.0, 1.0, 0.0], np.float32))
    assert match is not None and match.distance == pytest.approx(1.0)
    store.close()
    with pytest.raises(ConfigError, match="another model"):
        EnrolmentStore.open(tmp_path / "s.sqlite", dim=3, model="b" * 64)


def test_prefers_enrolled_needs_threshold_and_centroid() -> None:
    from demo_app.enrolment import EnrolledProduct

    m = Match(product=EnrolledProduct(id=1, name="Tea", category=None, photos=1, created=0.0), distance=0.1)
    assert prefers_enrolled(m, 0.2, None) and prefers_enrolled(m, 0.2, 0.3)
    assert not prefers_enrolled(m, 0.05, None) and not prefers_enrolled(m, 0.2, 0.05)
    assert not prefers_enrolled(None, 0.2, None)
