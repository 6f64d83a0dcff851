"""Distillation inputs: the teacher bundle, its logits on the student's augmented views, MAC counts.

The teacher's soft targets must describe the crop the student is trained on. Both sides draw
view ``v`` of photo ``i`` with :func:`converters.training.teacher_data.augment` seeded by
``(seed, v, i)`` on the decoded uint8 photo, and then apply their own preprocessing (the
student's keeps the teacher's field of view, only the size and normalisation differ; see
:func:`student_preprocessing`). So the teacher logits of view ``v`` and the student features
of view ``v`` come from the same pixels.

Teacher logits are cached (float16, one file per view) under the distillation cache. When the
bundle is the one ``shelfedge teacher`` wrote, its report and frozen-feature cache sit next to
it, and the views match (same augmentation and seed), only the teacher's trained top runs on
those cached features: a few seconds instead of the whole backbone per view.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.models.efficientnet_lite import MEAN_RGB, STD_RGB
from converters.training.loop import Log
from converters.training.teacher_data import Augment, cache_key, extract_features, view_batches
from converters.training.teacher_train import inference_fn, predict
from sdk.bundle import Bundle, sha256_tree
from sdk.data import ImageDataset
from sdk.enums import ColorOrder, ModelFormat, Task
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing
from sdk.qa.evaluation import evaluate

if TYPE_CHECKING:
    import keras

# The teacher's report and model file names (converters.training.teacher writes them next to bundles/).
TEACHER_REPORT = "teacher.json"
TEACHER_MODEL = "teacher.keras"
# Cached features are float16: logits from them may differ from the end-to-end model a little.
_CACHE_CHECK_TOLERANCE = 0.05
_BATCH = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class Teacher:
    """A teacher Keras reference bundle, and ``shelfedge teacher``'s report when it made this bundle."""

    bundle: Bundle
    preprocessing: Preprocessing
    sha256: str
    report: dict[str, Any] | None
    report_dir: Path | None

    @property
    def train_seconds(self) -> float | None:
        return None if self.report is None else self.report.get("train_seconds")

    def augment(self) -> Augment | None:
        """The teacher's augmentation recipe from its report, or None when unknown."""
        try:
            data = dict(self.report["config"]["augment"])  # type: ignore[index]
            return Augment(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except (TypeError, KeyError, ValueError):
            return None


def open_teacher(path: str | Path, class_names: Sequence[str]) -> Teacher:
    """Open and check the teacher bundle; find ``teacher.json`` two levels up if it describes this bundle.

    Raises:
        ConfigError: not a Keras image-classification bundle with preprocessing, or its class
            count differs from the dataset's.
        BundleError, ManifestError: see :meth:`sdk.bundle.Bundle.open`.
    """
    bundle = Bundle.open(path)
    m = bundle.manifest
    if m.format is not ModelFormat.KERAS or m.preprocessing is None or m.task is not Task.IMAGE_CLASSIFICATION:
        raise ConfigError(
            f"{bundle.path}: a teacher must be a Keras image-classification reference bundle with preprocessing "
            f"(this one is {m.format.value}, {m.task.value}); pass e.g. out/teacher/bundles/teacher-keras-fp32"
        )
    classes = m.outputs[0].shape[-1]
    if classes != len(class_names):
        raise ConfigError(
            f"{bundle.path}: the teacher has {classes} outputs but the dataset has {len(class_names)} "
            "classes; distil on the dataset the teacher was trained on"
        )
    sha = sha256_tree(bundle.model_path)
    report, report_dir = None, bundle.path.parent.parent
    try:
        candidate = json.loads((report_dir / TEACHER_REPORT).read_text(encoding="utf-8"))
        # Only a report of this very model counts: the bundle records the sha of the model file
        # it was exported from, and that file sits next to the report.
        if sha256_tree(report_dir / Path(candidate["model"]).name) == m.provenance.source_sha256:
            report = candidate
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Teacher(
        bundle=bundle,
        preprocessing=m.preprocessing,
        sha256=sha,
        report=report,
        report_dir=report_dir if report is not None else None,
    )


def load_teacher_model(teacher: Teacher) -> keras.Model:
    """The teacher's Keras model (inference only).

    Raises:
        ConfigError: the model file cannot be loaded by Keras.
    """
    import keras

    try:
        return keras.saving.load_model(teacher.bundle.model_path, compile=False)
    except (ValueError, OSError, TypeError) as e:
        raise ConfigError(
            f"{teacher.bundle.model_path}: cannot load the teacher with Keras ({e}); "
            "re-export the teacher bundle with formats=['keras']"
        ) from e


def student_preprocessing(teacher: Preprocessing, size: int) -> Preprocessing:
    """The student's preprocessing: the teacher's field of view at ``size``, EfficientNet-Lite normalisation.

    Keeping the teacher's resize mode and crop fraction means a view's teacher logits and
    student input show the same part of the photo; RGB and ``(x - 127) / 128`` are what the
    student's ImageNet backbone was trained with.
    """
    return Preprocessing(
        size=(size, size),
        color_order=ColorOrder.RGB,
        resize_mode=teacher.resize_mode,
        crop_fraction=teacher.crop_fraction,
        interpolation=teacher.interpolation,
        mean=MEAN_RGB,
        std=STD_RGB,
    )


def teacher_logits(
    teacher: Teacher,
    model: keras.Model,
    images: Sequence[np.ndarray],
    *,
    views: int,
    seed: int,
    augment: Augment,
    data_sha: str,
    cache_dir: Path,
    log: Log,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The teacher's logits on views 0..views-1 of every photo: float16 (views, N, classes), and how they were made.

    Views the teacher's own feature cache holds go through the teacher's top only (checked
    against the full model on a few photos first); the rest run the full teacher once.
    """
    started = time.perf_counter()
    classes = int(model.output_shape[-1])
    key = cache_key(
        {
            "teacher": teacher.sha256,
            "data": data_sha,
            "seed": seed,
            "augment": dataclasses.asdict(augment),
            "preprocessing": teacher.preprocessing.to_dict(),
        }
    )
    prefix = cache_dir / f"teacher-logits-{key}"
    from_top = _logits_from_teacher_cache(teacher, model, images, views, seed, augment, data_sha, prefix, log)
    full = inference_fn(model)
    logits = extract_features(
        full,
        images,
        teacher.preprocessing,
        views=views,
        seed=seed,
        config=augment,
        batch_size=_BATCH,
        feature_shape=(classes,),
        cache_prefix=prefix,
        log=log,
        label="teacher logits",
    )
    seconds = time.perf_counter() - started
    info = {
        "views_from_teacher_feature_cache": from_top,
        "views": views,
        "seconds": round(seconds, 1),
        "cache": str(prefix) + "-view*.npy",
    }
    return logits, info


def _logits_from_teacher_cache(
    teacher: Teacher,
    model: keras.Model,
    images: Sequence[np.ndarray],
    views: int,
    seed: int,
    augment: Augment,
    data_sha: str,
    prefix: Path,
    log: Log,
) -> int:
    """Fill our logits cache from the teacher's frozen-feature cache where possible; how many views came from it."""
    import keras

    report = teacher.report
    if report is None or teacher.report_dir is None:
        return 0
    try:
        config, cut = report["config"], report["frozen_up_to"]
        if config["seed"] != seed or teacher.augment() != augment or report["data_hash"] != data_sha:
            log(
                "[distill] the teacher's feature cache holds other views (seed/augmentation/data); "
                "running the full teacher"
            )
            return 0
        key = cache_key(
            {
                "variant": config["variant"],
                "size": config["input_size"],
                "cut": cut,
                "augment": config["augment"],
                "seed": config["seed"],
                "data": data_sha,
                "preprocessing": report["preprocessing"],
            }
        )
        base = keras.Model(model.input, model.get_layer(cut).output)
        top = keras.Model(model.get_layer(cut).output, model.output)
    except (KeyError, TypeError, ValueError) as e:
        log(f"[distill] cannot use the teacher's feature cache ({e}); running the full teacher")
        return 0
    top_fn, full_fn = inference_fn(top), inference_fn(model)
    used = 0
    for view in range(views):
        ours = Path(f"{prefix}-view{view}.npy")
        theirs = teacher.report_dir / "cache" / f"train-{key}-view{view}.npy"
        if ours.is_file():
            continue
        try:
            features = np.load(theirs, mmap_mode="r")
        except (OSError, ValueError):
            break
        if features.shape[0] != len(images) or features.shape[1:] != tuple(base.output_shape[1:]):
            break
        logits = predict(top_fn, np.asarray(features), batch_size=64)
        if used == 0 and not _same_as_full(full_fn, logits, images, view, seed, augment, teacher.preprocessing):
            log(f"[distill] {theirs.name} does not match the teacher on fresh views; running the full teacher")
            return 0
        ours.parent.mkdir(parents=True, exist_ok=True)
        partial = ours.with_name(f".{ours.name}.partial.npy")
        np.save(partial, logits.astype(np.float16))
        partial.replace(ours)
        used += 1
    if used:
        log(f"[distill] teacher logits of {used} view(s) from the teacher's own feature cache (top only)")
    return used


def _same_as_full(
    full_fn: Any,
    logits: np.ndarray,
    images: Sequence[np.ndarray],
    view: int,
    seed: int,
    augment: Augment,
    pre: Preprocessing,
    count: int = 4,
) -> bool:
    """The top on cached features agrees with the whole teacher on freshly drawn views of a few photos."""
    batch = next(view_batches(list(images[:count]), pre, view=view, seed=seed, config=augment, batch_size=count))
    fresh = np.asarray(full_fn(batch))
    return bool(np.abs(fresh - logits[: len(fresh)]).max() <= _CACHE_CHECK_TOLERANCE * max(1.0, np.abs(fresh).max()))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one inference, counted from the Conv2D, DepthwiseConv2D,
    SeparableConv2D and Dense layers at the model's input size (BatchNorm, activations,
    pooling and additions are left out: they are a rounding error next to these).

    Raises:
        ConfigError: a counted layer has an unknown (dynamic) dimension; build the model with a fixed input size.
    """
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        if not isinstance(
            layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D, keras.layers.Dense)
        ):
            continue
        in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
        if any(d is None for d in (*in_shape[1:], *out_shape[1:])):
            raise ConfigError(
                f"count_macs: layer {layer.name!r} has a dynamic shape {in_shape} -> {out_shape}; "
                "build the model with a fixed input size"
            )
        out_positions = int(np.prod(out_shape[1:-1], dtype=np.int64))  # H*W for convs, 1 for a 2-D Dense
        in_channels = int(in_shape[-1])
        if isinstance(layer, keras.layers.Dense):
            total += out_positions * in_channels * int(layer.units)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += out_positions * kh * kw * in_channels * int(layer.depth_multiplier)
        elif isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            depthwise = in_channels * int(layer.depth_multiplier)
            total += out_positions * (kh * kw * depthwise + depthwise * int(layer.filters))
        else:
            kh, kw = layer.kernel_size
            total += out_positions * kh * kw * (in_channels // int(layer.groups)) * int(layer.filters)
    return int(total)


def teacher_evaluation(teacher: Teacher, val: ImageDataset, data_sha: str, cache_dir: Path, log: Log) -> dict[str, Any]:
    """The teacher bundle's val logits through :func:`sdk.qa.evaluation.evaluate` (cached per teacher and data).

    Returns:
        ``{"top1", "top5", "ran", "seconds", "logits"}``; ``logits`` is (N, classes) float32.
    """
    key = cache_key({"teacher": teacher.sha256, "data": data_sha, "split": "val"})
    npy, meta = cache_dir / f"teacher-val-{key}.npy", cache_dir / f"teacher-val-{key}.json"
    try:
        summary = json.loads(meta.read_text(encoding="utf-8"))
        logits = np.load(npy)
        if logits.shape[0] == len(val):
            return {**summary, "logits": logits}
    except (OSError, ValueError):
        pass
    log(f"[distill] evaluating the teacher {teacher.bundle.path} on {len(val)} val photos through sdk.load")
    ev = evaluate(teacher.bundle, val)
    summary = {"top1": ev.top1, "top5": ev.top5, "ran": ev.ran.to_dict(), "seconds": round(ev.seconds, 1)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(npy, ev.logits.astype(np.float32))
    meta.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return {**summary, "logits": ev.logits}
