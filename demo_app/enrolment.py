"""Enrol a new product without retraining: its photos' embeddings in SQLite, matched by nearest neighbour.

An enrolled product is a name (and optionally a basket category) with the unit-length
embeddings of 1-5 photos, computed by ``sdk.ImageEmbedder`` on the classifier's own bundle.
A recognised photo is then compared (cosine distance, 1 - cosine similarity) with every
enrolled photo; :func:`prefers_enrolled` decides between the nearest enrolled product and the
trained classes:

- the nearest enrolled photo must be closer than ``threshold``: the bundle's calibrated
  distance threshold when its unknown rule is ``distance`` (a photo that near a trained class
  centroid counts as that class, so as near an enrolled photo counts as that product), else
  :data:`DEFAULT_ENROL_DISTANCE` (the ``confidence`` rule records no distance scale);
- and closer than the nearest trained class centroid, when the bundle has centroids (the
  ``distance`` rule); without centroids the classifier has no distance to compare, so the
  threshold alone decides.

The store (:class:`EnrolmentStore`) is one SQLite file in WAL mode, written and read under one
lock, so one instance may be shared by every request thread. It records the embedding model
(dimension and model file hash) and refuses a file written with another model: embeddings of
different models cannot be compared.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle, sha256_file
from sdk.embedder import ImageEmbedder, embedding_output
from sdk.enums import ColorOrder
from sdk.errors import ConfigError, InputError
from sdk.profiles import HardwareProfile
from sdk.unknown_spec import RULE_DISTANCE, load_centroids, nearest_centroid_distance

DEFAULT_ENROL_DB = Path("out/demo/enrolled.sqlite")
# Cosine distance under which a photo counts as an enrolled product when the bundle's rule is
# ``confidence``. Photos of one product under one camera land well inside it with the quickstart
# CNN's embedding; tests/bench/enrolment_eval.py measures recall at this value and at the
# calibrated distance threshold.
DEFAULT_ENROL_DISTANCE = 0.15
MAX_PHOTOS = 5
MAX_NAME = 80
LABEL_PREFIX = "enrolled:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, category TEXT, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS photos (
    product INTEGER NOT NULL REFERENCES products(id) ON DELETE CASCADE, vector BLOB NOT NULL
);
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnrolledProduct:
    """One enrolled product: its id, name, optional basket category and how many photos it has."""

    id: int
    name: str
    category: str | None
    photos: int
    created: float

    @property
    def label(self) -> str:
        """The product's label in the app (``enrolled:<id>``), distinct from every class label."""
        return f"{LABEL_PREFIX}{self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "name": self.name,
            "category": self.category,
            "photos": self.photos,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "has_image": False,
            "description": None,
            "enrolled": True,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Match:
    """The enrolled product nearest to a photo and the cosine distance to its nearest photo."""

    product: EnrolledProduct
    distance: float


def enrolled_id(label: str) -> int | None:
    """The product id in an ``enrolled:<id>`` label; None for any other label."""
    rest = label[len(LABEL_PREFIX) :] if label.startswith(LABEL_PREFIX) else ""
    return int(rest) if rest.isdigit() and len(rest) < 12 else None


def check_name(name: str) -> str:
    """``name`` stripped, refused when empty or too long.

    Raises:
        InputError: the name is empty or longer than :data:`MAX_NAME` characters.
    """
    name = name.strip()
    if not name:
        raise InputError("the product name is empty; send a name, e.g. 'Oat Drink 1 l'")
    if len(name) > MAX_NAME:
        raise InputError(f"the product name has {len(name)} characters; keep it to {MAX_NAME}")
    return name


def prefers_enrolled(match: Match | None, threshold: float, centroid_distance: float | None) -> bool:
    """Whether the answer is the enrolled product of ``match`` rather than a trained class.

    See the module docstring: nearer than ``threshold`` and, when the bundle has class
    centroids, nearer than the nearest of them (``centroid_distance``).
    """
    if match is None or match.distance > threshold:
        return False
    return centroid_distance is None or match.distance < centroid_distance


