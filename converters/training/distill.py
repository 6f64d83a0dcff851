"""Knowledge distillation: the teacher bundle -> a smaller EfficientNet-Lite student (Keras reference bundle).

The student (an ImageNet-pretrained EfficientNet-Lite with a new classifier, usually a smaller
variant and/or a lower input resolution than the teacher) is trained like the teacher: its early
stages stay frozen and their features are cached for several augmented views of every training
photo; only its top is trained, on ``alpha * T^2 * KL(teacher || student at temperature T) +
(1 - alpha) * CE(hard labels)``. The teacher's logits are computed on the very same augmented
views (see :mod:`converters.training.distill_data`). ``kd=False`` trains the same student on the hard
labels alone: the baseline distillation has to beat.

Output, per student, under ``out_dir/<name>/`` (``name`` e.g. ``student-lite0-160-kd``):
``student.keras``, ``labels.txt``, ``val_logits.npy``, ``bundles/<name>-keras-fp32/`` and
``distill.json`` (written last). Caches (teacher logits, student features) live in
``out_dir/cache``, shared by the KD student and its baseline. A finished student is reused
while its config, the teacher's sha256 and the data hash are unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from converters.models.efficientnet_lite import VARIANTS
from converters.models.source import ModelSource
from converters.training import distill_data as dd
from converters.training.distill_config import (
    DEFAULT_CONFIG,
    LABELS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    SCHEMA_VERSION,
    VAL_LOGITS_FILE,
    DistillConfig,
)
from converters.training.distill_run import run
from converters.training.loop import Log, format_seconds
from converters.training.teacher_config import data_hash
from converters.training.teacher_data import Augment
from sdk.bundle import Bundle
from sdk.data import load_split
from sdk.errors import BundleError, ConfigError, ManifestError

__all__ = [
    "LABELS_FILE",
    "MODEL_FILE",
    "REPORT_FILE",
    "VAL_LOGITS_FILE",
    "DistillConfig",
    "DistillResult",
    "ModelStats",
    "distill",
    "distill_for_convert",
    "parse_student_spec",
]

_SPEC = re.compile(r"^(?:efficientnet[_-]?)?(lite[0-9])(?:@(\d+))?$", re.IGNORECASE)
VALID_SPECS = "lite0, lite1, lite2 (or efficientnet_lite0, ...), optionally with an input size: lite0@160"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelStats:
    """One row of the comparison: a model's size, cost and val accuracy."""

    name: str
    variant: str | None
    input_size: int
    params: int
    macs: int
    val_top1: float | None
    val_top5: float | None
    train_seconds: float | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillResult:
    """What :func:`distill` produced (or found already produced)."""

    name: str
    config: DistillConfig
    student_dir: Path
    model_path: Path
    bundle_path: Path
    report_path: Path
    student: ModelStats
    teacher: ModelStats
    teacher_agreement: float | None
    cached: bool
    config_hash: str
    teacher_sha256: str
    data_hash: str

    def val_logits(self) -> np.ndarray:
        """The student bundle's val logits (as evaluated through ``sdk``), (N, classes) float32."""
        return np.load(self.student_dir / VAL_LOGITS_FILE)


def parse_student_spec(spec: str) -> tuple[str, int | None]:
    """``'lite0'``, ``'efficientnet_lite0'``, ``'lite0@160'`` -> (variant, input size or None).

    Raises:
        ConfigError: not a valid spec; the message lists the valid ones.
    """
    match = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if match is None or match.group(1).lower() not in VARIANTS:
        raise ConfigError(f"student {spec!r} is not a valid student spec; use {VALID_SPECS}")
    size = int(match.group(2)) if match.group(2) else None
    if size is not None and size < 32:
        raise ConfigError(f"student {spec!r}: input size must be >= 32; use {VALID_SPECS}")
    return match.group(1).lower(), size


def distill_for_convert(
    student_spec: str,
    teacher_bundle: Path,
    data_root: Path,
    out_dir: Path,
    input_size: tuple[int, int],
    log: Log = print,
) -> ModelSource:
    """The ``--distill-from`` hook of ``shelfedge convert``: distil (or reuse) a student, return it as the source.

    The student's input size is the one in ``student_spec`` (``lite0@160``) if given, else
    the profile's ``input_size`` (which must be square). Other settings are
    :class:`DistillConfig`'s defaults, with KD.

    Raises:
        ConfigError: bad spec (the message lists the valid ones), non-square profile size, bad data.
        BundleError, ManifestError: the teacher bundle is unusable.
        BackendUnavailableError: PyTorch or the weight package is missing.
    """
    variant, size = parse_student_spec(student_spec)
    if size is None:
        height, width = (int(v) for v in input_size)
        if height != width:
            raise ConfigError(
                f"the profile's input size {height}x{width} is not square; an EfficientNet-Lite student "
                f"is, so name its size in the student spec, e.g. {variant}@{min(height, width)}"
            )
        size = height
    result = distill(teacher_bundle, data_root, out_dir, DistillConfig(variant=variant, input_size=size), log)
    return ModelSource.from_bundle(result.bundle_path)


