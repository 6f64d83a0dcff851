"""The IVF index: exact when every list is opened, maximum inner product (bias included), seeded, round-trips."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.errors import BundleError, ConfigError, InputError
from sdk.recommender_index import IvfIndex, build_ivf

N, DIM = 200, 8


@pytest.fixture(scope="module")
def items() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, DIM))
    table = (centres[rng.integers(10, size=N)] + 0.3 * rng.normal(size=(N, DIM))).astype(np.float32)
    return table, rng.normal(0, 0.5, N).astype(np.float32)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def test_ivf_succeeds_with_all_lists_opened_equal_to_brute_force(items) -> None:
    table, bias = items
    index = build_ivf(table, 14, 0, 5, bias=bias)
    rng = np.random.default_rng(0)
    for user in rng.normal(size=(20, DIM)).astype(np.float32):
        candidates = index.search(user, index.n_lists)
        assert sorted(candidates.tolist()) == list(range(N))
        exact = _top(table @ user + bias, 10)
        found = candidates[_top(table[candidates] @ user + bias[candidates], 10)]
        assert found.tolist() == exact.tolist()


def test_ivf_succeeds_with_spans_of_the_grouped_table_scoring_like_a_gather(items) -> None:
    table, bias = items
    index = build_ivf(table, 14, 0, 5, bias=bias)
    grouped, grouped_bias = index.grouped(table), index.grouped(bias)
    user = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    spans = index.spans(user, 5)
    assert [index.offsets[i] for i in index.lists(user, 5)] == [a for a, _ in spans]
    scores = np.concatenate([grouped[a:b] @ user + grouped_bias[a:b] for a, b in spans])
    candidates = index.search(user, 5)
    np.testing.assert_allclose(scores, table[candidates] @ user + bias[candidates], rtol=1e-6)
    with pytest.raises(ConfigError, match="3 rows for an index of 200 items"):
        index.grouped(bias[:3])


def test_ivf_succeeds_with_lists_that_partition_the_items(items) -> None:
    table, bias = items
    index = build_ivf(table, 14, 0, 5, bias=bias)
    sizes = index.list_sizes()
    assert sizes.sum() == N and len(sizes) == 14 and index.offsets[0] == 0
    assert sorted(index.order.tolist()) == list(range(N))
    user = np.ones(DIM, np.float32)
    one = index.search(user, 1)
    assert len(one) in sizes.tolist() and len(set(one.tolist())) == len(one)  # one whole list, no repeats
    assert len(index.search(user, 3)) >= len(one)


def test_ivf_succeeds_with_max_inner_product_not_nearest_neighbour() -> None:
    # One item per list: the list probed first must be the item with the best score u.x + b, which
    # here is neither the item closest to u nor the one with the best u.x (the bias decides).
    table = np.array([[1.0, 0.0], [3.0, 0.5], [2.9, 0.6], [-1.0, 0.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.5, 9.0], np.float32)
    index = build_ivf(table, 4, 0, 3, bias=bias)
    user = np.array([1.0, 0.0], np.float32)
    assert index.search(user, 1).tolist() == [3]  # 8.0 beats 3.4 (item 2) and 3.0 (item 1)
    no_bias = build_ivf(table, 4, 0, 3)
    assert no_bias.search(user, 1).tolist() == [1]  # without the bias: the largest u.x, not the nearest (item 0)


def test_ivf_succeeds_with_the_same_index_for_the_same_seed(items) -> None:
    table, bias = items
    first, again = build_ivf(table, 14, 7, 5, bias=bias), build_ivf(table, 14, 7, 5, bias=bias)
    assert np.array_equal(first.centroids, again.centroids) and np.array_equal(first.order, again.order)
    other = build_ivf(table, 14, 8, 5, bias=bias)
    assert not np.array_equal(first.centroids, other.centroids)
    sampled = build_ivf(table, 14, 7, 5, bias=bias, sample=50)
    assert sorted(sampled.order.tolist()) == list(range(N))  # trained on 50, every item assigned


def test_ivf_succeeds_with_save_and_load(items, tmp_path) -> None:
    table, bias = items
    index = build_ivf(table, 14, 0, 5, bias=bias)
    loaded = IvfIndex.load(index.save(tmp_path / "sub" / "items.ivf.npz"), n_items=N, dim=DIM)
    assert np.array_equal(loaded.centroids, index.centroids) and np.array_equal(loaded.offsets, index.offsets)
    assert (loaded.seed, loaded.iters, loaded.max_norm) == (0, 5, index.max_norm)
    user = np.arange(DIM, dtype=np.float32)
    assert loaded.search(user, 2).tolist() == index.search(user, 2).tolist()
    assert not loaded.order.flags.writeable


def test_ivf_load_fails_with_a_file_that_does_not_fit(items, tmp_path) -> None:
    table, bias = items
    path = build_ivf(table, 14, 0, 5, bias=bias).save(tmp_path / "ivf.npz")
    with pytest.raises(BundleError, match=f"holds {N} items, the item table 201"):
        IvfIndex.load(path, n_items=N + 1)
    with pytest.raises(BundleError, match="for 8-dim vectors, the item table is 16-dim"):
        IvfIndex.load(path, dim=16)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["order"] = arrays["order"].copy()
    arrays["order"][0] = arrays["order"][1]  # an item twice, another never
    np.savez(tmp_path / "dup.npz", **arrays)
    with pytest.raises(BundleError, match="every item exactly once; rebuild"):
        IvfIndex.load(tmp_path / "dup.npz")
    np.savez(tmp_path / "other.npz", table=table)
    with pytest.raises(BundleError, match="not an IVF index"):
        IvfIndex.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot read the IVF index"):
        IvfIndex.load(tmp_path / "junk.npz")


def test_ivf_fails_with_bad_arguments(items) -> None:
    table, bias = items
    with pytest.raises(ConfigError, match="n_lists must be an integer 1..200"):
        build_ivf(table, 201)
    with pytest.raises(ConfigError, match="finite float"):
        build_ivf(np.full((4, 2), np.nan, np.float32), 2)
    with pytest.raises(ConfigError, match="bias must be 200 finite numbers"):
        build_ivf(table, 4, bias=bias[:10])
    with pytest.raises(ConfigError, match="iters must be an integer >= 1"):
        build_ivf(table, 4, 0, 0)
    with pytest.raises(ConfigError, match="sample must be an integer >= n_lists"):
        build_ivf(table, 4, sample=3)
    index = build_ivf(table, 4)
    with pytest.raises(InputError, match=r"finite \(8,\) vector"):
        index.search(np.ones(3, np.float32), 1)
    with pytest.raises(InputError, match=r"n_probe must be an integer in 1..4"):
        index.search(np.ones(DIM, np.float32), 5)
    with pytest.raises(InputError, match="n_probe"):
        index.search(np.ones(DIM, np.float32), True)
