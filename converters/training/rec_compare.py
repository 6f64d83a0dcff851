"""Recommenders side by side on one dataset: the baselines (and any other model), with error bars.

Every model is fitted on ``split.train``, its hyperparameters chosen on ``split.valid`` (NDCG@10),
and ranked on ``split.test`` by the shared evaluator (:mod:`sdk.qa.ranking`: items already in the
history excluded, ties against the target). Each row carries HR@10, NDCG@10, MRR, Recall@20 and
coverage@10 with 95% bootstrap intervals over baskets / users, and the best model by NDCG@10 is
compared with every other one on the same resamples, so the report says when two rows are not
different. Writes ``rec_compare.json`` (machines), ``rec_compare.md`` and ``ndcg.png`` (people).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.models.baselines import RecModel
from converters.models.baselines_tune import BASELINES, GRIDS, fit_baseline, tune, valid_ndcg
from converters.training.recommender import TeacherRecConfig, train_recommender_teacher
from converters.training.recommender_data import predict_scores
from sdk.errors import ConfigError
from sdk.progress import Log
from sdk.qa import report_plots
from sdk.qa.ranking import RankedCases, rank_cases
from sdk.qa.ranking_report import PairedComparison, RankingReport, markdown_table
from sdk.qa.ranking_stats import compare_ranked, ranking_report
from sdk.rec_datasets import RecDataset
from sdk.versions import tool_versions

SCHEMA_VERSION = 1
REPORT_JSON = "rec_compare.json"
REPORT_MD = "rec_compare.md"
PLOT = "ndcg.png"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecCompareConfig:
    """What to compare and how. Immutable; safe to share across threads.

    Attributes:
        baselines: names from ``BASELINES`` (popularity, item-knn, ease, als), in table order.
        tune: choose each baseline's hyperparameters on validation (its grid in ``GRIDS``);
            off: the defaults.
        resamples, seed: the bootstrap of the intervals and the paired comparisons.
    """

    baselines: tuple[str, ...] = tuple(BASELINES)
    tune: bool = True
    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [name for name in self.baselines if name not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareRow:
    """One model's line: what it is, what fitting and scoring cost, and its ranking report."""

    name: str
    params: Mapping[str, Any]
    fit_seconds: float
    valid_ndcg: float
    score_ms_per_case: float
    report: RankingReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": dict(self.params),
            "fit_seconds": round(self.fit_seconds, 3),
            "valid_ndcg@10": round(self.valid_ndcg, 5),
            "score_ms_per_case": round(self.score_ms_per_case, 4),
            "test": self.report.to_dict(),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecComparison:
    """Every row, the best model by test NDCG@10, and its paired comparison with each other row."""

    dataset: str
    note: str
    split: str
    rows: tuple[CompareRow, ...]
    best: str
    paired: tuple[PairedComparison, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "dataset": self.dataset,
            "data": self.note,
            "split": self.split,
            "best_by_ndcg@10": self.best,
            "rows": [row.to_dict() for row in self.rows],
            "paired_vs_best": [p.to_dict() for p in self.paired],
            "seconds": round(self.seconds, 1),
            "tool_versions": tool_versions(("numpy", "scipy", "implicit", "tensorflow", "keras")),
        }

    def markdown(self) -> str:
        costs = "\n".join(
            f"| {row.name} | {_params(row.params)} | {row.fit_seconds:.2f} | {row.valid_ndcg:.3f} | "
            f"{row.score_ms_per_case:.3f} |"
            for row in self.rows
        )
        paired = "\n\n".join(p.markdown() for p in self.paired)
        return (
            f"# Recommenders on {self.dataset}\n\n{self.note}\n\n{self.split}\n\n"
            f"## Test ranking quality\n\n{markdown_table([row.report for row in self.rows])}\n\n"
            f"## Cost and the settings chosen on validation\n\n"
            f"| model | params | fit s | valid NDCG@10 | score ms / case |\n|---|---|---|---|---|\n{costs}\n\n"
            f"## Paired comparisons (best by NDCG@10: {self.best})\n\n{paired}\n"
        )


