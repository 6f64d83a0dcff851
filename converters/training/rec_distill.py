"""The recommendation student, trained on labels alone or distilled from the teacher's scores.

The loss of one example (a history and its true next / hidden item ``y``) is

    ``alpha * T^2 * KL(softmax(t_K / T) || softmax(s_K / T)) + (1 - alpha) * CE(y, softmax(s))``

where ``t_K`` are the teacher's logits of its top ``K`` items not already in the history
(:mod:`converters.training.rec_distill_data`, computed once and cached) and ``s_K`` the student's
logits of the same items: the softened distribution restricted to the items that matter, which also
teaches their order (a listwise ranking distillation). ``alpha = 0`` is the labels-only twin: the
same student, the same examples, the same epochs; KD must beat it to earn its place.

Epochs are chosen on ``split.valid`` (NDCG@10 through the shared evaluator); the test cases are
never read. A finished run is reused when ``student.json`` holds the same config and data hashes.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.models.config_checks import check_fields, config_hash
from converters.models.rec_student import RecStudent, Shape, StudentConfig, build_student, student_macs
from converters.training.loop import Log, StageTimer, format_seconds
from converters.training.rec_distill_data import soft_target_key, student_examples, teacher_soft_targets
from converters.training.rec_distill_fit import fit_student
from converters.training.recommender import REPORT_FILE as TEACHER_REPORT
from converters.training.recommender import TeacherRecResult
from converters.training.recommender_data import K, split_hash
from sdk.errors import ConfigError
from sdk.interaction_splits import RecSplit
from sdk.versions import host_info, tool_versions

__all__ = ["DistillRecConfig", "DistillRecResult", "distill_recommender"]

STUDENT_DIR = "student"
REPORT_FILE = "distill.json"
SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillRecConfig:
    """Everything that decides the trained student (and its config hash). Immutable, safe to share.

    Attributes:
        shape, dim, max_len, projection, tied, item_bias: the student
            (:class:`~converters.models.rec_student.StudentConfig`).
        epochs: epochs run (the best on validation is kept); the same for KD and its no-KD twin.
        batch_size: examples per step.
        lr: peak learning rate (warm-up over half an epoch, then cosine decay).
        weight_decay: AdamW decoupled weight decay.
        alpha: weight of the distillation term; 0 trains on labels alone (no teacher needed).
        temperature: softens teacher and student logits in the distillation term.
        top_k: how many of the teacher's best items per example the distillation term covers.
        seed: weights and batch order.
    """

    shape: Shape = "mean"
    dim: int = 32
    max_len: int = 50
    projection: bool = True
    tied: bool = True
    item_bias: bool = True
    epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.0
    alpha: float = 0.5
    temperature: float = 2.0
    top_k: int = 128
    seed: int = 0

    def student_config(self, n_items: int, kind: Literal["sequences", "baskets"]) -> StudentConfig:
        return StudentConfig(
            n_items=n_items,
            kind=kind,
            shape=self.shape,
            dim=self.dim,
            max_len=self.max_len,
            projection=self.projection,
            tied=self.tied,
            item_bias=self.item_bias,
            seed=self.seed,
        )

    def validate(self) -> None:
        """Raises:
        ConfigError: names the first bad field, its value and what is allowed.
        """
        self.student_config(1, "sequences").validate()
        checks = (
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("top_k", self.top_k >= 1, ">= 1"),
        )
        check_fields(self, checks)

    def hash(self) -> str:
        return config_hash(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillRecResult:
    """What :func:`distill_recommender` produced (or found). Immutable; ``student.score`` is thread-safe."""

    student: RecStudent
    student_dir: Path
    report_path: Path
    params: int
    macs_per_request: int
    best_epoch: int
    val_ndcg10: float
    train_seconds: float
    cached: bool
    config_hash: str
    data_hash: str


def distill_recommender(
    split: RecSplit,
    teacher: TeacherRecResult | Any | None,
    config: DistillRecConfig,
    out_dir: str | os.PathLike,
    log: Log = print,
    *,
    force: bool = False,
    soft_target_cache: str | os.PathLike | None = None,
) -> DistillRecResult:
    """Train (or reuse) the student on ``split``; write ``student/`` and ``distill.json`` under ``out_dir``.

    Args:
        split: training rows and validation cases (the test cases are not read).
        teacher: a :class:`TeacherRecResult`, or an object with ``model`` (Keras) and ``max_len``
            (``KerasRecModel``); may be None when ``config.alpha`` is 0.
        config: the student and its recipe.
        out_dir: output directory (created); the teacher's soft targets are cached here too.
        log: progress lines.
        force: train again even when a matching finished run is in ``out_dir``.
        soft_target_cache: where the teacher's soft targets are cached (default ``out_dir``); one
            folder shared by several students scores the training examples with the teacher once.

    Raises:
        ConfigError: the config is invalid, ``alpha > 0`` without a teacher, the teacher's catalogue
            differs from the split's, or the split has nothing to train on or no validation case.
    """
    config.validate()
    out = Path(out_dir)
    teacher_model, teacher_len, teacher_path, teacher_id = _open_teacher(teacher, config)
    data_sha = hashlib.sha256(f"{split_hash(split)}\0{teacher_id if config.alpha else ''}".encode()).hexdigest()
    config_sha = config.hash()
    cached = None if force else _finished_run(out, config_sha, data_sha)
    if cached is not None:
        log(f"[rec-distill] reusing {out / STUDENT_DIR}: same config ({config_sha[:12]}) and data ({data_sha[:12]})")
        return _result(out, cached, RecStudent.load(out / STUDENT_DIR), cached=True)
    if not len(split.valid):
        raise ConfigError(f"{split.interactions.source}: no validation cases; choosing the student's epoch needs them")
    timed = StageTimer(log, "[rec-distill]")
    window = max(config.max_len, teacher_len)
    histories, targets = timed("examples", lambda: student_examples(split, window))
    soft = None
    if config.alpha > 0:
        if int(teacher_model.output_shape[-1]) != split.n_items:
            raise ConfigError(
                f"distill_recommender: the teacher scores {teacher_model.output_shape[-1]} items, the data has "
                f"{split.n_items}; train the teacher on the same split"
            )
        key = soft_target_key(teacher_path, teacher_id, split, window)
        cache = Path(soft_target_cache or out)
        soft = timed(
            "teacher scores",
            lambda: teacher_soft_targets(
                teacher_model, teacher_len, histories, top_k=config.top_k, cache_dir=cache, cache_key=key, log=log
            ),
        )
    student_config = config.student_config(split.n_items, split.interactions.kind)
    encoder, model = build_student(student_config)
    macs = student_macs(student_config)
    log(
        f"[rec-distill] {config.shape} student, dim {config.dim}, window {config.max_len}, "
        f"{'KD alpha ' + str(config.alpha) + ' T ' + str(config.temperature) if config.alpha else 'labels only'}: "
        f"{model.count_params():,} parameters, {macs['total']:,} MACs per request; {len(targets):,} examples"
    )
    history, best = timed(
        "train", lambda: fit_student(encoder, model, student_config, split, histories, targets, soft, config, log)
    )
    student = RecStudent.from_models(encoder, model, student_config)
    student.save(out / STUDENT_DIR)
    run = {"examples": len(targets), "teacher": teacher_id if config.alpha else None, "macs_per_request": macs}
    report = _report(split, config, (config_sha, data_sha), student, run, history, best, timed)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(
        f"[rec-distill] best epoch {best['epoch']}: val NDCG@{K} {best[f'ndcg@{K}']:.4f}; "
        f"{format_seconds(report['train_seconds'])}; wrote {out / REPORT_FILE}"
    )
    return _result(out, report, student, cached=False)


def _report(
    split: RecSplit,
    config: DistillRecConfig,
    hashes: tuple[str, str],
    student: RecStudent,
    run: dict[str, Any],
    history: list[dict[str, float]],
    best: dict[str, float],
    timed: StageTimer,
) -> dict[str, Any]:
    """``distill.json``: config, hashes, data, cost, per-epoch validation, the best epoch, timings, host."""
    return {
        "schema_version": SCHEMA_VERSION,
        "student": STUDENT_DIR,
        "kind": split.interactions.kind,
        "config": dataclasses.asdict(config),
        "config_hash": hashes[0],
        "data_hash": hashes[1],
        "teacher": run["teacher"],
        "data": {"source": split.interactions.source, "split": split.describe(), "n_items": split.n_items},
        "examples": run["examples"],
        "params": student.params,
        "macs_per_request": run["macs_per_request"],
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "val": {key: value for key, value in best.items() if key != "epoch"} | {"cases": len(split.valid)},
        "history": history,
        "train_seconds": round(timed.seconds, 1),
        "timings_s": timed.timings,
        "host": host_info(),
        "tool_versions": tool_versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _open_teacher(teacher: Any, config: DistillRecConfig) -> tuple[Any, int, Path | None, str]:
    """(Keras model or None, its window, its file, an identity for hashes)."""
    if teacher is None:
        if config.alpha > 0:
            raise ConfigError(
                f"distill_recommender: alpha {config.alpha} needs a teacher; pass the trained teacher or set alpha=0"
            )
        return None, 0, None, ""
    if isinstance(teacher, TeacherRecResult):
        import keras

        try:
            report = json.loads((teacher.report_path.parent / TEACHER_REPORT).read_text(encoding="utf-8"))
            model = keras.saving.load_model(teacher.model_path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{teacher.model_path}: cannot load the teacher ({e}); train it again") from e
        return model, int(report["config"]["max_len"]), teacher.model_path, teacher.config_hash + teacher.data_hash
    model, max_len = getattr(teacher, "model", None), getattr(teacher, "max_len", None)
    if model is None or max_len is None:
        raise ConfigError(
            f"distill_recommender: teacher {type(teacher).__name__} has no model and max_len; pass a TeacherRecResult"
        )
    weights = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()
    return model, int(max_len), None, weights


def _finished_run(out: Path, config_sha: str, data_sha: str) -> dict[str, Any] | None:
    try:
        report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = report.get("config_hash") == config_sha and report.get("data_hash") == data_sha
    return report if same and (out / STUDENT_DIR / "student.json").is_file() else None


def _result(out: Path, report: dict[str, Any], student: RecStudent, *, cached: bool) -> DistillRecResult:
    return DistillRecResult(
        student=student,
        student_dir=out / STUDENT_DIR,
        report_path=out / REPORT_FILE,
        params=int(report["params"]),
        macs_per_request=int(report["macs_per_request"]["total"]),
        best_epoch=int(report["best_epoch"]),
        val_ndcg10=float(report["val"][f"ndcg@{K}"]),
        train_seconds=float(report["train_seconds"]),
        cached=cached,
        config_hash=report["config_hash"],
        data_hash=report["data_hash"],
    )
