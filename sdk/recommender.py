"""Recommendation task API: the ImageClassifier shape, for a basket or a viewing history.

``Recommender.create(bundle, RecommenderOptions(...))``, or the short form
``Recommender.from_bundle(path, runtime=..., k=...)``; then ``recommend(["whole milk", "yogurt"])``.

The bundle's encoder turns the history into a user vector on the runtime the options choose;
scoring against the item table, exclusion, the allow-list and top-k run in numpy
(:mod:`sdk.recommender_search`: every item, or the lists of the bundle's IVF index past the
latency budget). The int8 table is dequantized once at load: on this project's x86 host a float32
matrix-vector product over 9,742 x 64 took 0.03 ms against 0.8 ms for int8 x scales per call (1M
items: 10.5 vs 48.6 ms), because numpy has no int8 GEMV and widens the whole table on every call.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from sdk.bundle import Bundle
from sdk.enums import Device, FallbackPolicy, Runtime
from sdk.errors import InputError
from sdk.interactions import Catalogue
from sdk.loading import Model
from sdk.profiles import HardwareProfile, load_profile
from sdk.rec_manifest import RecommendationSpec
from sdk.recommender_items import ItemTable, check_encoder, check_items, read_item_files
from sdk.recommender_result import Recommendations, RecommendedItem, RecommenderOptions, RecTimings
from sdk.recommender_search import Filters, Found, ItemScorer, SearchPlan, budget_of, limit_blas, plan_search
from sdk.runtime import SessionInfo
from sdk.task_options import is_positive_int, load_for, options_or_default

__all__ = ["RecTimings", "Recommendations", "RecommendedItem", "Recommender", "RecommenderOptions"]


class Recommender:
    """Recommends items for a basket or history with a recommendation bundle on any runtime.

    Create with :meth:`create` (options object) or :meth:`from_bundle` (keywords); use as a
    context manager or call :meth:`close`.

    Thread safety: safe to share across threads. ``recommend`` and ``scores`` may be called from
    any number of threads at once; each call's lookups, filters, timings and result are its own,
    the item table is read-only, and the encoder session runs each call on its own interpreter /
    infer request or on a thread-safe backend (``info.details["concurrency"]``; size the pool with
    ``RecommenderOptions(concurrency=N)``). ``close`` waits for calls in flight; later or waiting
    calls raise InferenceError.
    """

    def __init__(
        self,
        model: Model,
        items: ItemTable,
        options: RecommenderOptions | None = None,
        *,
        profile: HardwareProfile | None = None,
    ) -> None:
        """Wrap an opened encoder and its item side; prefer :meth:`create`, which reads both.

        ``profile`` gives ``search="auto"`` its budget (default: ``options.profile`` when it is a
        loaded profile; :meth:`create` loads one named by id or path).

        Raises:
            ConfigError: the model is not a recommendation bundle, or ``search="ivf"`` and the
                bundle has no IVF index (the model is closed first).
            BundleError: the item table or its index does not fit the encoder or the manifest
                (model closed).
        """
        self._options = options if options is not None else RecommenderOptions()
        if profile is None and isinstance(self._options.profile, HardwareProfile):
            profile = self._options.profile
        try:
            self._spec = check_encoder(model.bundle)
            check_items(model.bundle, self._spec, items)
            self._plan = plan_search(
                self._options.search, self._options.n_probe, n_items=items.n_items, dim=items.dim,
                index=items.index, budget=budget_of(profile), where=f"bundle {model.bundle.path}",
            )  # fmt: skip
        except BaseException:
            model.close()
            raise
        self.model = model
        self._items = items
        self._input_name = model.bundle.manifest.inputs[0].name
        self._output = model.bundle.manifest.outputs[0]
        self._index = items.catalogue.index_of()
        self._categories = items.catalogue.category_index()
        # Dequantized once (in IVF list order when indexed): a float32 GEMV is ~25x faster than int8 x scales.
        self._scorer = ItemScorer(items)
        blas = limit_blas(self._options.blas_threads)
        details = {**model.info.details, "scoring_blas_threads": blas, "search": self._plan.reason}
        self._info = dataclasses.replace(model.info, details=details)  # once: every result carries it

    @classmethod
    def create(cls, bundle: str | Path | Bundle, options: RecommenderOptions | None = None) -> Recommender:
        """Open a recommendation bundle with ``options`` (defaults: see :class:`RecommenderOptions`).

        The item files are read and checked against the manifest and the encoder before any
        runtime session is opened.

        Raises:
            ConfigError: ``options`` is not a RecommenderOptions, the bundle is not a
                recommendation bundle, or the runtime cannot open its format.
            BundleError: the bundle is missing or tampered with (a hash), or its item table or
                catalogue does not match its model or manifest (naming the files).
            ManifestError: the manifest breaks the schema or disagrees with the model file.
            ProfileError: the profile is unknown or malformed.
            BackendUnavailableError: the runtime is not installed, or the device is absent
                under a strict fallback policy.
            InferenceError: the runtime could not load the model file.
        """
        options = options_or_default(options, RecommenderOptions, "Recommender")
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        spec = check_encoder(opened)
        items = read_item_files(opened.path, spec)
        check_items(opened, spec, items)
        profile = load_profile(options.profile) if isinstance(options.profile, (str, Path)) else options.profile
        # The loaded profile goes to load() too: read once, the same for the session and the budget.
        model = load_for(opened, options if profile is None else dataclasses.replace(options, profile=profile))
        return cls(model, items, options, profile=profile)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | Bundle,
        *,
        profile: str | Path | HardwareProfile | None = None,
        runtime: Runtime | str | None = None,
        device: Device | str | None = None,
        fallback: FallbackPolicy | str | None = None,
        threads: int | None = None,
        k: int = 10,
        concurrency: int | None = None,
    ) -> Recommender:
        """The short form of :meth:`create`: the keywords are :class:`RecommenderOptions` fields.

        Raises:
            ConfigError: a keyword has a wrong type or value (naming it), or as :meth:`create`.
            BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError:
                as :meth:`create`.
        """
        options = RecommenderOptions(
            profile=profile,
            runtime=runtime,
            device=device,
            fallback=fallback,
            threads=threads,
            k=k,
            concurrency=concurrency,
        )
        return cls.create(path, options)

    @property
    def options(self) -> RecommenderOptions:
        return self._options

    @property
    def catalogue(self) -> Catalogue:
        return self._items.catalogue

    @property
    def items(self) -> ItemTable:
        """The item side as loaded (catalogue, popularity, stored table): read-only."""
        return self._items

    @property
    def spec(self) -> RecommendationSpec:
        """The bundle's item side: n_items, dim, max_len, kind, table precision."""
        return self._spec

    @property
    def search(self) -> SearchPlan:
        """The search the options resolved to for this bundle (exact or IVF, and why)."""
        return self._plan

    @property
    def info(self) -> SessionInfo:
        """What actually ran the encoder (runtime and version, device, precision, fallback), and in
        ``details`` the BLAS threads of the scoring product and the search with its reason."""
        return self._info

    def recommend(
        self,
        history: Sequence[str],
        k: int | None = None,
        *,
        exclude: Iterable[str] = (),
        allow: Iterable[str] | None = None,
        category: str | None = None,
        exclude_history: bool = True,
    ) -> Recommendations:
        """The ``k`` best items for ``history``, best first.

        Args:
            history: item ids as in the catalogue, oldest first (a basket in any order). Unknown
                ids are ignored and named in the result; beyond the model's window only the most
                recent are kept; for baskets an item repeated counts once. Empty (or nothing
                known): the most popular items (``cold_start``).
            k: how many items (default: the options' ``k``); more than the items left after the
                filters returns all of them (``k_reduced``).
            exclude: item ids never to return (e.g. out of stock).
            allow: when given, only these item ids may be returned (e.g. the in-stock list).
            category: when given, only items of this category (a MovieLens genre, a basket
                category's department: :attr:`categories` lists them).
            exclude_history: leave out the items already in the history (default True).

        The top k is found as :attr:`search` says: every eligible item scored, or the lists of
        the bundle's IVF index closest to the user (``result.search``, ``n_probe``,
        ``candidates``; ``result.approximate`` and a note when lists were left unopened).

        Raises:
            InputError: ``history``, ``exclude`` or ``allow`` is a single string or holds
                something that is not a string, ``k`` is not a positive integer, or ``category``
                is not one of the bundle's categories (the message lists them).
            InferenceError: the runtime failed, or the recommender is closed.
        """
        t0 = time.perf_counter()
        k_wanted = self._options.k if k is None else k
        if not is_positive_int(k_wanted):
            raise InputError(f"k must be a positive integer, got {k_wanted!r}; pass e.g. k=10")
        looked_up, unknown, unknown_count = self._lookup(_ids(history, "history"))
        known, window = self._window(looked_up)
        # Items dropped from the window are still in the basket: they are excluded too.
        filters, unknown_filter = self._filters(known if exclude_history else [], exclude, allow, category)
        t1 = time.perf_counter()
        user = self._encode(window) if window else None
        t2 = time.perf_counter()
        found = self._find(user, filters, k_wanted)
        t3 = time.perf_counter()
        catalogue = self._items.catalogue
        items = tuple(
            RecommendedItem(index=i, id=catalogue.ids[i], name=catalogue.names[i], score=score)
            for i, score in zip(found.indices.tolist(), found.scores.tolist(), strict=True)
        )
        return Recommendations(
            items=items,
            timings=RecTimings(
                encode_ms=(t2 - t1) * 1e3 if window else 0.0, score_ms=(t3 - t2) * 1e3, total_ms=(t3 - t0) * 1e3
            ),
            ran=self.info,
            k_requested=k_wanted,
            k_reduced=len(items) < k_wanted,
            cold_start=not window,
            history_used=len(window),
            dropped=len(known) - len(window),
            max_len=self._spec.max_len,
            unknown_ids=unknown,
            unknown_count=unknown_count,
            unknown_filter_ids=unknown_filter,
            **found.fields(),
        )

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """Every item's score for ``history``, in catalogue order, before any filter or exclusion.

        The same window rules as :meth:`recommend` (unknown ids ignored, the most recent
        ``max_len`` kept, a basket's repeats counted once); an empty or unknown history gives
        the popularity scores. For parity and evaluation: a new float32 array each call, always
        exact (every item scored, whatever :attr:`search` :meth:`recommend` uses).

        Raises:
            InputError: ``history`` is a single string or holds something that is not a string.
            InferenceError: the runtime failed, or the recommender is closed.
        """
        _, window = self._window(self._lookup(_ids(history, "history"))[0])
        if not window:
            return np.asarray(self._items.popularity, np.float32).copy()
        return self._scorer.scores(self._encode(window))

    def _window(self, known: list[int]) -> tuple[list[int], list[int]]:
        """The known items (a basket's repeats counted once) and the most recent ``max_len`` of them."""
        if self._spec.kind == "baskets":
            known = list(dict.fromkeys(reversed(known)))[::-1]  # a set: keep each item's latest place
        return known, known[max(0, len(known) - self._spec.max_len) :]

    def _lookup(self, ids: Sequence[str]) -> tuple[list[int], tuple[str, ...], int]:
        known: list[int] = []
        unknown: dict[str, None] = {}
        count = 0
        for item in ids:
            index = self._index.get(item)
            if index is None:
                unknown[item] = None
                count += 1
            else:
                known.append(index)
        return known, tuple(unknown), count

    def _filters(
        self, history: Sequence[int], exclude: Iterable[str], allow: Iterable[str] | None, category: str | None
    ) -> tuple[Filters, tuple[str, ...]]:
        """What may be returned, and the filter ids not in the catalogue.

        Raises:
            InputError: as :meth:`recommend` (``exclude`` / ``allow`` / ``category``).
        """
        excluded, unknown_excluded, _ = self._lookup(_ids(exclude, "exclude"))
        allowed: np.ndarray | None = None
        unknown_allowed: tuple[str, ...] = ()
        if allow is not None:
            allowed_list, unknown_allowed, _ = self._lookup(_ids(allow, "allow"))
            allowed = np.asarray(allowed_list, np.int64)
        if category is not None:
            members = self._categories.get(category) if isinstance(category, str) else None
            if members is None:
                known = ", ".join(list(self._categories)[:12]) or "none: this bundle's catalogue has no categories"
                more = f" (and {len(self._categories) - 12} more)" if len(self._categories) > 12 else ""
                raise InputError(f"category {category!r} is not in this bundle's catalogue; known: {known}{more}")
            allowed = members if allowed is None else np.intersect1d(allowed, members)
        filters = self._scorer.filters([*history, *excluded], allowed)
        return filters, tuple(dict.fromkeys((*unknown_excluded, *unknown_allowed)))

    def _find(self, user: np.ndarray | None, filters: Filters, k: int) -> Found:
        """The top ``k`` by the planned search; a cold start ranks by popularity, exactly."""
        if user is not None and self._plan.search == "ivf":
            assert self._plan.n_probe is not None  # plan_search sets it for ivf
            return self._scorer.ivf(user, filters, k, self._plan.n_probe)
        return self._scorer.exact(user, filters, k)

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories the ``category=`` filter accepts (empty when the bundle has none)."""
        return tuple(self._categories)

    def _encode(self, window: Sequence[int]) -> np.ndarray:
        """The user vector for a non-empty window, from the encoder on the runtime."""
        batch = np.zeros((1, self._spec.max_len), np.int32)
        # index + 1, left-padded, newest last: the encoder's input contract (sdk/rec_manifest.py).
        batch[0, self._spec.max_len - len(window) :] = np.asarray(window, np.int32) + 1
        raw = self.model.run({self._input_name: batch})[self._output.name]
        if self._output.quantization is not None:
            raw = self._output.quantization.dequantize(raw)
        return raw.reshape(-1).astype(np.float32, copy=False)

    def close(self) -> None:
        """Release the runtime session; later calls raise InferenceError. Closing twice is fine."""
        self.model.close()

    def __enter__(self) -> Recommender:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _ids(values: Iterable[str] | None, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        raise InputError(f"{what} is a single string {values!r}; pass a list of item ids, e.g. [{values!r}]")
    ids = list(values)
    bad = [v for v in ids if not isinstance(v, str)]
    if bad:
        raise InputError(f"{what} holds {bad[0]!r} ({type(bad[0]).__name__}); item ids are strings as in the catalogue")
    return ids
