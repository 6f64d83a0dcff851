"""Recommendation reference and parity on a tiny encoder over generated baskets.

One encoder (item embedding -> masked mean -> Dense), saved once, is packaged from the same file as
a SavedModel reference bundle and as a LiteRT / OpenVINO / ONNX bundle (fp32 table), plus one ONNX
bundle whose item table is shuffled: the same lineage, a wrong model. A tiny untrained SASRec packaged
as a teacher is the "different model" reference.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cli import main  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask, SasRecConfig, build_sasrec  # noqa: E402
from converters.training.rec_teacher_bundle import package_teacher  # noqa: E402
from sdk.bundle import Bundle  # noqa: E402
from sdk.enums import ModelFormat, Precision, Runtime  # noqa: E402
from sdk.errors import BundleError, ParityError  # noqa: E402
from sdk.interaction_splits import EvalCases  # noqa: E402
from sdk.qa.rec_parity import run_rec_parity  # noqa: E402
from sdk.qa.rec_parity_metrics import agreement_metrics, effective_precision  # noqa: E402
from sdk.qa.rec_reference import RecReference, is_rec_reference, load_rec_reference  # noqa: E402
from sdk.qa.rec_reference_make import make_rec_reference  # noqa: E402
from sdk.qa.rec_reference_spec import RecDatasetSpec, select_cases  # noqa: E402
from sdk.rec_datasets import RecDataset, open_rec_dataset  # noqa: E402
from sdk.recommender import Recommender, RecommenderOptions  # noqa: E402

pytestmark = pytest.mark.tensorflow

DIM, MAX_LEN, CASES = 16, 6, 120
BACKENDS = {ModelFormat.TFLITE: "ai_edge_litert", ModelFormat.OPENVINO: "openvino", ModelFormat.ONNX: "onnxruntime"}


@dataclasses.dataclass(frozen=True)
class Setup:
    dataset: RecDataset
    spec: RecDatasetSpec
    reference: RecReference
    bundles: dict[ModelFormat, Bundle]
    shuffled: Bundle
    tmp: Path


def _encoder(n_items: int) -> Any:
    keras.utils.set_random_seed(1)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    init = keras.initializers.RandomNormal(stddev=1.0)
    embedded = keras.layers.Embedding(n_items + 1, DIM, embeddings_initializer=init, name="items")(history)
    pooled = MaskedMean(name="pool")([embedded, PaddingMask(name="keep")(history)])
    return keras.Model(history, keras.layers.Dense(DIM, name="user")(pooled), name="tiny_rec")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tmp = tmp_path_factory.mktemp("rec-parity")
    dataset = open_rec_dataset("synthetic-baskets")
    n = dataset.split.n_items
    encoder_file = tmp / "encoder.keras"
    _encoder(n).save(encoder_file)
    rng = np.random.default_rng(2)
    table = rng.normal(size=(n, DIM)).astype(np.float32)
    bias = rng.normal(scale=0.01, size=n).astype(np.float32)
    catalogue, popularity = dataset.interactions.catalogue, np.arange(n, dtype=float)
    formats = ["savedmodel", *(f.value for f, module in BACKENDS.items() if importlib.util.find_spec(module))]
    common: dict[str, Any] = {"out_dir": tmp / "bundles", "kind": "baskets", "table_precision": "fp32"}
    bundles = package_recommender(
        encoder_file, table, bias, catalogue, popularity, name="tiny", formats=formats, **common
    )
    wrong = table[rng.permutation(n)]  # the same encoder file (lineage), another model
    shuffled = package_recommender(
        encoder_file, wrong, bias, catalogue, popularity, name="shuffled", formats=["onnx"], **common
    )[ModelFormat.ONNX]
    spec = RecDatasetSpec.of(dataset, "synthetic-baskets", split="test", limit=CASES, seed=0)
    reference = make_rec_reference(bundles[ModelFormat.SAVEDMODEL], dataset, spec, tmp / "ref", log=lambda line: None)
    return Setup(dataset, spec, reference, bundles, shuffled, tmp)


def _cases(setup: Setup) -> EvalCases:
    return select_cases(setup.dataset, "test", CASES)


def test_rec_reference_succeeds_saved_and_reloaded(setup: Setup) -> None:
    ref = load_rec_reference(setup.reference.path)
    assert is_rec_reference(ref.path) and ref.num_cases == CASES and ref.dataset == setup.spec
    assert (ref.info["runtime"], ref.info["model_kind"]) == ("tensorflow", "bundle")
    assert ref.info["device"] and ref.info["note"]
    assert ref.scores.shape == (CASES, setup.dataset.split.n_items) and ref.top_k.shape == (CASES, 10)
    cases = _cases(setup)
    ids = setup.dataset.interactions.catalogue.ids
    with Recommender.create(setup.bundles[ModelFormat.SAVEDMODEL], RecommenderOptions(runtime="tensorflow")) as rec:
        for i in (0, 57, CASES - 1):
            history = [ids[j] for j in cases.histories[i]]
            np.testing.assert_allclose(ref.scores[i], rec.scores(history), rtol=1e-6)
            top = [item.index for item in rec.recommend(history, 10).items]
            assert ref.top_k[i].tolist() == top  # history excluded, ties by the lower index
    ref.check_cases(cases, "same cases")  # no error
    opened, again = ref.dataset.open()
    assert len(again) == CASES and opened.split.n_items == ref.dataset.n_items


def test_rec_parity_succeeds_for_fp32_bundles_on_every_installed_runtime(setup: Setup) -> None:
    bundles = [b.path for f, b in setup.bundles.items()]
    results = run_rec_parity(bundles, setup.reference, _cases(setup), resamples=200, log=lambda line: None)
    assert {Runtime.TENSORFLOW} <= {r.runtime for r in results}
    expected_rows = sum(len(_runtimes_of(b)) for b in setup.bundles.values())
    assert len(results) == expected_rows
    for r in results:
        assert r.same_model and r.judged and r.passed, (r.bundle, r.runtime, r.status, r.metrics)
        assert r.metrics["overlap_at_10"] == pytest.approx(1.0)
        assert r.metrics["heldout_ndcg_ratio"] == pytest.approx(1.0)
        assert {c.metric for c in r.verdict.checks} >= {"max_abs_diff", "overlap_at_10", "ndcg_at_10_vs_reference"}
        assert r.precision == "fp32" and "lineage root" in r.note


def _runtimes_of(bundle: Bundle) -> list[str]:
    modules = {"tflite": ["ai_edge_litert"], "openvino": ["openvino"], "onnx": ["onnxruntime", "openvino"]}
    return [m for m in modules.get(bundle.manifest.format.value, ["tensorflow"]) if importlib.util.find_spec(m)]


def test_rec_parity_fails_task_tier_with_a_shuffled_table(setup: Setup) -> None:
    pytest.importorskip("onnxruntime")
    [result, *_] = run_rec_parity(
        [setup.shuffled.path], setup.reference, _cases(setup), runtimes=[Runtime.ONNXRUNTIME], log=lambda line: None
    )
    assert result.same_model and result.judged and not result.passed
    assert {"overlap_at_10", "ndcg_at_10_vs_reference"} <= set(result.verdict.failed)
    assert result.metrics["overlap_at_10"] < 0.5


def test_rec_reference_fails_with_a_tampered_npz(setup: Setup, tmp_path: Path) -> None:
    copy = tmp_path / "ref"
    shutil.copytree(setup.reference.path, copy)
    npz = copy / "reference.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_rec_reference(copy)
    document = json.loads((copy / "reference.json").read_text())
    document["dataset"]["surprise"] = 1
    (copy / "reference.json").write_text(json.dumps(document))
    with pytest.raises(Exception, match="surprise"):
        load_rec_reference(copy)


def test_rec_parity_fails_with_other_histories(setup: Setup) -> None:
    cases = _cases(setup)
    swapped = list(cases.histories)
    swapped[3] = swapped[3][:-1] if len(swapped[3]) > 1 else np.asarray([0], np.int32)
    other = dataclasses.replace(cases, histories=tuple(swapped))
    with pytest.raises(ParityError, match="case 3"):
        run_rec_parity([setup.bundles[ModelFormat.SAVEDMODEL].path], setup.reference, other, log=lambda line: None)
    with pytest.raises(ParityError, match="cases, the reference has"):
        setup.reference.check_cases(cases.head(CASES - 1), "fewer cases")


def test_rec_parity_reports_a_teacher_reference_as_not_judged(setup: Setup) -> None:
    n = setup.dataset.split.n_items
    teacher = build_sasrec(SasRecConfig(n_items=n, kind="baskets", max_len=8, dim=8, blocks=1))
    bundle = package_teacher(teacher, setup.dataset, setup.tmp / "teacher")[ModelFormat.SAVEDMODEL]
    identity = {"model_kind": "teacher", "model_sha256": "0" * 64}
    reference = make_rec_reference(
        bundle, setup.dataset, setup.spec, setup.tmp / "teacher-ref", model=identity, log=lambda line: None
    )
    [result] = run_rec_parity(
        [setup.bundles[ModelFormat.SAVEDMODEL].path], reference, _cases(setup), resamples=200, log=lambda line: None
    )
    assert not result.same_model and not result.judged and result.passed
    assert result.status == "not judged: different model" and result.verdict.checks == ()
    assert "windows not compared" in result.note
    assert 0.0 <= result.metrics["overlap_at_10"] < 1.0 and result.metrics["heldout_ndcg_ratio"] > 0


def test_agreement_metrics_succeed_with_known_lists() -> None:
    ref = np.arange(10)[None, :]
    same = agreement_metrics(ref, ref)
    assert same["overlap_at_10"] == 1.0 and same["ndcg_at_10_vs_reference"] == pytest.approx(1.0)
    reversed_ = agreement_metrics(ref[:, ::-1], ref)
    assert reversed_["overlap_at_10"] == 1.0 and 0.5 < reversed_["ndcg_at_10_vs_reference"] < 1.0
    half = agreement_metrics(np.array([[0, 1, 2, 3, 4, 20, 21, 22, 23, 24]]), ref)
    assert half["overlap_at_10"] == 0.5 and half["ndcg_at_10_vs_reference"] > reversed_["ndcg_at_10_vs_reference"] / 2
    assert agreement_metrics(np.arange(10, 20)[None, :], ref)["ndcg_at_10_vs_reference"] == 0.0
    assert effective_precision(Precision.FP32, Precision.INT8) is Precision.INT8


def test_cli_reference_and_parity_succeed_and_fail_by_exit_code(setup: Setup, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    model = str(setup.bundles[ModelFormat.SAVEDMODEL].path)
    argv = ["reference", "--model", model, "--dataset", "synthetic-baskets", "--limit", "40", "--out", str(ref)]
    assert main(argv) == 0
    assert load_rec_reference(ref).num_cases == 40
    good = ["parity", "--bundle", model, "--reference", str(ref), "--resamples", "100", "--out", str(tmp_path / "p")]
    assert main(good) == 0
    payload = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert payload["passed"] and payload["results"][0]["status"] == "PASS"
    assert "overlap@10" in (tmp_path / "p" / "parity.md").read_text()
    if importlib.util.find_spec("onnxruntime"):
        bad = ["parity", "--bundle", str(setup.shuffled.path), "--reference", str(ref), "--runtime", "onnxruntime"]
        assert main([*bad, "--resamples", "100"]) == 1


def test_cli_reference_succeeds_with_the_teacher_file(setup: Setup, tmp_path: Path) -> None:
    n = setup.dataset.split.n_items
    teacher = tmp_path / "teacher.keras"
    build_sasrec(SasRecConfig(n_items=n, kind="baskets", max_len=8, dim=8, blocks=1)).save(teacher)
    ref, kept = tmp_path / "ref", tmp_path / "bundles"
    argv = ["reference", "--model", str(teacher), "--dataset", "synthetic-baskets", "--limit", "30"]
    assert main([*argv, "--out", str(ref), "--bundle-out", str(kept)]) == 0
    reference = load_rec_reference(ref)
    assert reference.info["model_kind"] == "teacher" and reference.info["model"] == str(teacher)
    assert (kept / "synthetic-baskets-teacher-savedmodel-fp32" / "manifest.json").is_file()
    model = str(setup.bundles[ModelFormat.SAVEDMODEL].path)
    out = tmp_path / "p"
    assert main(["parity", "--bundle", model, "--reference", str(ref), "--resamples", "100", "--out", str(out)]) == 0
    [row] = json.loads((out / "parity.json").read_text())["results"]
    assert row["status"] == "not judged: different model" and not row["same_model"]


def test_cli_matrix_succeeds_with_recommendation_bundles_and_fails_with_a_wrong_one(
    setup: Setup, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxruntime")
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(setup.bundles[ModelFormat.ONNX].path, root / "tiny-onnx-fp32")
    shutil.copytree(
        setup.bundles[ModelFormat.SAVEDMODEL].path, root / "tiny-savedmodel-fp32"
    )  # the reference: left out
    argv = ["matrix", "--bundles", str(root), "--profiles", "onnxruntime-cpu,android-arm64", "--reference",
            str(setup.reference.path), "--quick", "--out", str(tmp_path / "m"), "--json"]  # fmt: skip
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    rows = {(Path(r["bundle"]).name, r["profile"]): r for r in document["rows"]}
    assert set(rows) == {("tiny-onnx-fp32", "onnxruntime-cpu"), ("tiny-onnx-fp32", "android-arm64")}
    ran = rows[("tiny-onnx-fp32", "onnxruntime-cpu")]
    assert ran["status"] == "ran" and ran["passed"] and ran["bench"]["latency"]["p99_ms"] > 0
    assert rows[("tiny-onnx-fp32", "android-arm64")]["status"] == "skipped"  # LiteRT cannot read ONNX
    assert "| tiny-onnx-fp32" in (tmp_path / "m" / "matrix.md").read_text()
    shutil.copytree(setup.shuffled.path, root / "shuffled-onnx-fp32")
    assert main([*argv[:-1]]) == 1
    assert "FAIL shuffled-onnx-fp32 x onnxruntime-cpu" in capsys.readouterr().out
