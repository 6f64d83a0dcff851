"""The parity harness end to end: save a reference, compare in another process, catch a broken bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main
from sdk.bundle import Bundle, write_bundle
from sdk.enums import ModelFormat

SIZE = 32


@pytest.fixture(scope="module")
def setup(shelf_data: Path, shelf_bundles: dict) -> dict:
    return {"data": shelf_data, "bundles": shelf_bundles}


def _parity(args: list[str]) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "parity", *args, "--json"], capture_output=True, text=True, timeout=300
    )
    return done.returncode, json.loads(done.stdout)


def test_parity_succeeds_with_saved_reference_compared_in_another_process(setup, tmp_path: Path, capsys) -> None:
    bundles, data = setup["bundles"], setup["data"]
    ref = tmp_path / "ref"
    assert (
        main(
            [
                "reference",
                "--model",
                str(bundles[ModelFormat.KERAS].path),
                "--data",
                str(data),
                "--out",
                str(ref),
                "--json",
            ]
        )
        == 0
    )
    saved = json.loads(capsys.readouterr().out)
    assert saved["samples"] == 18 and saved["info"]["runtime"] == "tensorflow"
    args = [
        "--bundle",
        str(bundles[ModelFormat.TFLITE].path),
        "--bundle",
        str(bundles[ModelFormat.ONNX].path),
        "--reference",
        str(ref),
        "--data",
        str(data),
    ]
    code, report = _parity(args)
    assert code == 0 and report["passed"] is True
    runs = {(Path(r["bundle"]).name, r["runtime"]) for r in report["results"]}
    assert ("tiny-onnx-fp32", "openvino") in runs and ("tiny-tflite-fp32", "litert") in runs
    for result in report["results"]:
        tiers = {c["tier"] for c in result["verdict"]["checks"]}
        assert tiers == {"tensor", "output", "task"}
        assert result["metrics"]["max_abs_diff"] <= 1e-4
    # The same comparison in-process, from the Keras bundle directly: the same verdicts.
    code2, direct = _parity([*args[:4], "--reference", str(bundles[ModelFormat.KERAS].path), "--data", str(data)])
    assert code2 == 0
    assert [r["verdict"]["passed"] for r in direct["results"]] == [r["verdict"]["passed"] for r in report["results"]]


def test_parity_fails_with_wrong_mean_in_the_manifest(setup, tmp_path: Path) -> None:
    bundles, data = setup["bundles"], setup["data"]
    broken = tmp_path / "broken"
    shutil.copytree(bundles[ModelFormat.TFLITE].path, broken)
    manifest = Bundle.open(broken).manifest
    wrong = manifest.with_changes(
        preprocessing=manifest.preprocessing.__class__(
            **{**manifest.preprocessing.__dict__, "mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0)}
        )
    )
    write_bundle(broken, wrong)
    code, report = _parity(
        ["--bundle", str(broken), "--reference", str(bundles[ModelFormat.KERAS].path), "--data", str(data)]
    )
    assert code == 1 and report["passed"] is False
    failed = report["results"][0]["verdict"]["failed"]
    assert "max_abs_diff" in failed


def _copy_with_wrong_mean(source: Bundle, target: Path) -> Path:
    shutil.copytree(source.path, target)
    manifest = Bundle.open(target).manifest
    write_bundle(
        target,
        manifest.with_changes(
            preprocessing=manifest.preprocessing.__class__(
                **{**manifest.preprocessing.__dict__, "mean": (0.0, 0.0, 0.0), "std": (255.0, 255.0, 255.0)}
            )
        ),
    )
    return target


def test_parity_fails_with_wrong_mean_localised_at_the_input_on_onnx(setup, tmp_path: Path) -> None:
    bundles, data = setup["bundles"], setup["data"]
    broken = _copy_with_wrong_mean(bundles[ModelFormat.ONNX], tmp_path / "broken-onnx")
    out = tmp_path / "report"
    code, report = _parity(
        [
            "--bundle",
            str(broken),
            "--reference",
            str(bundles[ModelFormat.KERAS].path),
            "--data",
            str(data),
            "--out",
            str(out),
        ]
    )
    assert code == 1
    for result in report["results"]:  # onnxruntime and openvino both read ONNX
        where = result["localisation"]
        assert "max_abs_diff" in result["verdict"]["failed"]
        assert where["first_diverging"]["layer"] == "<input>" and where["first_diverging"]["rel_error"] > 0.1
        assert "preprocessing" in where["summary"] and where["images"] == 4
    assert "Where failures start" in (out / "parity.md").read_text()


def test_parity_fails_with_perturbed_weights_localised_at_the_first_changed_layer(setup, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from sdk.bundle import sha256_file
    from sdk.manifest import MANIFEST_NAME

    bundles, data = setup["bundles"], setup["data"]
    original = tmp_path / "tiny-onnx-fp32"
    shutil.copytree(bundles[ModelFormat.ONNX].path, original)
    broken = tmp_path / "tiny-onnx-perturbed"
    shutil.copytree(original, broken)
    bundle = Bundle.open(broken)
    model = onnx.load(str(bundle.model_path))
    dense = next(n for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    weights = {t.name: t for t in model.graph.initializer}
    name = next(i for i in dense.input if i in weights)
    value = numpy_helper.to_array(weights[name]).copy()
    value[:, 0] += 0.5  # one output class pushed around: the convolution before it is untouched
    weights[name].CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(bundle.model_path))
    m = bundle.manifest
    parent = f"{original.name}@sha256:{sha256_file(original / MANIFEST_NAME)}"
    write_bundle(
        broken, m.with_changes(provenance=m.provenance.__class__(**{**m.provenance.__dict__, "parent": parent}))
    )

    code, report = _parity(
        [
            "--bundle",
            str(broken),
            "--reference",
            str(bundles[ModelFormat.KERAS].path),
            "--data",
            str(data),
            "--runtime",
            "onnxruntime",
        ]
    )
    assert code == 1
    where = report["results"][0]["localisation"]
    assert "its fp32 parent tiny-onnx-fp32" in where["compared_with"]
    first = where["first_diverging"]
    assert first["op_type"] in ("MatMul", "Gemm") and first["layer"] == dense.output[0]
    # Everything before the perturbed layer matches its parent exactly.
    assert all(w["rel_error"] == 0.0 for w in where["worst"] if w["index"] < first["index"])


def test_parity_fails_with_inputs_not_matching_the_reference(setup, tmp_path: Path, capsys) -> None:
    bundles, data = setup["bundles"], setup["data"]
    ref = tmp_path / "ref"
    main(["reference", "--model", str(bundles[ModelFormat.KERAS].path), "--data", str(data), "--out", str(ref)])
    capsys.readouterr()
    first = sorted((data / "val").rglob("*.jpg"))[0]
    import cv2

    image = cv2.imread(str(first))
    other = tmp_path / "data"
    shutil.copytree(data, other)
    cv2.imwrite(str(other / first.relative_to(data)), 255 - image)
    code = main(
        [
            "parity",
            "--bundle",
            str(bundles[ModelFormat.TFLITE].path),
            "--reference",
            str(ref),
            "--data",
            str(other),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 2 and out["error"] == "ParityError" and "differs from the reference" in out["message"]