def distill(
    teacher_bundle: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    config: DistillConfig = DEFAULT_CONFIG,
    log: Log = print,
    *,
    force: bool = False,
) -> DistillResult:
    """Train (or reuse) one student on the teacher's soft targets (or, with ``kd=False``, hard labels only).

    Args:
        teacher_bundle: the teacher's Keras reference bundle directory.
        data_root: a Grocery Store layout dataset (the teacher's).
        out_dir: writes ``<name>/`` and ``cache/`` here.
        config: the student recipe.
        log: receives progress lines.
        force: train again even when a matching finished student exists.

    Raises:
        ConfigError: invalid config, missing/empty data, a teacher that is not a Keras
            classification bundle or does not match the dataset's classes.
        BundleError, ManifestError: the teacher bundle is damaged.
        BackendUnavailableError: PyTorch or the EfficientNet-Lite weight package is missing.
        ConversionError: the weights do not fit, or exporting the student bundle failed.
    """
    config.validate()
    root, out = Path(data_root), Path(out_dir)
    train, val = load_split(root, "train"), load_split(root, "val")
    if len(train) == 0:
        raise ConfigError(f"{root / 'train.txt'}: lists no photos; distillation needs training data")
    teacher = dd.open_teacher(teacher_bundle, train.class_names)
    data_sha = data_hash(root)
    config = dataclasses.replace(config, augment=config.augment or teacher.augment() or Augment())
    if not config.kd:
        # Temperature and alpha play no part in a hard-label run; fixing them lets one baseline
        # serve every KD setting (same hash, reused).
        config = dataclasses.replace(config, temperature=1.0, alpha=0.0)
    config_sha = config.hash()
    student_dir = out / config.name
    cached = None if force else _finished(student_dir, config_sha, teacher.sha256, data_sha)
    if cached is not None:
        log(
            f"[distill] reusing {student_dir}: same config ({config_sha[:12]}), teacher ({teacher.sha256[:12]}) "
            f"and data ({data_sha[:12]})"
        )
        return _result(student_dir, config, cached, cached=True)
    report = run(teacher, train, val, student_dir, out / "cache", config, data_sha, log)
    report.update(
        config=config.to_dict(),
        config_hash=config_sha,
        teacher_sha256=teacher.sha256,
        data_hash=data_sha,
        schema_version=SCHEMA_VERSION,
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    (student_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    log(
        f"[distill] {config.name}: val top-1 {_pct(report['student']['val_top1'])} "
        f"(teacher {_pct(report['teacher']['val_top1'])}) in {format_seconds(report['student']['train_seconds'])}; "
        f"wrote {student_dir / REPORT_FILE}"
    )
    return _result(student_dir, config, report, cached=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _finished(student_dir: Path, config_sha: str, teacher_sha: str, data_sha: str) -> dict[str, Any] | None:
    try:
        report = json.loads((student_dir / REPORT_FILE).read_text(encoding="utf-8"))
        same = (report.get("config_hash"), report.get("teacher_sha256"), report.get("data_hash")) == (
            config_sha,
            teacher_sha,
            data_sha,
        )
        if not same or not (student_dir / MODEL_FILE).is_file() or not (student_dir / VAL_LOGITS_FILE).is_file():
            return None
        Bundle.open(student_dir / report["bundle"])
        return report
    except (OSError, ValueError, KeyError, BundleError, ManifestError):
        # Anything missing or damaged: train again (the feature caches make that the cheap part).
        return None


def _result(student_dir: Path, config: DistillConfig, report: dict[str, Any], *, cached: bool) -> DistillResult:
    def stats(data: dict[str, Any]) -> ModelStats:
        return ModelStats(**{f.name: data.get(f.name) for f in dataclasses.fields(ModelStats)})

    return DistillResult(
        name=config.name,
        config=config,
        student_dir=student_dir,
        model_path=student_dir / MODEL_FILE,
        bundle_path=student_dir / report["bundle"],
        report_path=student_dir / REPORT_FILE,
        student=stats(report["student"]),
        teacher=stats(report["teacher"]),
        teacher_agreement=report["student"].get("teacher_agreement"),
        cached=cached,
        config_hash=report["config_hash"],
        teacher_sha256=report["teacher_sha256"],
        data_hash=report["data_hash"],
    )
