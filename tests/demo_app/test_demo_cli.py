"""``shelfedge demo``: host rules, default bundle discovery, and a real app process without TensorFlow."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cli
from cli.demo import LOOPBACK, default_bundles, resolve_host
from sdk.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
LABELS = ("Granny-Smith", "Arla-Standard-Milk", "Bravo-Apple-Juice", "Peach")
CATEGORIES = ("pip fruit", "whole milk", "fruit/vegetable juice", "yogurt")


def test_resolve_host_succeeds_with_loopback_by_default() -> None:
    assert resolve_host(None) == LOOPBACK
    assert resolve_host("localhost") == LOOPBACK
    assert resolve_host("0.0.0.0") == "0.0.0.0"  # only because --host said so
    assert resolve_host("::1") == "::1"


def test_resolve_host_fails_with_a_name_that_is_not_an_address() -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        resolve_host("kiosk.example.com")


def _fake_bundle(path: Path, task: str, *, items: bool = False) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"task": task}))
    if items:
        (path / "items.npz").write_bytes(b"")
    return path


def test_default_bundles_succeeds_with_the_converted_ones_first(tmp_path: Path) -> None:
    fp32 = _fake_bundle(tmp_path / "bundles" / "shelf_cnn-onnx-fp32", "image_classification")
    rec_fp32 = _fake_bundle(tmp_path / "rec" / "bundles" / "baskets-basket-onnx-fp32", "recommendation", items=True)
    _fake_bundle(tmp_path / "rec" / "bundles" / "baskets-basket-tflite-fp32", "recommendation", items=True)
    assert default_bundles(tmp_path, "p") == (fp32, rec_fp32)
    (tmp_path / "convert" / "p" / "variants").mkdir(parents=True)  # not a bundle: skipped
    converted = _fake_bundle(tmp_path / "convert" / "p" / "shelf_cnn-p-int8", "image_classification")
    rec_converted = _fake_bundle(tmp_path / "rec" / "convert" / "p" / "baskets-p-int8", "recommendation", items=True)
    assert default_bundles(tmp_path, "p") == (converted, rec_converted)
    assert default_bundles(tmp_path, "other") == (fp32, rec_fp32)
    kiosk = _fake_bundle(tmp_path / "kiosk" / "shelf_cnn-kiosk-onnx-fp32", "image_classification")  # embedding + rule
    assert default_bundles(tmp_path, "p") == (kiosk, rec_converted)


def test_demo_fails_with_no_bundles_and_no_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--quickstart-out", str(tmp_path), "--no-build"]) == 2
    err = capsys.readouterr().err
    assert "shelfedge quickstart --out" in err and str(tmp_path) in err


def test_demo_fails_with_a_bad_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--port", "70000", "--quickstart-out", str(tmp_path), "--no-build"]) == 2
    assert "not a TCP port" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bundles(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    keras = pytest.importorskip("keras")
    pytest.importorskip("onnxruntime")
    from converters.export.pipeline import export
    from converters.export.rec_bundle import package_recommender
    from converters.models.sasrec import MaskedMean, PaddingMask
    from sdk.enums import ModelFormat
    from sdk.interactions import Catalogue
    from sdk.manifest import Preprocessing

    out = tmp_path_factory.mktemp("demo-cli")
    pre = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
    image = export(
        tiny_cnn(classes=len(LABELS)), out_dir=out, name="grocery", labels=LABELS, preprocessing=pre, formats=["onnx"]
    )[ModelFormat.ONNX]
    keras.utils.set_random_seed(0)
    history = keras.Input((4,), dtype="int32", name="history")
    embed = keras.layers.Embedding(len(CATEGORIES) + 1, 8, name="item_embedding")
    pooled = MaskedMean(name="pool")([embed(history), PaddingMask(name="keep")(history)])
    encoder = keras.Model(history, keras.layers.Dense(8, name="user")(pooled))
    rec = package_recommender(
        encoder, np.random.default_rng(1).normal(size=(len(CATEGORIES), 8)).astype(np.float32), None,
        Catalogue(ids=CATEGORIES, names=CATEGORIES), np.arange(len(CATEGORIES), 0, -1, dtype=np.float64),
        out_dir=out, name="baskets", kind="baskets", formats=[ModelFormat.ONNX],
    )[ModelFormat.ONNX]  # fmt: skip
    return image.path, rec.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# The app process: `shelfedge demo` itself; at exit it says which heavy frameworks it loaded.
_CHILD = (
    "import atexit, sys\n"
    "heavy = ('tensorflow', 'keras', 'torch')\n"
    "atexit.register(lambda: print('LOADED', sorted(m for m in heavy if m in sys.modules)))\n"
    "import cli\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.mark.timeout(90)
def test_demo_serves_bundles_without_importing_tensorflow(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from PIL import Image

    port = free_port()
    argv = ["demo", "--bundle", str(bundles[0]), "--recommender", str(bundles[1]), "--profile", "onnxruntime-cpu"]
    argv += ["--port", str(port), "--catalogue", str(tmp_path)]
    env = {**os.environ, "SHELFEDGE_LOG_DIR": str(tmp_path / "logs")}
    pipe = subprocess.PIPE
    command = [sys.executable, "-c", _CHILD, *argv]
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True)
    try:
        url = f"http://{LOOPBACK}:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, child.communicate()[1]
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the app did not answer /api/health within 60 s"
            time.sleep(0.2)
        photo = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(photo, format="PNG")
        r = httpx.post(f"{url}/api/recognise", files={"image": ("p.png", photo.getvalue(), "image/png")}, timeout=10)
        assert r.status_code == 200 and r.json()["product"]["label"] in LABELS
    finally:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert f"open {url}/" in err
    assert "LOADED []" in out, out
