"""The shelfedge CLI, run in-process (and once through the installed console script).

Tests that need a backend skip, not fail, when it is not installed (pytest.importorskip).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cli
import sdk
from cli import main
from cli._common import QUICKSTART_DATA
from sdk import synthetic
from sdk.enums import ModelFormat

RUNTIME_MODULES = {"litert": "ai_edge_litert", "openvino": "openvino", "onnxruntime": "onnxruntime"}


@pytest.fixture(autouse=True)
def _logs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Other libraries' log files of these runs go to the test's folder, not ~/.cache."""
    folder = tmp_path / "logs"
    monkeypatch.setenv("SHELFEDGE_LOG_DIR", str(folder))
    # An earlier export (tf2onnx) raises the root logger's and TensorFlow's levels to ERROR; these
    # tests need the libraries' warnings to reach the routing under test.
    loggers = {
        logging.getLogger(): logging.WARNING,
        logging.getLogger("tensorflow"): logging.NOTSET,
        logging.getLogger("tf2onnx"): logging.NOTSET,
    }
    saved = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    yield folder
    for logger, level in saved.items():
        logger.setLevel(level)


@pytest.fixture
def bundles(request: pytest.FixtureRequest) -> dict:
    """The suite's exported bundles; skips when an exporter's backend is missing."""
    for module in ("tensorflow", "keras", "tf2onnx", "openvino"):
        pytest.importorskip(module)
    return request.getfixturevalue("exported_bundles")


