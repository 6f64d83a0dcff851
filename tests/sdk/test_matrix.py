"""``shelfedge matrix``: bundles x profiles, parity + bench per runnable pair, skipped and error rows.

Tiny settings: a 32x32 CNN, 18 synthetic images, ``--quick`` or a bench config without fresh
processes. Bench numbers are checked for sanity only, never against timing thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import cli
from sdk.bundle import Bundle, write_bundle
from sdk.enums import ModelFormat
from sdk.errors import ConfigError
from sdk.profiles import load_profile
from sdk.qa.bench import BenchConfig
from sdk.qa.matrix import find_bundles, run_matrix

pytestmark = [pytest.mark.onnxruntime, pytest.mark.openvino, pytest.mark.tensorflow]

SIZE = 32
TINY = BenchConfig(
    warmup=2,
    repeats=10,
    min_time_s=0.0,
    batch_sizes=(1,),
    throughput_time_s=0.02,
    e2e_repeats=3,
    cold_start=False,
    measure_memory=False,
    bare_loop=False,
)
NPU_PROFILE = "intel-core-ultra-npu"  # strict fallback: skipped on a host without an NPU


@pytest.fixture(scope="module")
def setup(shelf_data: Path, shelf_bundles: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from sdk.data import load_split
    from sdk.qa.parity_run import make_reference

    data, exported = shelf_data, shelf_bundles
    # A convert-style tree: a profile folder with a variants folder, plus the server model.
    good = tmp_path_factory.mktemp("good")
    shutil.copytree(exported[ModelFormat.ONNX].path, good / "tiny-onnx-fp32")
    shutil.copytree(exported[ModelFormat.OPENVINO].path, good / "x86-kiosk-cpu" / "variants" / "tiny-openvino-fp32")
    shutil.copytree(exported[ModelFormat.KERAS].path, good / "tiny-keras-fp32")
    # Broken bundles: one tampered after packaging, one repackaged with a wrong mean/std.
    bad = tmp_path_factory.mktemp("bad")
    shutil.copytree(exported[ModelFormat.ONNX].path, bad / "tampered")
    model_file = bad / "tampered" / Bundle.open(bad / "tampered").manifest.model_file
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    shutil.copytree(exported[ModelFormat.ONNX].path, bad / "wrong-mean")
    manifest = Bundle.open(bad / "wrong-mean").manifest
    write_bundle(
        bad / "wrong-mean",
        manifest.with_changes(
            preprocessing=dataclasses.replace(manifest.preprocessing, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
        ),
    )
    ref = make_reference(
        exported[ModelFormat.KERAS].path,
        load_split(data, "val"),
        tmp_path_factory.mktemp("ref") / "ref",
        log=lambda m: None,
    )
    return {"data": data, "good": good, "bad": bad, "ref": ref}


def _npu_present() -> bool:
    from sdk.runtime import available_runtimes

    devices = available_runtimes()[load_profile(NPU_PROFILE).runtime].get("devices", [])
    return any(str(d.get("device", "")).startswith("NPU") for d in devices)


def _rows(report: dict) -> dict[tuple[str, str | None], dict]:
    return {(row["name"], row["profile"]): row for row in report["rows"]}


def test_find_bundles_succeeds_with_a_nested_convert_layout(setup) -> None:
    found = {str(p.relative_to(setup["good"])) for p in find_bundles(setup["good"])}
    assert found == {"tiny-onnx-fp32", "tiny-keras-fp32", "x86-kiosk-cpu/variants/tiny-openvino-fp32"}


def test_find_bundles_fails_with_no_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no manifest\.json"):
        find_bundles(tmp_path)


def test_cli_matrix_succeeds_with_fp32_passing_and_absent_devices_skipped(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "matrix"
    profiles = f"onnxruntime-cpu,x86-kiosk-cpu,{NPU_PROFILE}"
    # The reference is the Keras bundle inside --bundles: computed now, and left out of the matrix.
    code = cli.main(
        [
            "matrix",
            "--bundles",
            str(setup["good"]),
            "--profiles",
            profiles,
            "--reference",
            str(setup["good"] / "tiny-keras-fp32"),
            "--data",
            str(setup["data"]),
            "--quick",
            "--out",
            str(out),
            "--json",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["passed"] is True
    report = json.loads((out / "matrix.json").read_text())
    assert report["schema_version"] == 1 and {"cpu", "logical_cores"} <= set(report["host"])
    assert "numpy" in report["versions"] and report["images"] == 18
    assert [e["reason"] for e in report["excluded"]] == ["the reference model itself"]
    rows = _rows(report)
    onnx, ov = "tiny-onnx-fp32", "x86-kiosk-cpu/variants/tiny-openvino-fp32"
    ran = {key for key, row in rows.items() if row["status"] == "ran"}
    assert ran == {(onnx, "onnxruntime-cpu"), (onnx, "x86-kiosk-cpu"), (ov, "x86-kiosk-cpu")}
    for key in ran:
        row = rows[key]
        assert row["parity"]["passed"] is True and row["parity"]["failed_checks"] == []
        assert row["parity"]["max_abs_diff"] <= 1e-4 and row["parity"]["top1_agreement"] == 1.0
        assert row["parity"]["accuracy_ratio"] == pytest.approx(1.0)
        assert 0 < row["bench"]["infer_p50_ms"] <= row["bench"]["infer_p95_ms"]
        assert row["bench"]["e2e_p50_ms"] > 0 and row["bench"]["size_mb"] > 0
        assert row["bench"]["budgets_passed"] is True and row["passed"] is True
    assert rows[(onnx, "onnxruntime-cpu")]["runtime"] == "onnxruntime"
    assert rows[(onnx, "x86-kiosk-cpu")]["bench"]["result"]["runtime"] == "openvino"
    wrong_format = rows[(ov, "onnxruntime-cpu")]
    assert wrong_format["status"] == "skipped" and "onnxruntime does not read openvino" in wrong_format["reason"]
    if not _npu_present():
        for name in (onnx, ov):
            npu = rows[(name, NPU_PROFILE)]
            assert npu["status"] == "skipped" and "NPU is not available" in npu["reason"] and npu["passed"]
    markdown = (out / "matrix.md").read_text()
    assert "| tiny-onnx-fp32" in markdown and "## Skipped" in markdown and "## Failures" not in markdown
    page = (out / "matrix.html").read_text()
    assert "<table>" in page and 'href="matrix.json"' in page


def test_cli_matrix_fails_with_exit_1_for_a_wrong_mean_and_an_error_row_for_a_tampered_bundle(
    setup, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "matrix"
    code = cli.main(
        [
            "matrix",
            "--bundles",
            str(setup["bad"]),
            "--profiles",
            "onnxruntime-cpu",
            "--reference",
            str(setup["ref"].path),
            "--data",
            str(setup["data"]),
            "--quick",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1
    rows = _rows(json.loads((out / "matrix.json").read_text()))
    tampered = rows[("tampered", None)]
    assert tampered["status"] == "error" and "sha256" in tampered["reason"] and tampered["passed"] is False
    broken = rows[("wrong-mean", "onnxruntime-cpu")]
    assert broken["status"] == "ran" and broken["parity"]["passed"] is False
    assert "max_abs_diff" in broken["parity"]["failed"] and broken["parity"]["max_abs_diff"] > 1e-2
    assert broken["bench"]["infer_p50_ms"] > 0  # a parity failure still gets its numbers
    assert "FAIL wrong-mean x onnxruntime-cpu: parity tensor max_abs_diff" in printed
    assert "error: BundleError" in printed and "verdict: FAIL" in printed
    assert "## Failures" in (out / "matrix.md").read_text()


def test_run_matrix_fails_a_budget_with_an_absurdly_small_latency_budget(setup, tmp_path: Path) -> None:
    source = Path(load_profile("onnxruntime-cpu").source).read_text()
    tiny = source.replace("id: onnxruntime-cpu", "id: tiny-budget").replace(
        "p95_latency_ms: 40", "p95_latency_ms: 1.0e-6"
    )
    (tmp_path / "tiny-budget.yaml").write_text(tiny)
    result = run_matrix(
        setup["bad"] / "wrong-mean",
        [load_profile(tmp_path / "tiny-budget.yaml")],
        setup["ref"],
        _dataset(setup),
        bench=TINY,
        bench_images=4,
        log=lambda m: None,
    )
    (row,) = result.rows
    assert row.status == "ran" and row.bench is not None and row.bench.budgets_passed is False
    assert any(f.startswith("budget p95_latency_ms") for f in row.failures) and not result.passed
    assert row.summary_row()["budgets"] == "FAIL: p95_latency_ms"


def test_cli_matrix_fails_with_exit_2_when_no_pair_can_run_here(setup, tmp_path: Path, capsys) -> None:
    if _npu_present():
        pytest.skip("this host has an NPU")
    code = cli.main(
        [
            "matrix",
            "--bundles",
            str(setup["good"] / "tiny-onnx-fp32"),
            "--profiles",
            f"android-arm64,{NPU_PROFILE}",
            "--reference",
            str(setup["ref"].path),
            "--data",
            str(setup["data"]),
            "--out",
            str(tmp_path / "m"),
            "--json",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 2 and printed["error"] == "BackendUnavailableError"
    assert "litert does not read onnx" in (tmp_path / "m" / "matrix.md").read_text()


def test_cli_matrix_fails_with_exit_2_for_an_unknown_profile(setup, tmp_path: Path, capsys) -> None:
    code = cli.main(
        [
            "matrix",
            "--bundles",
            str(setup["good"]),
            "--profiles",
            "onnxruntime-cpu,no-such-device",
            "--reference",
            str(setup["ref"].path),
            "--out",
            str(tmp_path / "m"),
            "--json",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert code == 2 and printed["error"] == "ProfileError" and "no-such-device" in printed["message"]
    assert not (tmp_path / "m").exists()


def _dataset(setup: dict):
    from sdk.data import load_split

    return load_split(setup["data"], "val")