class EnrolmentStore:
    """Enrolled products and their photo embeddings in one SQLite file (see the module docstring).

    Open with :meth:`open`; :meth:`close` when done. Thread-safe: one connection used under one lock.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, dim: int) -> None:
        """Wrap an opened, checked connection; use :meth:`open`."""
        self.path = path
        self.dim = dim
        self._db = connection
        self._lock = threading.Lock()
        self._vectors = np.zeros((0, dim), np.float32)
        self._owners = np.zeros(0, np.int64)
        self._products: dict[int, EnrolledProduct] = {}

    @classmethod
    def open(cls, path: str | Path, *, dim: int, model: str) -> EnrolmentStore:
        """Open (creating when absent) the store at ``path`` for embeddings of ``dim`` from ``model``.

        Args:
            path: the SQLite file; its folder is created.
            dim: the embedding dimension.
            model: an identity of the embedding model (e.g. its file hash).

        Raises:
            ConfigError: the file cannot be opened or created, is not an enrolment store, or
                holds embeddings of another model (the message says to pass another file).
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"enrolment database {path}: cannot open it ({e}); pass a writable enrol_db path") from e
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            _check_model(db, path, dim, model)
            store = cls(db, path, dim)
            store._reload()
        except sqlite3.Error as e:
            db.close()
            raise ConfigError(f"enrolment database {path} is not usable ({e}); pass another enrol_db file") from e
        except ConfigError:
            db.close()
            raise
        return store

    def add(self, name: str, category: str | None, vectors: Sequence[np.ndarray]) -> EnrolledProduct:
        """Enrol a product from 1-5 photo embeddings; returns it with its new id.

        Raises:
            InputError: the name is empty or too long, or there are not 1-5 vectors of the
                store's dimension.
        """
        name = check_name(name)
        if not 1 <= len(vectors) <= MAX_PHOTOS:
            raise InputError(f"enrol a product with 1 to {MAX_PHOTOS} photos, got {len(vectors)}")
        rows = [np.asarray(v, np.float32).reshape(-1) for v in vectors]
        if any(r.shape != (self.dim,) for r in rows):
            raise InputError(f"each embedding must have {self.dim} values, as the bundle's embedding output")
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.execute(
                    "INSERT INTO products (name, category, created) VALUES (?, ?, ?)", (name, category, time.time())
                )
                product = int(cursor.lastrowid or 0)
                cursor.executemany(
                    "INSERT INTO photos (product, vector) VALUES (?, ?)", [(product, r.tobytes()) for r in rows]
                )
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            self._reload()
            return self._products[product]

    def list(self) -> list[EnrolledProduct]:
        """Every enrolled product, oldest first."""
        with self._lock:
            return sorted(self._products.values(), key=lambda p: p.id)

    def get(self, product: int) -> EnrolledProduct | None:
        """The enrolled product with id ``product``, or None."""
        with self._lock:
            return self._products.get(product)

    def delete(self, product: int) -> bool:
        """Delete an enrolled product and its photos; False when there was none with that id."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM products WHERE id = ?", (product,)).rowcount
            self._reload()
            return deleted > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._products)

    def nearest(self, vector: np.ndarray) -> Match | None:
        """The enrolled product whose nearest photo is nearest to the unit ``vector`` (None: none enrolled)."""
        with self._lock:
            if not len(self._owners):
                return None
            similarity = self._vectors @ np.asarray(vector, np.float32).reshape(-1)
            best = int(np.argmax(similarity))
            return Match(product=self._products[int(self._owners[best])], distance=float(1.0 - similarity[best]))

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _reload(self) -> None:
        """Refresh the in-memory copy (products, photo matrix) from the database; called under the lock."""
        counts: dict[int, int] = {}
        vectors, owners = [], []
        for product, blob in self._db.execute("SELECT product, vector FROM photos ORDER BY rowid"):
            vectors.append(np.frombuffer(blob, np.float32))
            owners.append(product)
            counts[product] = counts.get(product, 0) + 1
        self._products = {
            pid: EnrolledProduct(id=pid, name=name, category=category, photos=counts.get(pid, 0), created=created)
            for pid, name, category, created in self._db.execute("SELECT id, name, category, created FROM products")
        }
        self._vectors = np.stack(vectors) if vectors else np.zeros((0, self.dim), np.float32)
        self._owners = np.asarray(owners, np.int64)


def _check_model(db: sqlite3.Connection, path: Path, dim: int, model: str) -> None:
    """Record the embedding model in a new store, or check that an existing store holds its embeddings.

    Raises:
        ConfigError: the store was written with another model or dimension.
    """
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if not meta:
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("dim", str(dim)), ("model", model)])
        return
    if meta.get("dim") != str(dim) or meta.get("model") != model:
        raise ConfigError(
            f"enrolment database {path} holds embeddings of another model (dimension {meta.get('dim')}, model "
            f"{str(meta.get('model'))[:12]}) than this bundle's (dimension {dim}, model {model[:12]}); "
            "pass another enrol_db file, or delete this one and enrol the products again"
        )


class Enrolment:
    """The app's enrolment: an ImageEmbedder on the classifier's bundle, the store and the matching rule.

    Open with :meth:`open`; :meth:`close` when done. Thread-safe (the embedder and store are).

    Attributes:
        store: the enrolled products.
        threshold: the cosine distance under which a photo may be an enrolled product.
        threshold_source: where ``threshold`` came from (``bundle distance rule``, ``default`` or ``option``).
    """

    def __init__(
        self, embedder: ImageEmbedder, store: EnrolmentStore, threshold: tuple[float, str], centroids: np.ndarray | None
    ) -> None:
        """Wrap opened parts; use :meth:`open`."""
        self.embedder = embedder
        self.store = store
        self.threshold, self.threshold_source = threshold
        self._centroids = centroids

    @classmethod
    def open(
        cls,
        bundle: Bundle,
        db: str | Path,
        *,
        profile: str | Path | HardwareProfile | None = None,
        threshold: float | None = None,
    ) -> Enrolment:
        """Open enrolment on a classification bundle with an embedding output.

        Raises:
            ConfigError: the bundle has no embedding output (the message says how to export one),
                ``threshold`` is not a distance in (0, 2], or the database is unusable (see
                :meth:`EnrolmentStore.open`).
            BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError: as
                ``ImageEmbedder.create``.
        """
        embedding_output(bundle)
        rule = bundle.manifest.unknown
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 2.0:
                raise ConfigError(f"enrol_threshold is {threshold!r}; pass a cosine distance in (0, 2], e.g. 0.15")
            chosen = (float(threshold), "option")
        elif rule is not None and rule.rule == RULE_DISTANCE:
            chosen = (rule.threshold, "bundle distance rule")
        else:
            chosen = (DEFAULT_ENROL_DISTANCE, "default")
        embedder = ImageEmbedder.from_bundle(bundle, profile=profile)
        try:
            if embedder.dimension <= 0:
                raise ConfigError(f"bundle {bundle.path}: its embedding output has no fixed size; re-export it")
            centroids = None
            if rule is not None and rule.rule == RULE_DISTANCE:
                centroids = load_centroids(bundle.path, rule, len(bundle.labels), embedder.dimension)
            store = EnrolmentStore.open(db, dim=embedder.dimension, model=sha256_file(bundle.model_path))
        except BaseException:
            embedder.close()
            raise
        return cls(embedder, store, chosen, centroids)

    def vector(self, pixels: np.ndarray) -> np.ndarray:
        """The unit embedding of an RGB HxWx3 uint8 photo.

        Raises:
            InputError: the array is not an image; InferenceError: the runtime failed.
        """
        return self.embedder.embed(pixels, array_color=ColorOrder.RGB).vector

    def match(self, pixels: np.ndarray) -> tuple[Match | None, float | None]:
        """The nearest enrolled product (None: none enrolled) and the nearest trained centroid's distance.

        Does not run the embedder when nothing is enrolled.

        Raises:
            InputError: the array is not an image; InferenceError: the runtime failed.
        """
        if not len(self.store):
            return None, None
        return self.match_vector(self.vector(pixels))

    def match_vector(self, vector: np.ndarray) -> tuple[Match | None, float | None]:
        """As :meth:`match`, for a unit embedding already computed."""
        centroid = None
        if self._centroids is not None:
            centroid = float(nearest_centroid_distance(np.asarray(vector, np.float32)[None, :], self._centroids)[0])
        return self.store.nearest(vector), centroid

    def close(self) -> None:
        """Close the embedder and the store."""
        try:
            self.embedder.close()
        finally:
            self.store.close()
