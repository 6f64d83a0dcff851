"""The kiosk app: a FastAPI server over one shared ImageClassifier and one shared Recommender.

Recognise a product photo, keep a basket per browser session, recommend what completes it,
and report health and Prometheus metrics. Only the public ``sdk`` API is used: no TensorFlow
and no training code run in this process. Serve with uvicorn::

    import uvicorn
    from demo_app.server import create_app

    app = create_app("bundles/grocery-tflite-int8", "bundles/baskets-onnx-int8", profile="x86-kiosk-cpu")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Thread safety: the classifier and recommender are shared by every request thread (the sdk
documents both as thread-safe); the basket store and metrics take their own locks.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from demo_app.catalogue import MAPPING_PATH, ProductCatalogue, read_mapping
from demo_app.enrol_api import add_enrol_routes, answer, open_enrolment
from demo_app.enrolment import DEFAULT_ENROL_DB, MAX_PHOTOS, Enrolment, enrolled_id
from demo_app.metrics import CONTENT_TYPE, Metrics
from demo_app.sessions import SESSION_COOKIE, BasketStore
from demo_app.uploads import ApiError, read_upload, too_large
from sdk import ImageClassifier, Recommender
from sdk.enums import ColorOrder
from sdk.errors import ConfigError, InferenceError, InputError
from sdk.preprocess import decode_image
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20  # a phone photo is 2-6 MB
# Multipart framing around the file (boundaries, part headers) on top of the file itself.
_FORM_OVERHEAD = 16 * 2**10


class BasketItem(BaseModel):
    label: str


def create_app(
    classifier_bundle: str | Path,
    recommender_bundle: str | Path,
    *,
    profile: str | Path | HardwareProfile | None = None,
    catalogue_root: str | Path | None = None,
    api_key: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    mapping: str | Path = MAPPING_PATH,
    baskets: BasketStore | None = None,
    enrol_db: str | Path | None = DEFAULT_ENROL_DB,
    enrol_threshold: float | None = None,
) -> FastAPI:
    """The kiosk app, its models opened now (errors surface at start-up, not on the first request).

    Args:
        classifier_bundle: an image classification bundle whose labels are product classes.
        recommender_bundle: a basket recommendation bundle whose items are basket categories.
        profile: hardware profile for both models (id, YAML path or loaded profile).
        catalogue_root: the Grocery Store dataset folder for product images and descriptions
            (None: names only).
        api_key: when set, the write endpoints (POST/DELETE ``/api/basket`` and ``/api/enrol``) require it
            in ``X-API-Key``.
        max_upload_bytes: the largest photo accepted (larger: 413).
        mapping: the class -> basket category CSV (default: ``demo_app/mapping.csv``).
        baskets: the session basket store (default: 10,000 sessions of at most 50 items).
        enrol_db: the SQLite file of enrolled products (None: enrolment off). Enrolment needs a
            classifier bundle with an ``embedding`` output; without one ``/api/enrol`` answers 503.
        enrol_threshold: the cosine distance under which a photo is an enrolled product (None:
            the bundle's distance threshold, else ``demo_app.enrolment.DEFAULT_ENROL_DISTANCE``).

    Raises:
        ConfigError: ``max_upload_bytes`` is not a positive integer, the mapping is unreadable,
            or a bundle or profile is misconfigured (as the sdk's ``create``).
        BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError: as
            ``ImageClassifier.create`` and ``Recommender.create``.
    """
    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise ConfigError(f"max_upload_bytes is {max_upload_bytes!r}; pass a positive byte count")
    categories = read_mapping(mapping)
    classifier = ImageClassifier.from_bundle(classifier_bundle, profile=profile, top_k=3)
    with contextlib.ExitStack() as opened:  # on an error, close what was opened
        opened.callback(classifier.close)
        recommender = Recommender.from_bundle(recommender_bundle, profile=profile, k=5)
        opened.callback(recommender.close)
        enrolment, enrol_off = open_enrolment(classifier.model.bundle, enrol_db, profile, enrol_threshold)
        opened.pop_all()
    state = _State(
        classifier=classifier,
        recommender=recommender,
        products=ProductCatalogue.build(classifier.labels, categories, catalogue_root),
        baskets=baskets if baskets is not None else BasketStore(),
        metrics=Metrics(),
        max_upload_bytes=max_upload_bytes,
        enrolment=enrolment,
        enrol_off=enrol_off,
    )
    state.metrics.set_model_info("classifier", _info_labels(classifier_bundle, classifier.info))
    state.metrics.set_model_info("recommender", _info_labels(recommender_bundle, recommender.info))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        classifier.close()
        recommender.close()
        if enrolment is not None:
            enrolment.close()

    app = FastAPI(title="shelfedge kiosk", version="0.1.0", lifespan=lifespan)
    app.state.kiosk = state
    _add_handlers(app, state)
    _add_routes(app, state, _key_check(api_key))
    add_enrol_routes(
        app, enrolment=enrolment, off=enrol_off, categories=set(recommender.catalogue.ids),
        max_upload_bytes=max_upload_bytes, require_key=_key_check(api_key),
    )  # fmt: skip
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _State:
    def __init__(self, **fields: Any) -> None:
        self.classifier: ImageClassifier = fields["classifier"]
        self.recommender: Recommender = fields["recommender"]
        self.products: ProductCatalogue = fields["products"]
        self.baskets: BasketStore = fields["baskets"]
        self.metrics: Metrics = fields["metrics"]
        self.max_upload_bytes: int = fields["max_upload_bytes"]
        self.enrolment: Enrolment | None = fields["enrolment"]
        self.enrol_off: str | None = fields["enrol_off"]
        rule = self.classifier.model.bundle.manifest.unknown
        self.unknown_rule = {"rule": rule.rule, "threshold": rule.threshold} if rule is not None else None

    def product(self, label: str) -> dict[str, Any] | None:
        """A class or enrolled product's JSON, or None when there is no such product."""
        enrolled = enrolled_id(label)
        if enrolled is not None and self.enrolment is not None:
            found = self.enrolment.store.get(enrolled)
            return found.to_dict() if found else None
        product = self.products.get(label)
        return product.to_dict() if product else None


def _info_labels(bundle: str | Path, info: SessionInfo) -> dict[str, str]:
    return {
        "bundle": Path(bundle).name,
        "runtime": info.runtime.value,
        "runtime_version": info.runtime_version,
        "device": info.actual_device,
        "precision": info.precision.value,
    }


def _ran(info: SessionInfo) -> dict[str, Any]:
    return {
        "runtime": info.runtime.value,
        "runtime_version": info.runtime_version,
        "requested_device": info.requested_device.value,
        "device": info.actual_device,
        "precision": info.precision.value,
        "fell_back": info.fell_back,
        "fallback_reason": info.fallback_reason,
    }


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            raise ApiError(401, "this endpoint needs an API key: send it in the X-API-Key header")
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "the X-API-Key header does not match the server's API key")

    return check


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _add_handlers(app: FastAPI, state: _State) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message)

    @app.exception_handler(InputError)
    async def input_error(_: Request, e: InputError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(InferenceError)
    async def inference_error(_: Request, e: InferenceError) -> JSONResponse:
        return _error(503, f"the model could not answer: {e}")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        hint = "send the photo as multipart/form-data in the field 'image'; JSON bodies as the API docs (/docs) say"
        return _error(400, f"bad request ({'; '.join(problems)}); {hint}", problems=problems)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        length = request.headers.get("content-length", "")
        files = MAX_PHOTOS if request.url.path == "/api/enrol" else 1
        limit = files * (state.max_upload_bytes + _FORM_OVERHEAD)
        if request.method == "POST" and length.isdigit() and int(length) > limit:
            response: Response = _error(413, too_large(int(length), files * state.max_upload_bytes))
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or ("/static" if request.url.path.startswith("/static/") else "unmatched")
        state.metrics.observe_request(request.method, path, response.status_code, time.perf_counter() - start)
        return response


def _session(request: Request, response: Response) -> str:
    """The browser's session id, set as a cookie when it has none (or one this server never issued)."""
    session = request.cookies.get(SESSION_COOKIE)
    if not session or len(session) > 64:
        session = BasketStore.new_session_id()
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
    return session


def _add_routes(app: FastAPI, state: _State, require_key: Callable[[Request], None]) -> None:
    products = state.products

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/api/recognise", summary="Recognise the product in a photo (multipart field 'image')")
    def recognise(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        start = time.perf_counter()
        data = read_upload(image, state.max_upload_bytes)
        pixels = decode_image(data, max_bytes=state.max_upload_bytes)
        decoded = time.perf_counter()
        result = state.classifier.classify(pixels, array_color=ColorOrder.RGB)
        timings = {"decode_ms": round((decoded - start) * 1e3, 3), **result.timings.to_dict()}
        state.metrics.observe_stages("classifier", {k[:-3]: v for k, v in timings.items() if k != "total_ms"})
        top = []
        for c in result.categories:
            product = products.get(c.label)
            top.append({"label": c.label, "score": round(c.score, 6), **(product.to_dict() if product else {})})
        body = answer(state.enrolment, pixels, top, result.unknown, timings)
        timings["server_ms"] = round((time.perf_counter() - start) * 1e3, 3)
        return {**body, "unknown_rule": state.unknown_rule, "top": top, "timings": timings, "ran": _ran(result.ran)}

    @app.get("/api/basket", summary="This browser session's basket")
    def basket(request: Request, response: Response) -> dict[str, Any]:
        return _basket_body(state, state.baskets.get(_session(request, response)))

    @app.post("/api/basket", summary="Add a product (a class label) to the basket", dependencies=[Depends(require_key)])
    def add(item: BasketItem, request: Request, response: Response) -> dict[str, Any]:
        if state.product(item.label) is None:
            raise ApiError(404, f"unknown product {item.label!r}; GET /api/products lists the products")
        return _basket_body(state, state.baskets.add(_session(request, response), item.label))

    @app.delete(
        "/api/basket",
        summary="Remove one product, or empty the basket without ?label=",
        dependencies=[Depends(require_key)],
    )
    def remove(request: Request, response: Response, label: str | None = None) -> dict[str, Any]:
        return _basket_body(state, state.baskets.remove(_session(request, response), label))

    @app.get("/api/recommend", summary="Basket-completion recommendations for this session's basket")
    def recommend(request: Request, response: Response, k: int = 5) -> dict[str, Any]:
        return _recommend(state, state.baskets.get(_session(request, response)), k)

    @app.get("/api/products", summary="Every product the classifier knows")
    def list_products() -> dict[str, Any]:
        return {"products": [p.to_dict() for p in products.products()]}

    @app.get("/api/products/{label}/image", summary="A product's iconic catalogue image")
    def product_image(label: str) -> FileResponse:
        product = products.get(label)
        if product is None or product.image is None:
            raise ApiError(404, f"no catalogue image for {label!r}; the Grocery Store dataset may be absent")
        return FileResponse(product.image)

    @app.get("/api/health", summary="Liveness and what serves the models")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "classifier": {"classes": len(state.classifier.labels), "ran": _ran(state.classifier.info)},
            "recommender": {"items": len(state.recommender.catalogue.ids), "ran": _ran(state.recommender.info)},
            "products": {"count": len(products), "with_image": sum(p.image is not None for p in products.products())},
            "sessions": len(state.baskets),
        }

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


def _basket_body(state: _State, labels: list[str]) -> dict[str, Any]:
    items = []
    for label in labels:
        items.append(state.product(label) or {"label": label, "name": label, "category": None})
    return {"items": items, "count": len(items)}


def _recommend(state: _State, basket: list[str], k: int) -> dict[str, Any]:
    """Basket categories -> the recommender -> categories with their matching catalogue products.

    Raises:
        InputError: ``k`` is not a positive integer (from the recommender).
    """
    known = set(state.recommender.catalogue.ids)
    categories: list[str] = []
    unmapped: list[str] = []
    for label in basket:
        product = state.product(label)
        category = product["category"] if product else None
        if category is None or category not in known:
            unmapped.append(label)
        elif category not in categories:
            categories.append(category)
    result = state.recommender.recommend(categories, k)
    state.metrics.observe_stages("recommender", {k[:-3]: v for k, v in result.timings.to_dict().items()})
    items = [
        {
            "category": item.id,
            "name": item.name,
            "score": round(item.score, 6),
            "products": [p.to_dict() for p in state.products.in_category(item.id)],
        }
        for item in result.items
    ]
    return {
        "basket_categories": categories,
        "unmapped": unmapped,
        "items": items,
        "cold_start": result.cold_start,
        "notes": list(result.notes()),
        "timings": result.timings.to_dict(),
        "ran": _ran(result.ran),
    }
