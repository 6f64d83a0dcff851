"""A small synthetic shelf-photo dataset, in the Grocery Store layout.

Used when ``../shared/data`` is absent so the main job and the tests still run on
real image files. Each class is a product "package" (shape + colour + print) placed
at a random position, scale and angle on a random shelf background, with lighting
changes and sensor noise, so a small CNN must actually learn it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

# name, package colour (BGR), shape
_PRODUCTS: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("Red-Soda-Can", (40, 40, 200), "can"),
    ("Green-Apple", (60, 190, 90), "round"),
    ("Banana", (40, 210, 235), "long"),
    ("Blue-Milk-Carton", (200, 120, 40), "box"),
    ("Orange", (30, 140, 245), "round"),
    ("White-Yoghurt-Cup", (235, 235, 235), "cup"),
)


def generate(
    root: str | Path, *, train_per_class: int = 40, val_per_class: int = 10, size: int = 160, seed: int = 0
) -> Path:
    """Write the dataset under ``root`` (train/, val/, train.txt, val.txt, classes.csv).

    Re-running with the same arguments reproduces the same files; an existing complete
    dataset is left as it is.
    """
    root = Path(root)
    if (root / "classes.csv").is_file() and (root / "val.txt").is_file():
        return root
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        lines = []
        for label, (name, colour, shape) in enumerate(_PRODUCTS):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = _render(rng, colour, shape, size)
                rel = f"{split}/{name}/{name}_{i:03d}.jpg"
                cv2.imwrite(str(root / rel), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                lines.append(f"{rel}, {label}, {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(root / "classes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "Class Name (str)",
                "Class ID (int)",
                "Coarse Class Name (str)",
                "Coarse Class ID (int)",
                "Iconic Image Path (str)",
                "Product Description Path (str)",
            ]
        )
        for label, (name, _, _) in enumerate(_PRODUCTS):
            writer.writerow([name, label, name, label, "", ""])
    return root


def _render(rng: np.random.Generator, colour: tuple[int, int, int], shape: str, size: int) -> np.ndarray:
    top = rng.integers(40, 220, 3)
    bottom = rng.integers(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=1)
    # Shelf edges: horizontal bars at random heights.
    for y in rng.integers(0, size, 2):
        image[y : y + size // 20] = rng.integers(60, 200, 3)
    image = image.astype(np.uint8)
    tint = np.clip(np.asarray(colour) + rng.integers(-25, 26, 3), 0, 255).tolist()
    cx, cy = (int(v) for v in rng.integers(size // 3, 2 * size // 3, 2))
    scale = float(rng.uniform(0.22, 0.36)) * size
    angle = float(rng.uniform(-35, 35))
    dark = [int(c * 0.45) for c in tint]
    if shape == "round":
        cv2.circle(image, (cx, cy), int(scale), tint, -1, cv2.LINE_AA)
        cv2.circle(image, (cx, cy - int(scale)), max(2, int(scale / 8)), (30, 80, 60), -1)
    elif shape == "long":
        cv2.ellipse(image, (cx, cy), (int(scale * 1.4), int(scale * 0.35)), angle, 0, 360, tint, -1, cv2.LINE_AA)
    else:
        w, h = {"can": (0.7, 1.3), "box": (0.9, 1.5), "cup": (0.9, 0.9)}[shape]
        box = cv2.boxPoints(((cx, cy), (scale * w * 1.4, scale * h * 1.4), angle)).astype(np.int32)
        cv2.fillConvexPoly(image, box, tint, cv2.LINE_AA)
        # A printed label band distinguishes packages of similar colour.
        band = cv2.boxPoints(((cx, cy), (scale * w * 1.4, scale * 0.3), angle)).astype(np.int32)
        cv2.fillConvexPoly(image, band, dark if shape != "cup" else (40, 160, 40), cv2.LINE_AA)
    gain = rng.uniform(0.7, 1.3)
    noisy = image.astype(np.float32) * gain + rng.normal(0, 6, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)
