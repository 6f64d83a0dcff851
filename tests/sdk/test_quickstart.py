"""The main job runs end to end (tiny settings): every runtime agrees, then convert -> parity -> bench."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main
from sdk import synthetic


def test_quickstart_succeeds_with_synthetic_data_on_every_runtime(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("tensorflow", "keras", "tf2onnx", "openvino", "onnxruntime", "ai_edge_litert", "nncf"):
        pytest.importorskip(module)
    monkeypatch.setenv("SHELFEDGE_LOG_DIR", str(tmp_path / "logs"))
    data = synthetic.generate(tmp_path / "data", train_per_class=8, val_per_class=3, size=64)
    out = tmp_path / "out"
    code = main(
        [
            "quickstart",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--input-size",
            "32",
            "--small",
            "--rec-data",
            "synthetic-baskets",
            "--rec-teacher-epochs",
            "1",
            "--json",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    report = json.loads((out / "report.json").read_text())
    assert printed["rows"] == report["rows"]
    runtimes = {(row["bundle"], row["runtime"]) for row in report["rows"]}
    assert runtimes == {
        ("tflite", "litert"),
        ("openvino", "openvino"),
        ("onnx", "onnxruntime"),
        ("onnx", "openvino"),
        ("keras", "tensorflow"),
    }
    for row in report["rows"]:
        assert row["top-1 agreement"] == 1.0
        assert row["max abs diff vs ref"] <= 1e-4
    assert "| tflite" in (out / "report.md").read_text()
    assert report["data"]["origin"] == "given" and report["data"]["val"] == 18
    # The release check for the default profile: converted, judged against its fp32 source, benched.
    assert report["profile"] == "x86-kiosk-cpu"
    chosen = Path(report["convert"]["chosen"])
    assert chosen.is_dir() and chosen.parent == out / "convert" / "x86-kiosk-cpu"
    [parity] = report["parity"]
    assert parity["runtime"] == "openvino" and {c["tier"] for c in parity["verdict"]["checks"]} == {"task"} | (
        {"tensor", "output"} if parity["precision"] != "int8" else {"output"}
    )
    comparison = report["bench"]["comparison"]
    assert comparison["infer_p50_speedup"] > 0 and comparison["size_ratio"] > 0
    assert (out / "bench" / "bench.json").is_file() and (out / "convert" / "x86-kiosk-cpu" / "report.md").is_file()
    # The bench row names what was benched: the chosen bundle on the profile's runtime.
    assert [row["stage"] for row in report["pipeline"]][:4] == [
        "teacher",
        "convert (x86-kiosk-cpu)",
        "parity vs fp32 source",
        f"bench ({chosen.name} on openvino)",
    ]
    # The basket recommender: trained, distilled, packaged, the same answer on every runtime, and the
    # planted partners of the synthetic baskets ranked first.
    rec = report["recommender"]
    assert rec["synthetic"] and rec["planted_top1"] >= 0.9 and rec["example"]["runtimes_agree"]
    assert set(rec["bundles"]) == {"tflite", "openvino", "onnx"} and len(rec["example"]["top3"]) == 4
    assert "planted co-occurrences" in [row["stage"] for row in report["pipeline"]] and report["passed"]
    # ... and released like the image model: converted for the profile, parity PASS on its runtime, benched.
    assert rec["release"]["parity"]["runtime"] == "openvino" and rec["passed"]
    assert Path(rec["release"]["convert"]["chosen"]).parent == out / "rec" / "convert" / "x86-kiosk-cpu"
    assert rec["release"]["bench"]["latency"]["p99_ms"] > 0
    assert "x faster" in report["pipeline"][3]["result"]
    assert "Release check for x86-kiosk-cpu" in (out / "report.md").read_text()
    # Other libraries' messages went to the log file, not to the terminal.
    [log_file] = (tmp_path / "logs").glob("quickstart-*.log")
    assert f"other libraries' messages: {log_file}" in captured.err
    assert "INFO:nncf" not in captured.err and "INFO:nncf" not in captured.out
    assert "[export]" in captured.err and "[quickstart] convert for x86-kiosk-cpu" in captured.err
