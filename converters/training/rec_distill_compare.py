"""Does distillation earn its place? The student with KD vs its labels-only twin vs the teacher.

Trains (or reuses) the teacher, then the same student twice at equal epochs: with the teacher's
softened scores (``alpha`` > 0) and on labels only (``alpha`` = 0); ranks all three on the test
cases with the shared evaluator and compares them paired: KD vs labels-only, and each student vs
the teacher. The report says what share of the teacher's NDCG@10 each student keeps and at what
share of its compute per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters.models.rec_student import RecStudent
from converters.training.rec_compare import RecCompareConfig, RecComparison, compare_recommenders, teacher_for
from converters.training.rec_distill import DistillRecConfig, DistillRecResult, distill_recommender
from sdk.progress import Log
from sdk.rec_datasets import RecDataset

KD_NAME = "student, KD"
LABELS_NAME = "student, labels only"
TEACHER_NAME_PREFIX = "teacher"


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudentScorer:
    """A trained student behind the comparison's interface. Safe to share (``RecStudent.score`` is)."""

    name: str
    n_items: int
    params: Mapping[str, Any]
    student: RecStudent

    def score(self, histories: Any) -> np.ndarray:
        return self.student.score(histories)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillComparison:
    """The ranked comparison and the two trained students."""

    comparison: RecComparison
    kd: DistillRecResult
    labels_only: DistillRecResult

    def chosen(self) -> DistillRecResult:
        """The student to ship: the better one on validation NDCG@10 (never the test cases)."""
        return self.kd if self.kd.val_ndcg10 >= self.labels_only.val_ndcg10 else self.labels_only


def compare_distillation(
    dataset: RecDataset,
    config: DistillRecConfig,
    *,
    teacher_dir: Path,
    out_dir: Path,
    teacher_epochs: int | None = None,
    resamples: int = 1000,
    seed: int = 0,
    log: Log = print,
) -> DistillComparison:
    """Teacher, student with KD and its labels-only twin, ranked and compared on ``dataset``.

    Raises:
        ConfigError: a bad distillation config, or data with nothing to train on.
    """
    teacher, teacher_seconds = teacher_for(dataset, teacher_dir, epochs=teacher_epochs, log=log)
    kd = distill_recommender(dataset.split, teacher, config, out_dir / "student-kd", log)
    twin = distill_recommender(
        dataset.split, None, dataclasses.replace(config, alpha=0.0), out_dir / "student-labels", log
    )
    extra = [
        (teacher, teacher_seconds),
        (_scorer(LABELS_NAME, twin, teacher.params.get("macs")), twin.train_seconds),
        (_scorer(KD_NAME, kd, teacher.params.get("macs")), kd.train_seconds),
    ]
    comparison = compare_recommenders(
        dataset,
        RecCompareConfig(baselines=(), resamples=resamples, seed=seed),
        extra=extra,
        pairs=((KD_NAME, LABELS_NAME), (KD_NAME, teacher.name), (LABELS_NAME, teacher.name)),
        log=log,
    )
    return DistillComparison(comparison=comparison, kd=kd, labels_only=twin)


def _scorer(name: str, result: DistillRecResult, teacher_macs: int | None) -> StudentScorer:
    student = result.student
    params: dict[str, Any] = {
        "shape": student.config.get("shape"),
        "dim": student.config.get("dim"),
        "best_epoch": result.best_epoch,
        "params": result.params,
        "macs": result.macs_per_request,
    }
    if teacher_macs:
        params["macs_vs_teacher"] = float(f"{result.macs_per_request / teacher_macs:.3g}")
    return StudentScorer(name=name, n_items=student.n_items, params=params, student=student)
