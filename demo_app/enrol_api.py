"""The kiosk API's enrolment side: open it, answer a photo with an enrolled product, and its endpoints.

``POST /api/enrol`` (1-5 photos in the multipart field ``photos``, ``name``, optional basket
``category``), ``GET /api/enrol`` and ``DELETE /api/enrol/{id}``. The matching rule is
:func:`demo_app.enrolment.prefers_enrolled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile

from demo_app.enrolment import MAX_PHOTOS, Enrolment, prefers_enrolled
from demo_app.uploads import ApiError, read_upload
from sdk.bundle import Bundle
from sdk.embedder import embedding_output
from sdk.errors import ConfigError, InputError
from sdk.preprocess import decode_image
from sdk.profiles import HardwareProfile

UNKNOWN_MESSAGE = "I don't know this product"


def open_enrolment(
    bundle: Bundle, db: str | Path | None, profile: str | Path | HardwareProfile | None, threshold: float | None
) -> tuple[Enrolment | None, str | None]:
    """Enrolment on the classifier's bundle, or None and why it is off (no db, no embedding output).

    Raises:
        ConfigError: the database is unusable or ``threshold`` is out of range (as ``Enrolment.open``).
        BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError: as
            ``ImageEmbedder.create``.
    """
    if db is None:
        return None, "enrolment is off on this server (started without an enrolment database)"
    try:
        embedding_output(bundle)
    except ConfigError as e:
        return None, f"enrolment needs an image bundle with an embedding output: {e}"
    return Enrolment.open(bundle, db, profile=profile, threshold=threshold), None


def answer(
    enrolment: Enrolment | None,
    pixels: np.ndarray,
    top: list[dict[str, Any]],
    unknown: bool,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The recognised product: an enrolled one (nearest neighbour), the top class, or unknown.

    Adds ``embed_ms`` to ``timings`` when the embedder ran (only while something is enrolled).

    Raises:
        InputError, InferenceError: as the embedder.
    """
    body: dict[str, Any] = {"known": not unknown, "enrolled": False, "message": None}
    if enrolment is not None:
        t0 = time.perf_counter()
        match, centroid = enrolment.match(pixels)
        if match is not None:
            timings["embed_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
            body["match"] = {
                "id": match.product.id,
                "name": match.product.name,
                "distance": round(match.distance, 6),
                "threshold": enrolment.threshold,
                "threshold_source": enrolment.threshold_source,
                "centroid_distance": None if centroid is None else round(centroid, 6),
            }
        if prefers_enrolled(match, enrolment.threshold, centroid):
            assert match is not None
            product = {**match.product.to_dict(), "score": round(max(0.0, 1.0 - match.distance), 6)}
            return {**body, "known": True, "enrolled": True, "product": product}
    if unknown:
        return {**body, "product": None, "message": UNKNOWN_MESSAGE}
    return {**body, "product": top[0]}


def add_enrol_routes(
    app: FastAPI,
    *,
    enrolment: Enrolment | None,
    off: str | None,
    categories: Collection[str],
    max_upload_bytes: int,
    require_key: Callable[[Request], None],
) -> None:
    """Register the enrolment endpoints; with ``enrolment`` None they answer 503 with ``off``."""

    def service() -> Enrolment:
        if enrolment is None:
            raise ApiError(503, off or "enrolment is off on this server")
        return enrolment

    @app.post(
        "/api/enrol",
        summary="Enrol a new product: 1-5 photos (field 'photos'), 'name' and an optional basket 'category'",
        dependencies=[Depends(require_key)],
    )
    def enrol(
        photos: Annotated[list[UploadFile], File()], name: Annotated[str, Form()], category: Annotated[str, Form()] = ""
    ) -> dict[str, Any]:
        store = service()
        if not 1 <= len(photos) <= MAX_PHOTOS:
            raise ApiError(400, f"send 1 to {MAX_PHOTOS} photos in the field 'photos', got {len(photos)}")
        if not name.strip():
            raise ApiError(400, "the product name is empty; send a name, e.g. 'Oat Drink 1 l'")
        if category and category not in categories:
            raise ApiError(
                400, f"unknown basket category {category!r}; leave it empty or pick one the recommender knows"
            )
        vectors = []
        for i, photo in enumerate(photos):
            try:
                data = read_upload(photo, max_upload_bytes)
                vectors.append(store.vector(decode_image(data, max_bytes=max_upload_bytes)))
            except InputError as e:
                raise ApiError(400, f"photo {i + 1} ({photo.filename!r}): {e}") from e
            except ApiError as e:
                raise ApiError(e.status, f"photo {i + 1}: {e.message}") from e
        product = store.store.add(name, category or None, vectors)
        return {"product": product.to_dict(), "count": len(store.store)}

    @app.get("/api/enrol", summary="The enrolled products and the matching threshold")
    def enrolled() -> dict[str, Any]:
        store = service()
        return {
            "products": [p.to_dict() for p in store.store.list()],
            "threshold": store.threshold,
            "threshold_source": store.threshold_source,
        }

    @app.delete("/api/enrol/{product}", summary="Delete an enrolled product", dependencies=[Depends(require_key)])
    def unenrol(product: int) -> dict[str, Any]:
        store = service()
        if not store.store.delete(product):
            raise ApiError(404, f"no enrolled product with id {product}; GET /api/enrol lists them")
        return {"deleted": product, "count": len(store.store)}
