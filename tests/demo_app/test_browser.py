"""The kiosk page in a real browser: Debian's headless Chromium driven by Selenium.

Upload a photo -> the product name -> tap to add it -> the basket and the recommendations; and the
camera path, with a photo fed to Chromium as its fake camera. Skipped when selenium, chromium or
chromedriver are absent (``apt-get install -y chromium chromium-driver``; ``pip install selenium``).
Screenshots go to the test's tmp dir, and to ``$SHELFEDGE_BROWSER_OUT`` when set (``.ci/run``:
``out/demo-browser``).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

selenium = pytest.importorskip("selenium")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)",
)

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from converters.export.pipeline import export  # noqa: E402
from converters.export.rec_bundle import package_recommender  # noqa: E402
from converters.models.sasrec import MaskedMean, PaddingMask  # noqa: E402
from demo_app.server import create_app  # noqa: E402
from sdk.data import default_data_root  # noqa: E402
from sdk.enums import ModelFormat  # noqa: E402
from sdk.interactions import Catalogue  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402

# Grocery Store classes (so the catalogue has names and images for them) and their basket categories.
LABELS = ("Granny-Smith", "Arla-Standard-Milk", "Bravo-Apple-Juice", "Banana")
CATEGORIES = ("pip fruit", "whole milk", "fruit/vegetable juice", "tropical fruit", "rolls/buns", "soda")
GROCERY = default_data_root()
WAIT_S = 20


@pytest.fixture(scope="module")
def server(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The kiosk over tiny bundles, served by uvicorn on a free loopback port in a thread."""
    out = tmp_path_factory.mktemp("browser")
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
    catalogue = GROCERY if (GROCERY / "classes.csv").is_file() else None
    app = create_app(image.path, rec.path, profile="onnxruntime-cpu", catalogue_root=catalogue)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    web.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A val photo of a class the tiny model knows when the Grocery data is here, else a generated one."""
    folder = GROCERY / "val" / "Fruit" / "Apple" / "Granny-Smith"
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if photos:
        return photos[0].resolve()
    path = tmp_path_factory.mktemp("photo") / "granny-smith.jpg"
    yy, xx = np.mgrid[0:240, 0:320]
    green = ((xx - 160) ** 2 + (yy - 120) ** 2 < 90**2)[..., None] * np.array([60, 170, 40])
    Image.fromarray((green + 30).clip(0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def _browser(*extra: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1600", *extra):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    return driver


def _text(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    target = os.environ.get("SHELFEDGE_BROWSER_OUT")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


@pytest.mark.timeout(60)
def test_page_succeeds_with_upload_basket_and_recommendations(server: str, photo: Path, tmp_path: Path) -> None:
    # What the page must show for this photo: the API's own answer for the same bytes.
    api = httpx.post(f"{server}/api/recognise", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    expected = api.json()["product"]
    driver = _browser()
    try:
        wait = WebDriverWait(driver, WAIT_S)
        driver.get(server + "/")
        upload = driver.find_element(By.ID, "file")
        driver.execute_script("arguments[0].hidden = false;", upload)
        upload.send_keys(str(photo))
        wait.until(lambda d: _text(d, "product-name"))
        assert _text(driver, "product-name").startswith(f"{expected['name']} ("), _text(driver, "error")
        choices = driver.find_elements(By.CSS_SELECTOR, "#top li button")
        assert len(choices) == 3 and choices[0].text.startswith(expected["name"])
        choices[0].click()
        wait.until(lambda d: expected["name"] in _text(d, "basket"))
        basket = driver.find_elements(By.CSS_SELECTOR, "#basket li")
        assert len(basket) == 1 and expected["name"] in basket[0].text
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recs li")) >= 1 and _text(d, "rec-latency"))
        recs = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#recs li")]
        assert recs and all(any(r.startswith(c) for c in CATEGORIES) for r in recs)
        assert not any(r.startswith(f"{expected['category']}") for r in recs)  # the basket's own category
        assert _text(driver, "error") == ""
        _screenshot(driver, tmp_path, "kiosk-upload.png")
    finally:
        driver.quit()


def _y4m(photo: Path, path: Path, frames: int = 10) -> Path:
    """``photo`` as a YUV4MPEG2 (4:2:0) clip for ``--use-file-for-fake-video-capture``."""
    import cv2

    original = cv2.imread(str(photo))
    assert original is not None, f"OpenCV cannot read {photo}"
    bgr = cv2.resize(original, (320, 240), interpolation=cv2.INTER_AREA)
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()
    with path.open("wb") as f:
        f.write(b"YUV4MPEG2 W320 H240 F10:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            f.write(b"FRAME\n" + i420)
    return path


@pytest.mark.timeout(60)
def test_page_succeeds_with_the_camera(server: str, photo: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    clip = _y4m(photo, tmp_path / "camera.y4m")
    names = {p["label"]: p["name"] for p in httpx.get(f"{server}/api/products").json()["products"]}
    fake = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    driver = _browser(*fake, f"--use-file-for-fake-video-capture={clip}")
    try:
        wait = WebDriverWait(driver, WAIT_S)
        driver.get(server + "/")
        driver.find_element(By.ID, "camera-start").click()
        wait.until(lambda d: d.execute_script("return document.getElementById('video').videoWidth") == 320)
        assert driver.find_element(By.ID, "camera-snap").is_displayed(), _text(driver, "error")
        driver.find_element(By.ID, "camera-snap").click()
        wait.until(lambda d: _text(d, "product-name") or _text(d, "error"))
        shown = _text(driver, "product-name")
        assert any(shown.startswith(f"{name} (") for name in names.values()), (shown, _text(driver, "error"))
        _screenshot(driver, tmp_path, "kiosk-camera.png")
    finally:
        driver.quit()


def test_y4m_succeeds_with_a_header_and_whole_frames(photo: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    data = _y4m(photo, tmp_path / "c.y4m", frames=3).read_bytes()
    header, _, body = data.partition(b"\n")
    assert header.startswith(b"YUV4MPEG2 W320 H240") and len(body) == 3 * (6 + 320 * 240 * 3 // 2)
    assert io.BytesIO(body).read(6) == b"FRAME\n"
