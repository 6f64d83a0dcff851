"""Recommender with an IVF index: exact when every list is opened, planted clusters found with few lists.

The encoder is item embedding -> masked mean -> Dense(identity) with the embeddings tied to the
item table, so a history's user vector is the mean of its items' rows. The 2,000 x 16 table is
40 planted clusters of 50 items (unit directions x 3, noise 0.1): a history drawn from one
cluster scores that cluster's items far above the rest, and k-means puts them in one list.
One ONNX bundle with a 40-list index is packaged per module; the other bundles are copies.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("onnxruntime")

from cli import main  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from sdk.bundle import Bundle, write_bundle  # noqa: E402
from sdk.errors import BundleError, ConfigError, ManifestError  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.profiles import load_profile  # noqa: E402
from sdk.recommender import Recommender, RecommenderOptions  # noqa: E402
from sdk.recommender_index import build_ivf  # noqa: E402
from sdk.recommender_items import read_item_files  # noqa: E402

N, DIM, MAX_LEN, CLUSTERS, LISTS = 2000, 16, 4, 40, 40
SIZE = N // CLUSTERS


@dataclasses.dataclass(frozen=True)
class Setup:
    table: np.ndarray
    bundle: Bundle  # with the index
    plain: Path  # the same bundle without it, as bundles were before indexes


def _ids(rows: Any) -> list[str]:
    return [f"i{int(r):04d}" for r in rows]


def _cluster(c: int) -> list[str]:
    return _ids(range(c * SIZE, c * SIZE + 3))  # three items of cluster c


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    rng = np.random.default_rng(11)
    directions = rng.normal(size=(CLUSTERS, DIM))
    centres = 3.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    table = (np.repeat(centres, SIZE, axis=0) + 0.1 * rng.normal(size=(N, DIM))).astype(np.float32)
    bias = rng.normal(0.0, 0.05, N).astype(np.float32)
    keras.utils.set_random_seed(0)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    embed = keras.layers.Embedding(N + 1, DIM, name="item_embedding")
    dense = keras.layers.Dense(DIM, name="user")
    encoder = keras.Model(history, dense(MaskedMean(name="pool")([embed(history), PaddingMask()(history)])))
    embed.set_weights([np.vstack([np.zeros((1, DIM)), table]).astype(np.float32)])
    dense.set_weights([np.eye(DIM, dtype=np.float32), np.zeros(DIM, np.float32)])
    categories = tuple((f"c{r // SIZE}",) for r in range(N))
    catalogue = Catalogue(ids=tuple(_ids(range(N))), names=tuple(_ids(range(N))), categories=categories)
    out = tmp_path_factory.mktemp("ivf")
    [bundle] = package_recommender(
        encoder, table, bias, catalogue, np.arange(N, 0, -1.0), out_dir=out, name="planted-ivf", kind="sequences",
        formats=["onnx"], ivf_lists=LISTS,
    ).values()  # fmt: skip
    plain = Path(shutil.copytree(bundle.path, out / "plain"))
    _drop_index(plain)
    return Setup(table=table, bundle=bundle, plain=plain)


def _drop_index(path: Path) -> None:
    manifest = Bundle.open(path, verify=False).manifest
    assert manifest.recommendation is not None and manifest.recommendation.index is not None
    (path / manifest.recommendation.index.file).unlink()
    files = {k: v for k, v in manifest.files.items() if k != manifest.recommendation.index.file}
    spec = dataclasses.replace(manifest.recommendation, index=None)
    write_bundle(path, manifest.with_changes(recommendation=spec, files=files))


def _open(path: Path, **options: Any) -> Recommender:
    return Recommender.create(path, RecommenderOptions(runtime="onnxruntime", **options))


def test_ivf_succeeds_with_every_list_opened_equal_to_exact(setup: Setup) -> None:
    histories = [_cluster(3), _cluster(17) + _cluster(30)[:1], ["i0007", "i1500"]]
    with _open(setup.bundle.path, search="ivf", n_probe=LISTS) as ivf, _open(setup.plain, search="exact") as exact:
        assert ivf.search.search == "ivf" and ivf.search.n_lists == LISTS and exact.items.index is None
        for history in histories:
            for filters in ({}, {"exclude": _ids(range(3 * SIZE, 4 * SIZE, 2))}, {"allow": _ids(range(0, N, 3))}):
                want, got = exact.recommend(history, 20, **filters), ivf.recommend(history, 20, **filters)
                assert got.ids == want.ids, (history, filters)
                np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], rtol=1e-5)
                assert not got.approximate and not any("approximate" in n for n in got.notes())
            np.testing.assert_allclose(ivf.scores(history), exact.scores(history), rtol=1e-6)  # scores() stays exact


def test_ivf_succeeds_with_planted_clusters_found_in_a_few_lists(setup: Setup) -> None:
    with _open(setup.bundle.path, search="ivf", n_probe=2) as ivf, _open(setup.bundle.path, search="exact") as exact:
        for c in (0, 5, 13, 22, 39):
            got, want = ivf.recommend(_cluster(c), 10), exact.recommend(_cluster(c), 10)
            assert got.ids == want.ids and all(i.index // SIZE == c for i in got.items), c
            assert got.search == "ivf" and got.n_probe == 2 and got.candidates <= N // 4 and got.approximate
            assert want.search == "exact" and want.candidates == N and not want.approximate
        assert any("approximate top-k: IVF index, 2 of 40 lists" in n for n in got.notes())
        assert got.to_dict()["search"] == {
            "kind": "ivf", "n_probe": 2, "n_lists": LISTS, "candidates": got.candidates, "widened": False,
            "approximate": True,
        }  # fmt: skip


def test_ivf_succeeds_with_exclusion_allow_list_and_category_honoured(setup: Setup) -> None:
    history = _cluster(8)
    with _open(setup.bundle.path, search="ivf", n_probe=2) as ivf, _open(setup.plain, search="exact") as exact:
        best = exact.recommend(history, 3).ids
        excluded = ivf.recommend(history, 10, exclude=list(best))
        assert not set(best) & set(excluded.ids) and not set(history) & set(excluded.ids)
        assert excluded.ids == exact.recommend(history, 10, exclude=list(best)).ids
        # A short allow-list (5 items x GATHER_COST 8 <= the ~100 items of two lists) is scored directly: exact.
        few = _ids(range(0, N, 400))
        direct = ivf.recommend(history, 3, allow=few)
        assert direct.search == "exact" and direct.candidates == 5 and not direct.approximate
        assert direct.ids == exact.recommend(history, 3, allow=few).ids
        # A long one filters the opened lists: only allowed items come back.
        many = _ids(range(1, N, 2))
        filtered = ivf.recommend(history, 10, allow=many)
        assert filtered.search == "ivf" and set(filtered.ids) <= set(many) and len(filtered.items) == 10
        # Another cluster's category: none of it in the user's lists; the probe widens (or, once the
        # lists hold 8x the category's 50 items, the category is scored directly) until it is found.
        other = ivf.recommend(history, 10, category="c30")
        assert other.ids == exact.recommend(history, 10, category="c30").ids
        assert all(i.index // SIZE == 30 for i in other.items) and (other.widened or other.search == "exact")


def test_ivf_succeeds_with_a_wider_probe_when_k_exceeds_the_candidates(setup: Setup) -> None:
    with _open(setup.bundle.path, search="ivf", n_probe=1) as ivf:
        small = ivf.recommend(_cluster(4), 5)
        assert small.n_probe == 1 and not small.widened
        large = ivf.recommend(_cluster(4), 300)
        assert len(large.items) == 300 and large.widened and large.candidates >= 300 + 3
        assert large.n_probe in (8, 16) and large.n_probe & (large.n_probe - 1) == 0  # doubled from 1
        assert any(f"widened to {large.n_probe} of 40 lists" in note for note in large.notes())
        everything = ivf.recommend(_cluster(4), N)
        assert everything.n_probe == LISTS and len(everything.items) == N - 3 and not everything.approximate


def test_ivf_fails_with_a_bundle_without_an_index(setup: Setup) -> None:
    with pytest.raises(ConfigError, match=r"search='ivf' needs an IVF index .* ivf_lists=N"):
        _open(setup.plain, search="ivf")
    with _open(setup.plain) as old:  # auto, the default: an old bundle loads and searches exactly
        assert old.search.search == "exact" and "no IVF index" in old.info.details["search"]
        assert old.recommend(_cluster(2), 5).search == "exact"
    manifest = json.loads((setup.plain / "manifest.json").read_text())
    assert "index" not in manifest["recommendation"] and "items.ivf.npz" not in manifest["files"]
    with pytest.raises(ConfigError, match="RecommenderOptions.search is 'hnsw'"):
        RecommenderOptions(search="hnsw")
    with pytest.raises(ConfigError, match="RecommenderOptions.n_probe is 0"):
        RecommenderOptions(n_probe=0)


def test_ivf_succeeds_with_auto_choosing_by_the_profile_budget(setup: Setup) -> None:
    with _open(setup.bundle.path) as default:
        assert default.search.search == "exact" and "<= 10 ms (the default budget" in default.search.reason
    base = load_profile("onnxruntime-cpu")
    tight = dataclasses.replace(base, budgets=dataclasses.replace(base.budgets, p99_recommend_ms=0.001))
    with _open(setup.bundle.path, profile=tight, n_probe=4) as auto:
        assert auto.search.search == "ivf" and auto.search.n_probe == 4
        assert "auto: ivf, 2,000 items x 16 dims" in auto.info.details["search"]
        assert "profile onnxruntime-cpu's p99_recommend_ms" in auto.search.reason
        assert auto.recommend(_cluster(6), 10).search == "ivf"


def _rewrite_index(path: Path, table: np.ndarray, n_lists: int) -> None:
    build_ivf(table, n_lists, 0, 10).save(path / "items.ivf.npz")
    write_bundle(path, Bundle.open(path, verify=False).manifest)  # re-hash: the check under test is the content's


def test_ivf_fails_with_an_index_that_does_not_match_its_table(setup: Setup, tmp_path: Path) -> None:
    path = Path(shutil.copytree(setup.bundle.path, tmp_path / "small"))
    _rewrite_index(path, setup.table[:-1], LISTS)
    with pytest.raises(BundleError, match=r"items\.ivf\.npz: the index holds 1999 items, the item table 2000"):
        _open(path)
    _rewrite_index(path, setup.table[:, :8], LISTS)
    with pytest.raises(BundleError, match=r"items\.ivf\.npz: the index is for 8-dim vectors, the item table is 16"):
        _open(path)
    _rewrite_index(path, setup.table, 20)
    with pytest.raises(BundleError, match=r"items\.ivf\.npz holds 2,000 items x 16 dims in 20 lists .* in 40 lists"):
        _open(path)
    tampered = Path(shutil.copytree(setup.bundle.path, tmp_path / "tampered"))
    build_ivf(setup.table, LISTS, 1, 10).save(tampered / "items.ivf.npz")  # not re-hashed
    with pytest.raises(BundleError, match=r"'items\.ivf\.npz' has sha256"):
        _open(tampered)


def test_ivf_fails_with_an_unknown_key_in_the_manifest_index(setup: Setup, tmp_path: Path) -> None:
    path = Path(shutil.copytree(setup.bundle.path, tmp_path / "odd"))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["recommendation"]["index"] == {
        "kind": "ivf", "file": "items.ivf.npz", "n_lists": LISTS, "seed": 0, "iters": 10, "sample": N,
    }  # fmt: skip
    manifest["recommendation"]["index"]["metric"] = "cosine"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"recommendation\.index: unknown key\(s\) 'metric'"):
        Bundle.open(path)
    spec = setup.bundle.manifest.recommendation
    assert spec is not None and read_item_files(setup.bundle.path, spec).index is not None


def test_recommend_cli_succeeds_with_the_search_flags(setup: Setup, capsys) -> None:
    argv = ["recommend", str(setup.bundle.path), "--history", ",".join(_cluster(9)), "-k", "3", "--runtime",
            "onnxruntime"]  # fmt: skip
    assert main([*argv, "--search", "ivf", "--n-probe", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["search"]["kind"] == "ivf" and payload["search"]["n_probe"] == 2
    assert all(int(item["id"][1:]) // SIZE == 9 for item in payload["items"])
    assert main([*argv, "--search", "ivf", "--n-probe", "2"]) == 0
    assert "search ivf, 2 of 40 lists" in capsys.readouterr().out