def compare_recommenders(
    dataset: RecDataset,
    config: RecCompareConfig = RecCompareConfig(),
    *,
    extra: Sequence[tuple[RecModel, float]] = (),
    pairs: Sequence[tuple[str, str]] = (),
    log: Log = print,
) -> RecComparison:
    """Fit, choose and rank every baseline (plus ``extra`` models already fitted) on ``dataset``.

    Args:
        dataset: the data and its split (:func:`sdk.rec_datasets.open_rec_dataset`).
        config: which baselines, tuning, bootstrap.
        extra: other models (a trained teacher, a student) with the seconds their training took.
        pairs: ``(a, b)`` model names to compare paired; default: the best by NDCG@10 vs each other.
        log: one line per model.

    Raises:
        ConfigError: an unknown baseline, or a model whose scores are not finite.
        BackendUnavailableError: ALS without the ``implicit`` package.
    """
    started = time.perf_counter()
    split = dataset.split
    log(f"[rec-compare] {dataset.note}")
    log(f"[rec-compare] {split.describe()}")
    fitted: list[tuple[RecModel, float, float]] = []
    for name in config.baselines:
        if config.tune and GRIDS.get(name):
            result = tune(name, split, GRIDS[name])
            fitted.append((result.model, result.best.fit_seconds, result.best.valid_ndcg))
        else:
            begin = time.perf_counter()
            model = fit_baseline(name, split.train, split.n_items)
            fitted.append((model, time.perf_counter() - begin, valid_ndcg(model, split.valid)))
    fitted += [(model, seconds, valid_ndcg(model, split.valid)) for model, seconds in extra]
    rows, ranked = [], []
    for model, fit_seconds, valid in fitted:
        begin = time.perf_counter()
        ranking = rank_cases(model.score, split.test, split.n_items, name=model.name)
        score_ms = (time.perf_counter() - begin) * 1000 / max(len(split.test), 1)
        report = ranking_report(ranking, resamples=config.resamples, seed=config.seed)
        rows.append(
            CompareRow(
                name=model.name,
                params=model.params,
                fit_seconds=fit_seconds,
                valid_ndcg=valid,
                score_ms_per_case=score_ms,
                report=report,
            )
        )
        ranked.append(ranking)
        log(f"[rec-compare] {model.name}: test NDCG@10 {report.metric('ndcg@10').format()} (fit {fit_seconds:.1f} s)")
    best = max(range(len(rows)), key=lambda i: rows[i].report.metric("ndcg@10").value)
    index = {row.name: i for i, row in enumerate(rows)}
    unknown = [name for pair in pairs for name in pair if name not in index]
    if unknown:
        raise ConfigError(f"pairs name {', '.join(unknown)}, which were not ranked; ranked: {', '.join(index)}")
    chosen = [(index[a], index[b]) for a, b in pairs] or [(best, i) for i in range(len(rows)) if i != best]
    paired = tuple(_paired(ranked[a], ranked[b], config) for a, b in chosen)
    return RecComparison(
        dataset=dataset.name,
        note=dataset.note,
        split=split.method,
        rows=tuple(rows),
        best=rows[best].name,
        paired=paired,
        seconds=time.perf_counter() - started,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class KerasRecModel:
    """A trained Keras recommender behind the baselines' interface (``score(histories)``).

    Not safe to share across threads (one Keras model, called in place).
    """

    name: str
    n_items: int
    params: Mapping[str, Any]
    model: Any
    max_len: int

    def score(self, histories: Sequence[Any]) -> Any:
        return predict_scores(self.model, histories, self.max_len)


def teacher_for(
    dataset: RecDataset, out_dir: Path, *, epochs: int | None = None, log: Log = print
) -> tuple[KerasRecModel, float]:
    """Train the self-attention teacher on ``dataset`` (or reuse the cached run) and load it.

    Baskets get a window of 32 items (no basket here is longer), sequences the last 50.

    Returns:
        The model and the seconds its training took (the cached run's, when reused).

    Raises:
        ConfigError: the data has nothing to train on, or the cached model cannot be read.
    """
    import keras

    base = TeacherRecConfig(max_len=32 if dataset.interactions.kind == "baskets" else 50)
    config = dataclasses.replace(base, epochs=epochs) if epochs is not None else base
    result = train_recommender_teacher(dataset.split, config, out_dir, log)
    try:
        model = keras.saving.load_model(result.model_path)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{result.model_path}: cannot load the trained teacher ({e}); "
            "delete that folder or pass another --teacher-dir"
        ) from e
    kind = "SASRec" if dataset.interactions.kind == "sequences" else "set attention"
    params = {
        "dim": config.dim,
        "blocks": config.blocks,
        "window": config.max_len,
        "best_epoch": result.best_epoch,
        "macs": result.macs_per_request,
    }
    scorer = KerasRecModel(
        name=f"teacher ({kind})", n_items=dataset.split.n_items, params=params, model=model, max_len=config.max_len
    )
    return scorer, result.train_seconds


def write_comparison(comparison: RecComparison, out_dir: Path) -> dict[str, Path]:
    """Write ``rec_compare.json``, ``rec_compare.md`` and the NDCG@10 plot under ``out_dir``.

    Raises:
        BackendUnavailableError: matplotlib is missing (the JSON and Markdown are written first).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / REPORT_JSON, "markdown": out_dir / REPORT_MD}
    paths["json"].write_text(json.dumps(comparison.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(comparison.markdown(), encoding="utf-8")
    points = [(row.name, m.value, m.low, m.high) for row in comparison.rows for m in (row.report.metric("ndcg@10"),)]
    paths["plot"] = report_plots.metric_intervals(
        points, out_dir / PLOT, metric="NDCG@10", title=f"Test NDCG@10 on {comparison.dataset}"
    )
    return paths


def _paired(best: RankedCases, other: RankedCases, config: RecCompareConfig) -> PairedComparison:
    return compare_ranked(best, other, resamples=config.resamples, seed=config.seed)


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items()) or "-"
