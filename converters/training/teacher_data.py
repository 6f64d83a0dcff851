"""Teacher training data: decoded photos, augmented views, and the frozen backbone's cached features.

Every tensor the teacher sees goes through :func:`sdk.preprocess.preprocess` with the
preprocessing recorded in its bundle. Augmentation (random resized crop, horizontal flip,
colour jitter) happens before that, on the decoded uint8 RGB photo, as a camera would deliver a
differently framed or lit shot; view 0 of every image is the un-augmented photo, i.e. exactly
the tensor evaluation uses.

The frozen part of the backbone runs once per view; its output feature maps are kept as
float16 (on disk under the cache directory, so a re-run with other top-training settings skips
this, the most expensive stage).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.training.loop import Log, RateLog
from sdk import preprocess as pp
from sdk.enums import Layout
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.tensors import TensorSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class Augment:
    """How augmented views are drawn (view 0 is never augmented).

    ``crop_scale`` bounds the crop's share of the photo's area; ``crop_ratio`` its aspect ratio
    (width / height, drawn log-uniformly); ``jitter`` the relative change of brightness, contrast
    and saturation (each factor in ``[1 - jitter, 1 + jitter]``).
    """

    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    jitter: float = 0.3


def input_spec(pre: Preprocessing) -> TensorSpec:
    """The float32 NHWC input spec the teacher is fed with (batch dimension dynamic)."""
    return TensorSpec(name="image", shape=(-1, *pre.size, 3), dtype="float32", layout=Layout.NHWC)


def decode_all(paths: Sequence[Path], log: Log, label: str) -> list[np.ndarray]:
    """Decode every photo once (uint8 RGB, as ``sdk.preprocess.decode_image`` returns it).

    Raises:
        ConfigError: a photo is missing or unreadable; the message names it.
    """
    images: list[np.ndarray] = []
    progress = RateLog(log, f"decode {label}", len(paths))
    for path in paths:
        try:
            images.append(pp.decode_image(path))
        except InputError as e:
            raise ConfigError(
                f"{path}: cannot use this {label} photo ({e}); fix or remove it from the split file"
            ) from e
        progress.advance(1)
    return images


def augment(image: np.ndarray, rng: np.random.Generator, config: Augment) -> np.ndarray:
    """One randomly framed, flipped and lit version of a uint8 RGB photo (same dtype, any size)."""
    h, w = image.shape[:2]
    crop = image
    for _ in range(10):  # the torchvision RandomResizedCrop recipe: retry until the box fits
        area = h * w * rng.uniform(*config.crop_scale)
        ratio = math.exp(rng.uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = image[y0 : y0 + ch, x0 : x0 + cw]
            break
    if config.flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    if config.jitter <= 0:
        return np.ascontiguousarray(crop)
    low, high = 1.0 - config.jitter, 1.0 + config.jitter
    out = crop.astype(np.float32)
    out *= rng.uniform(low, high)  # brightness
    grey = out @ np.asarray([0.299, 0.587, 0.114], np.float32)
    out = (out - grey.mean()) * rng.uniform(low, high) + grey.mean()  # contrast
    grey = out @ np.asarray([0.299, 0.587, 0.114], np.float32)
    out = (out - grey[..., None]) * rng.uniform(low, high) + grey[..., None]  # saturation
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def view_batches(
    images: Sequence[np.ndarray],
    pre: Preprocessing,
    *,
    view: int,
    seed: int,
    config: Augment,
    batch_size: int,
) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches of one view of every image, in order.

    View 0 is the plain photo; view ``v > 0`` is augmented with a generator seeded by
    ``(seed, v, index)``, so a view does not depend on batching or on which views ran before.
    The next batch is prepared in a thread while the caller runs the model on this one
    (OpenCV releases the GIL).
    """
    spec = input_spec(pre)

    def build(start: int) -> np.ndarray:
        chunk = []
        for i in range(start, min(start + batch_size, len(images))):
            image = images[i]
            if view > 0:
                image = augment(image, np.random.default_rng([seed, view, i]), config)
            chunk.append(image)
        return pp.preprocess_batch(chunk, pre, spec)

    starts = list(range(0, len(images), batch_size))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(build, starts[0]) if starts else None
        for k in range(len(starts)):
            assert pending is not None
            batch = pending.result()
            pending = pool.submit(build, starts[k + 1]) if k + 1 < len(starts) else None
            yield batch


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of everything that decides a feature cache's contents."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def extract_features(
    base: Callable[[np.ndarray], Any],
    images: Sequence[np.ndarray],
    pre: Preprocessing,
    *,
    views: int,
    seed: int,
    config: Augment,
    batch_size: int,
    feature_shape: tuple[int, ...],
    cache_prefix: Path | None,
    log: Log,
    label: str,
) -> np.ndarray:
    """Frozen-backbone features of ``views`` views of every image: float16 (views, N, *feature_shape).

    Each view is cached in its own file ``<cache_prefix>-view<v>.npy``, so a run with more
    views reuses the ones an earlier run computed. Files are written atomically: an
    interrupted run never leaves a half file behind.
    """
    features = np.empty((views, len(images), *feature_shape), np.float16)
    todo = []
    for view in range(views):
        if cache_prefix is not None and _load_view(Path(f"{cache_prefix}-view{view}.npy"), features[view], log, label):
            continue
        todo.append(view)
    if len(todo) < views:
        log(f"  {label}: reused {views - len(todo)} cached view(s) of {views}")
    progress = RateLog(log, f"features {label}", len(todo) * len(images))
    for k, view in enumerate(todo):
        start = 0
        for batch in view_batches(images, pre, view=view, seed=seed, config=config, batch_size=batch_size):
            features[view, start : start + len(batch)] = np.asarray(base(batch))
            start += len(batch)
            progress.advance(len(batch), f" (view {k + 1}/{len(todo)})")
        if cache_prefix is not None:
            path = Path(f"{cache_prefix}-view{view}.npy")
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial.npy")
            np.save(partial, features[view])
            partial.replace(path)
    return features


def _load_view(path: Path, out: np.ndarray, log: Log, label: str) -> bool:
    if not path.is_file():
        return False
    try:
        cached = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        log(f"  {label}: ignoring unreadable feature cache {path} ({e})")
        return False
    if cached.shape != out.shape or cached.dtype != out.dtype:
        log(
            f"  {label}: feature cache {path.name} is {cached.dtype}{cached.shape}, "
            f"expected {out.dtype}{out.shape}; recomputing"
        )
        return False
    out[...] = cached
    return True
