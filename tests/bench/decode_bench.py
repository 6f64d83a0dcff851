"""Decode side by side: Pillow, OpenCV and libjpeg-turbo strict (simplejpeg), and shelfedge's decode_image.

Measured in one run on the same bytes: milliseconds per image for the common case (product
photo JPEGs), and whether each decoder gives the pixels the previous ``decode_image`` gave
(OpenCV's ``imdecode``), as the max absolute pixel difference and as the max difference of
the preprocessed model input (224x224 centre crop, float32). With ``--bundle`` it also
classifies every photo from OpenCV's pixels and from ``decode_image``'s and counts top-1
agreement.

    python3 tests/bench/decode_bench.py [--data ../shared/data/grocery] [--count 200] [--bundle DIR]

Two sets: the grocery validation photos as they are (~22 KB, 348x348), and the same photos
upscaled to 1024x768 and re-encoded at quality 92 (~100 KB, a phone product photo). Without the
data folder it runs on generated photos. Timing is single-threaded, best of ``--repeats`` passes.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdk import preprocess as pp  # noqa: E402  (the repository root goes on the path first)
from sdk.enums import ColorOrder, Layout  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402
from sdk.tensors import TensorSpec  # noqa: E402

Decoder = Callable[[bytes], np.ndarray]
_PRE = Preprocessing(size=(224, 224), mean=(127.5,) * 3, std=(127.5,) * 3)
_SPEC = TensorSpec(name="image", shape=(1, 224, 224, 3), dtype="float32", layout=Layout.NHWC)


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def turbojpeg_strict(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, "RGB", strict=True)


DECODERS: dict[str, Decoder] = {
    "OpenCV imdecode (previous decode_image)": opencv,
    "Pillow open + convert": pillow,
    "libjpeg-turbo strict (simplejpeg)": turbojpeg_strict,
    "shelfedge decode_image (now)": pp.decode_image,
}


def photo_bytes(data_root: Path, count: int) -> list[bytes]:
    """``count`` validation photos spread over the classes, or generated ones without the data."""
    val = data_root / "val.txt"
    if val.exists():
        lines = [line.split(",")[0].strip() for line in val.read_text(encoding="utf-8").splitlines() if line.strip()]
        step = max(1, len(lines) // count)
        return [(data_root / rel).read_bytes() for rel in lines[::step][:count]]
    print(f"({val} not found: generated photos instead)")
    rng = np.random.default_rng(0)
    images = (cv2.GaussianBlur(rng.integers(0, 256, (348, 348, 3), dtype=np.uint8), (0, 0), 3) for _ in range(count))
    return [cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes() for image in images]


def upscaled(photos: Sequence[bytes]) -> list[bytes]:
    """The photos as ~100 KB 1024x768 phone shots (bicubic upscale, quality 92)."""
    out = []
    for data in photos:
        bgr = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), (1024, 768), cv2.INTER_CUBIC)
        out.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
    return out


def time_ms(decode: Decoder, photos: Sequence[bytes], repeats: int) -> float:
    """Best-of-``repeats`` mean milliseconds per photo."""
    for data in photos[:5]:
        decode(data)  # warm-up: lazy imports, first allocations
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in photos:
            decode(data)
        passes.append((time.perf_counter() - start) * 1000 / len(photos))
    return min(passes)


def differences(decode: Decoder, photos: Sequence[bytes]) -> tuple[int, float, int]:
    """(max abs pixel difference, max abs input-tensor difference, photos not bit-identical) vs OpenCV."""
    pixel, tensor, differing = 0, 0.0, 0
    for data in photos:
        reference, pixels = opencv(data), decode(data)
        if reference.shape != pixels.shape:
            return 255, float("inf"), len(photos)
        diff = int(np.abs(reference.astype(np.int16) - pixels.astype(np.int16)).max())
        pixel, differing = max(pixel, diff), differing + (diff > 0)
        if diff:
            a, b = (pp.preprocess(np.ascontiguousarray(x), _PRE, _SPEC) for x in (reference, pixels))
            tensor = max(tensor, float(np.abs(a - b).max()))
    return pixel, tensor, differing


def top1_agreement(bundle: Path, photos: Sequence[bytes]) -> str:
    """Top-1 of the bundle's classifier on OpenCV's pixels vs on decode_image's."""
    from sdk.classifier import ImageClassifier

    with ImageClassifier.from_bundle(bundle) as classifier:
        same = sum(
            classifier.classify(opencv(d), array_color=ColorOrder.RGB).top1.index == classifier.classify(d).top1.index
            for d in photos
        )
    return f"top-1 agreement {same}/{len(photos)}"


def report(name: str, photos: Sequence[bytes], repeats: int) -> None:
    sizes = [len(p) for p in photos]
    shape = opencv(photos[0]).shape
    print(f"\n{name}: {len(photos)} JPEGs, {statistics.mean(sizes) / 1024:.1f} KB mean, {shape[1]}x{shape[0]}")
    print(f"{'decoder':42s} {'ms/image':>9s} {'max |px diff|':>14s} {'max |input diff|':>17s} {'differing':>10s}")
    for label, decode in DECODERS.items():
        ms = time_ms(decode, photos, repeats)
        pixel, tensor, differing = differences(decode, photos)
        print(f"{label:42s} {ms:9.3f} {pixel:14d} {tensor:17.6g} {differing:>6d}/{len(photos)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "grocery")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bundle", type=Path, default=None, help="an image classification bundle for top-1")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    photos = photo_bytes(args.data, args.count)
    phone = upscaled(photos)
    print(f"OpenCV {cv2.__version__}, Pillow {Image.__version__}, simplejpeg {simplejpeg.__version__}")
    report("grocery validation photos", photos, args.repeats)
    report("the same, as ~100 KB 1024x768 phone photos", phone, args.repeats)
    if args.bundle:
        print(f"\n{args.bundle}: {top1_agreement(args.bundle, photos)} (photos), {top1_agreement(args.bundle, phone)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
