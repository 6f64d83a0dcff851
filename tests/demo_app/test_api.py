"""The kiosk API in-process (FastAPI's TestClient): every endpoint, bad uploads, sessions, keys, metrics."""

from __future__ import annotations

import io
import re
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
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from demo_app.catalogue import MAPPING_PATH, ProductCatalogue, read_mapping  # noqa: E402
from demo_app.server import create_app  # noqa: E402
from demo_app.sessions import BasketStore  # noqa: E402
from sdk.enums import ModelFormat  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402

LABELS = ("Granny-Smith", "Arla-Standard-Milk", "Bravo-Apple-Juice", "Peach")
CATEGORIES = ("pip fruit", "whole milk", "fruit/vegetable juice", "yogurt", "rolls/buns", "soda")
SIZE, DIM, MAX_LEN = 32, 8, 4
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def bundles(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("kiosk")
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    image = export(
        tiny_cnn(classes=len(LABELS)), out_dir=out, name="grocery", labels=LABELS, preprocessing=pre, formats=["onnx"]
    )[ModelFormat.ONNX]
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
    return image.path, rec.path


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-product slice of the Grocery Store dataset's layout (classes.csv + iconic folder)."""
    root = tmp_path_factory.mktemp("grocery")
    folder = root / "iconic-images-and-descriptions" / "Fruit" / "Apple" / "Granny-Smith"
    folder.mkdir(parents=True)
    (folder / "Granny-Smith_Iconic.jpg").write_bytes(_jpeg())
    (folder / "Granny-Smith_Description.txt").write_text("A green apple with a clear acidity.")
    rel = "/iconic-images-and-descriptions/Fruit/Apple/Granny-Smith/Granny-Smith"
    (root / "classes.csv").write_text(
        "Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
        "Iconic Image Path (str),Product Description Path (str)\n"
        f"Granny-Smith,1,Apple,0,{rel}_Iconic.jpg,{rel}_Description.txt\n"
    )
    return root


@pytest.fixture(scope="module")
def client(bundles: tuple[Path, Path], catalogue_root: Path) -> Iterator[TestClient]:
    app = create_app(*bundles, catalogue_root=catalogue_root, max_upload_bytes=200_000)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def keyed(bundles: tuple[Path, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(*bundles, api_key=KEY)) as c:
        yield c


def _jpeg(size: int = 48) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _upload(client: TestClient, data: bytes, field: str = "image", name: str = "photo.jpg", ctype: str = "image/jpeg"):
    return client.post("/api/recognise", files={field: (name, data, ctype)})


def test_recognise_succeeds_with_top3_timings_and_runtime(client: TestClient) -> None:
    r = _upload(client, _jpeg())
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["top"]) == 3 and body["product"] == body["top"][0]
    assert {t["label"] for t in body["top"]} <= set(LABELS)
    scores = [t["score"] for t in body["top"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert {"decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "server_ms"} <= set(body["timings"])
    assert body["ran"]["runtime"] == "onnxruntime" and body["ran"]["device"]


@pytest.mark.parametrize(
    ("data", "field", "status", "words"),
    [
        (b"%PDF-1.4 not a photo", "image", 415, "not a JPEG"),
        (b"", "image", 400, "empty"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "image", 400, "image data"),  # a JPEG signature, damaged body
        (b"\xff\xd8\xff" + b"\x00" * 300_000, "image", 413, "limit of 200,000"),
        (None, "photo", 400, "field 'image'"),
    ],
    ids=["not-an-image", "empty", "damaged-jpeg", "too-large", "wrong-field"],
)
def test_recognise_fails_with_a_clear_4xx_for_bad_uploads(
    client: TestClient, data: bytes | None, field: str, status: int, words: str
) -> None:
    r = _upload(client, _jpeg() if data is None else data, field=field)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_recognise_fails_with_413_from_the_content_length_before_parsing(client: TestClient) -> None:
    r = client.post("/api/recognise", content=b"x" * 400_000, headers={"content-type": "multipart/form-data; b=x"})
    assert r.status_code == 413 and "over this server's limit" in r.json()["error"]


def test_basket_succeeds_per_session(bundles: tuple[Path, Path]) -> None:
    app = create_app(*bundles)
    with TestClient(app) as alice, TestClient(app) as bob:
        assert alice.post("/api/basket", json={"label": "Granny-Smith"}).status_code == 200
        alice.post("/api/basket", json={"label": "Arla-Standard-Milk"})
        assert [i["label"] for i in alice.get("/api/basket").json()["items"]] == ["Granny-Smith", "Arla-Standard-Milk"]
        assert bob.get("/api/basket").json() == {"items": [], "count": 0}
        bob.post("/api/basket", json={"label": "Peach"})
        assert alice.delete("/api/basket", params={"label": "Granny-Smith"}).json()["count"] == 1
        assert bob.get("/api/basket").json()["count"] == 1
        assert alice.delete("/api/basket").json()["count"] == 0


def test_basket_fails_with_unknown_product_missing_item_or_bad_body(client: TestClient) -> None:
    r = client.post("/api/basket", json={"label": "Dragonfruit"})
    assert r.status_code == 404 and "GET /api/products" in r.json()["error"]
    r = client.delete("/api/basket", params={"label": "Dragonfruit"})
    assert r.status_code == 400 and "not in the basket" in r.json()["error"]
    r = client.post("/api/basket", json={"name": "x"})
    assert r.status_code == 400 and "label" in r.json()["error"]


def test_basket_store_fails_with_a_full_basket_and_drops_the_oldest_session() -> None:
    store = BasketStore(max_sessions=2, max_items=1)
    store.add("a", "x")
    with pytest.raises(Exception, match="holds 1 items"):
        store.add("a", "y")
    store.add("b", "x")
    store.add("c", "x")
    assert len(store) == 2 and store.get("a") == [] and store.get("c") == ["x"]


def test_recommend_succeeds_with_categories_from_the_basket_and_matching_products(client: TestClient) -> None:
    cold = client.get("/api/recommend").json()
    assert cold["cold_start"] and cold["items"][0]["category"] == "pip fruit"  # the most popular
    client.post("/api/basket", json={"label": "Granny-Smith"})
    client.post("/api/basket", json={"label": "Peach"})  # no basket category: reported, not sent
    body = client.get("/api/recommend", params={"k": 3}).json()
    assert body["basket_categories"] == ["pip fruit"] and body["unmapped"] == ["Peach"]
    assert not body["cold_start"] and len(body["items"]) == 3
    assert "pip fruit" not in [i["category"] for i in body["items"]]
    by_category = {i["category"]: [p["label"] for p in i["products"]] for i in body["items"]}
    matches = {"whole milk": ["Arla-Standard-Milk"], "fruit/vegetable juice": ["Bravo-Apple-Juice"]}
    for category, labels in by_category.items():
        assert labels == matches.get(category, [])
    assert body["ran"]["runtime"] == "onnxruntime" and body["timings"]["total_ms"] > 0
    assert client.get("/api/recommend", params={"k": 0}).status_code == 400
    client.delete("/api/basket")


def test_products_succeed_with_catalogue_image_and_description(client: TestClient) -> None:
    products = {p["label"]: p for p in client.get("/api/products").json()["products"]}
    assert set(products) == set(LABELS)
    assert products["Granny-Smith"]["has_image"] and "green apple" in products["Granny-Smith"]["description"]
    assert products["Peach"]["category"] is None and not products["Peach"]["has_image"]
    r = client.get("/api/products/Granny-Smith/image")
    assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
    assert client.get("/api/products/Peach/image").status_code == 404


def test_health_page_and_docs_succeed(client: TestClient) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["classifier"]["classes"] == len(LABELS)
    assert health["recommender"]["items"] == len(CATEGORIES) and health["products"]["with_image"] == 1
    page = client.get("/")
    assert page.status_code == 200 and "<script" in page.text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/recognise", "/api/basket", "/api/recommend", "/api/health", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_api_key_succeeds_and_fails_on_write_endpoints(keyed: TestClient) -> None:
    r = keyed.post("/api/basket", json={"label": "Granny-Smith"})
    assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
    r = keyed.delete("/api/basket", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "does not match" in r.json()["error"]
    assert keyed.post("/api/basket", json={"label": "Granny-Smith"}, headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.get("/api/basket").json()["count"] == 1  # reads need no key
    assert keyed.get("/api/health").status_code == 200


# name{label="value",...} number: every sample line of the text format (no timestamps are written).
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+$')


def test_metrics_succeed_in_the_prometheus_text_format(client: TestClient) -> None:
    _upload(client, _jpeg())
    client.get("/api/health")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        assert _SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    assert samples['shelfedge_demo_requests_total{method="POST",route="/api/recognise",status="200"}'] >= 1
    assert samples['shelfedge_demo_request_duration_seconds_count{route="/api/health"}'] >= 1
    assert any(k.startswith('shelfedge_demo_model_info{model="classifier"') for k in samples)
    stage = 'shelfedge_demo_model_stage_seconds_count{model="classifier",stage="inference"}'
    assert samples[stage] >= 1


def test_mapping_succeeds_with_every_grocery_class_and_known_categories() -> None:
    mapping = read_mapping(MAPPING_PATH)
    assert len(mapping) == 81
    assert mapping["Granny-Smith"] == "pip fruit" and mapping["Arla-Standard-Milk"] == "whole milk"
    assert mapping["Bravo-Apple-Juice"] == "fruit/vegetable juice" and mapping["Arla-Natural-Yoghurt"] == "yogurt"
    departments = Path(__file__).parents[2] / "sdk" / "datasets" / "groceries_departments.csv"
    known = {line.split(",")[0] for line in departments.read_text().splitlines() if not line.startswith("#")}
    assert {c for c in mapping.values() if c} <= known
    assert None in mapping.values()  # some classes have no sensible category


def test_catalogue_succeeds_with_names_only_without_the_dataset(tmp_path: Path) -> None:
    products = ProductCatalogue.build(["Red-Bell-Pepper"], {"Red-Bell-Pepper": "other vegetables"}, tmp_path)
    product = products.get("Red-Bell-Pepper")
    assert product is not None and product.name == "Red Bell Pepper" and product.image is None
    assert products.in_category("other vegetables") == (product,)