@pytest.fixture
def no_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh machine: a working directory with no ../shared and no $SHELFEDGE_DATA."""
    work = tmp_path / "fresh" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("SHELFEDGE_DATA", raising=False)
    return work


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_cli_version_succeeds_with_package_and_sdk_versions(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("shelfedge ") and out.endswith(f"(sdk {sdk.__version__})")


def test_cli_devices_succeeds_with_json_listing_every_backend(capsys) -> None:
    code, payload = _json(capsys, ["devices", "--json"])
    assert code == 0
    assert isinstance(payload["gpu_present"], bool)
    for runtime, module in RUNTIME_MODULES.items():
        try:
            __import__(module)
        except ImportError:
            assert payload["runtimes"][runtime]["available"] is False
            continue
        assert payload["runtimes"][runtime]["available"] is True
        assert payload["runtimes"][runtime]["version"]
    if payload["runtimes"]["openvino"]["available"]:
        assert payload["runtimes"]["openvino"]["devices"][0]["device"] == "CPU"
    if payload["runtimes"]["onnxruntime"]["available"]:
        assert "CPUExecutionProvider" in payload["runtimes"]["onnxruntime"]["devices"]


def test_cli_profiles_succeeds_with_table_and_json(capsys) -> None:
    assert main(["profiles"]) == 0
    assert "coral-edgetpu" in capsys.readouterr().out
    code, payload = _json(capsys, ["profiles", "android-arm64", "--json"])
    assert code == 0 and payload["runtime"] == "litert"


def test_cli_inspect_succeeds_with_verified_bundle(capsys, bundles) -> None:
    code, payload = _json(capsys, ["inspect", str(bundles[ModelFormat.OPENVINO].path), "--json"])
    assert code == 0 and payload["verified"] is True
    assert payload["manifest"]["format"] == "openvino"


def test_cli_classify_succeeds_with_json_naming_runtime_device_and_latency(capsys, bundles, sample_images) -> None:
    for module in RUNTIME_MODULES.values():
        pytest.importorskip(module)
    top1 = set()
    for fmt, runtime in (
        (ModelFormat.TFLITE, "litert"),
        (ModelFormat.OPENVINO, "openvino"),
        (ModelFormat.ONNX, "onnxruntime"),
    ):
        code, payload = _json(
            capsys, ["classify", str(bundles[fmt].path), str(sample_images[0]), "--runtime", runtime, "--json"]
        )
        assert code == 0
        assert payload["ran"]["runtime"] == runtime and payload["ran"]["actual_device"]
        timings = payload["results"][0]["timings"]
        assert set(timings) >= {"preprocess_ms", "inference_ms", "postprocess_ms"}
        top1.add(payload["results"][0]["categories"][0]["label"])
    assert len(top1) == 1


def test_cli_classify_fails_with_exit_code_and_message_for_missing_bundle(capsys, tmp_path: Path) -> None:
    code = main(["classify", str(tmp_path / "nope"), "x.jpg", "--json"])
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert code == 2 and payload["error"] == "BundleError"
    assert "shelfedge classify: BundleError:" in captured.err


# --------------------------------------------------------------------------- a missing extra


@pytest.fixture
def without_keras(monkeypatch: pytest.MonkeyPatch):
    """As on a machine without the tf extra: importing keras, or converters that use it, fails."""
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "keras", None)
    for name in [m for m in sys.modules if m == "converters" or m.startswith("converters.")]:
        monkeypatch.delitem(sys.modules, name)  # so the command imports them again, and fails
    yield
    for name in set(sys.modules) - before:  # copies imported here must not outlive the test
        if name == "converters" or name.startswith("converters."):
            del sys.modules[name]


@pytest.mark.parametrize(
    "argv",
    [
        ["quickstart", "--small"],
        ["export", "--model", "m.keras", "--labels", "labels.txt", "--size", "32", "32", "--out", "x"],
        ["convert", "--model", "efficientnet_lite0", "--distill-from", "t", "--profile", "x86-kiosk-cpu"],
        ["teacher"],
        ["distill", "--teacher", "t"],
    ],
    ids=lambda argv: argv[0],
)
def test_cli_fails_with_one_line_naming_the_tf_extra_when_keras_is_missing(
    argv: list[str], capsys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, without_keras: None
) -> None:
    monkeypatch.chdir(tmp_path)
    synthetic.generate(tmp_path / "data", train_per_class=2, val_per_class=1, size=32)
    monkeypatch.setenv("SHELFEDGE_DATA", str(tmp_path / "data"))
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "m.keras").write_bytes(b"PK")
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith(f"shelfedge {argv[0]}:")]
    assert lines == [
        f"shelfedge {argv[0]}: BackendUnavailableError: 'shelfedge {argv[0]}' needs keras, which is not "
        "installed; install it with: pip install 'shelfedge[tf]'"
    ]
    assert "Traceback" not in err


def test_cli_fails_with_traceback_for_an_import_error_that_is_not_a_missing_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A broken import inside shelfedge is a bug: it must stay visible, not become "install an extra".
    def broken(args: object) -> int:
        raise ImportError("cannot import name 'gone' from 'converters.export.pipeline'", name="converters.export")

    monkeypatch.setattr(cli.profiles, "run", broken)
    with pytest.raises(ImportError, match="gone"):
        main(["profiles"])


# --------------------------------------------------------------------------- other libraries' logs


def _chatty(args: object, nncf: bool = True) -> int:
    """A command body that logs and prints the way TensorFlow, absl, NNCF and tf2onnx do."""
    cli.log("[chatty] shelfedge progress")
    logging.getLogger("tensorflow").warning("TF deprecation warning")
    logging.getLogger("tf2onnx.tfonnx").warning("tf2onnx warning")
    if nncf:
        logging.getLogger("nncf").info("NNCF INFO line")
    print("a library's progress bar on stdout")
    print("a library's message on stderr", file=sys.stderr)
    os.write(2, b"I0000 C++ oneDNN line on descriptor 2\n")
    cli.emit(args, {"ok": True}, "chatty result")  # type: ignore[arg-type]
    return 0


@pytest.fixture
def nncf_logger() -> logging.Logger:
    # NNCF's logger prints itself (own stdout handler, no propagation); it must exist as NNCF
    # made it, not as a plain logger created here.
    pytest.importorskip("nncf")
    return logging.getLogger("nncf")


def test_cli_succeeds_with_library_logs_in_the_log_file_not_on_stderr(
    capfd, monkeypatch: pytest.MonkeyPatch, _logs_in_tmp: Path, nncf_logger: logging.Logger
) -> None:
    monkeypatch.setattr(cli.profiles, "run", _chatty)
    handlers = list(nncf_logger.handlers)
    assert main(["profiles", "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == {"ok": True}
    assert "[chatty] shelfedge progress" in err
    for noise in ("TF deprecation", "tf2onnx warning", "NNCF INFO", "progress bar", "message on stderr", "oneDNN"):
        assert noise not in err and noise not in out
    [log_file] = _logs_in_tmp.glob("profiles-*.log")
    logged = log_file.read_text()
    for noise in ("TF deprecation", "tf2onnx warning", "NNCF INFO", "progress bar", "message on stderr", "oneDNN"):
        assert noise in logged
    assert f"other libraries' messages: {log_file}" in err
    assert nncf_logger.handlers == handlers and nncf_logger.propagate is False  # restored afterwards


def test_cli_succeeds_with_library_logs_on_stderr_when_verbose(
    capfd, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, _logs_in_tmp: Path
) -> None:
    monkeypatch.setattr(cli.profiles, "run", lambda args: _chatty(args, nncf=False))
    assert main(["profiles", "--json", "-v"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == {"ok": True}  # libraries' stdout still does not corrupt --json
    for line in ("[chatty] shelfedge progress", "progress bar", "message on stderr", "oneDNN"):
        assert line in err
    # Logging is left as the libraries set it up (under pytest, its own handler takes the records).
    assert {"TF deprecation warning", "tf2onnx warning"} <= {r.getMessage() for r in caplog.records}
    assert not list(_logs_in_tmp.glob("*.log"))


# --------------------------------------------------------------------------- the data default


def test_cli_data_fails_on_a_fresh_machine_naming_quickstart_and_data(capsys, no_shared_data: Path) -> None:
    code, payload = _json(capsys, ["eval", "some-bundle", "--json"])
    assert code == 2 and payload["error"] == "ConfigError"
    assert "run 'shelfedge quickstart' first, or pass --data DIR" in payload["message"]
    assert "README" not in payload["message"]


def test_cli_data_succeeds_with_the_dataset_quickstart_generated(capsys, no_shared_data: Path) -> None:
    made = synthetic.generate(QUICKSTART_DATA, train_per_class=1, val_per_class=1, size=32)
    assert cli.data_dir(None) == made
    [line] = capsys.readouterr().err.splitlines()
    assert "not found: using the synthetic dataset shelfedge quickstart generated" in line
    assert cli.data_dir("elsewhere") == Path("elsewhere")  # --data always wins


def test_cli_eval_succeeds_on_the_quickstart_dataset_without_shared_data(
    capsys, no_shared_data: Path, bundles, sample_images: list[Path]
) -> None:
    # Where quickstart puts its dataset, in the Grocery Store layout, with the bundles' 4 classes.
    QUICKSTART_DATA.mkdir(parents=True)
    rows = [f"{name},{i},{name},{i},," for i, name in enumerate(("apple", "banana", "milk", "yoghurt"))]
    (QUICKSTART_DATA / "classes.csv").write_text("\n".join(["name,id,coarse,coarse_id,icon,text", *rows]) + "\n")
    lines = [f"{path}, {i % 4}, {i % 4}" for i, path in enumerate(sample_images)]
    (QUICKSTART_DATA / "val.txt").write_text("\n".join(lines) + "\n")
    code = main(["eval", str(bundles[ModelFormat.ONNX].path), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["results"][0]["images"] == len(sample_images)
    assert "using the synthetic dataset shelfedge quickstart generated" in captured.err


@pytest.mark.skipif(shutil.which("shelfedge") is None, reason="shelfedge console script not installed")
def test_console_script_succeeds_with_devices_json(tmp_path: Path) -> None:
    env = {**os.environ, "SHELFEDGE_LOG_DIR": str(tmp_path)}
    done = subprocess.run(["shelfedge", "devices", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout)["runtimes"], dict)
    assert "oneDNN" not in done.stderr  # TensorFlow's start-up lines are in the log file
