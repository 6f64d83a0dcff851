"""The recommendation half of ``shelfedge quickstart``: the basket recommender, trained and checked.

On the Groceries baskets (or synthetic baskets with planted co-occurrences when ../shared is
absent): train the set-attention teacher, distil the small student (with KD and its labels-only
twin at equal epochs, compared with bootstrap intervals), package the chosen student for LiteRT,
OpenVINO and ONNX, and answer one basket through ``sdk.Recommender`` on every runtime. On the
synthetic data the planted partner of an item must come first: that is checked, not assumed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cli import log
from cli.quickstart_rec_release import release_stages
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat
from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile
from sdk.rec_datasets import RecDataset, open_rec_dataset
from sdk.recommender import Recommender

EXAMPLE_BASKET = ("whole milk", "yogurt")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecStages:
    """What the recommendation half produced; ``rows`` feed the quickstart's summary table."""

    dataset: str
    synthetic: bool
    comparison: dict[str, Any]
    bundles: dict[str, str]
    example: dict[str, Any]
    planted_top1: float | None
    release: dict[str, Any]
    rows: list[dict[str, str]]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recommender_stages(
    out: Path,
    profile: HardwareProfile,
    *,
    data: str = "baskets",
    teacher_epochs: int | None = None,
    student_epochs: int = 20,
) -> RecStages:
    """Train, distil, package, check and release-check the basket recommender under ``out/rec``.

    Raises:
        ConfigError: the data has nothing to train on, or the planted check fails on synthetic data.
    """
    from converters.training.rec_distill import DistillRecConfig
    from converters.training.rec_distill_compare import compare_distillation

    dataset = open_rec_dataset(data, fallback=True)
    log(f"[rec] {dataset.note}")
    config = DistillRecConfig(shape="mean", dim=32, max_len=32, epochs=student_epochs)
    result = compare_distillation(
        dataset,
        config,
        teacher_dir=out / "rec" / "teacher",
        out_dir=out / "rec",
        teacher_epochs=teacher_epochs,
        resamples=200,
        log=lambda m: log(f"[rec] {m}"),
    )
    comparison = result.comparison
    bundles = _package(dataset, result.chosen(), out / "rec" / "bundles")
    example = _example(dataset, bundles)
    planted = _planted_top1(dataset, bundles["onnx"]) if dataset.synthetic else None
    release, release_rows, released = release_stages(dataset, data, result.chosen().student_dir, profile, out / "rec")
    rows = _rows(comparison, bundles, example, planted, synthetic=dataset.synthetic) + release_rows
    return RecStages(
        dataset=dataset.name,
        synthetic=dataset.synthetic,
        comparison=comparison.to_dict(),
        bundles=bundles,
        example=example,
        planted_top1=planted,
        release=release,
        rows=rows,
        passed=bool(example["runtimes_agree"]) and released,
    )


def _package(dataset: RecDataset, chosen: Any, out: Path) -> dict[str, str]:
    from converters.export.rec_bundle import package_recommender
    from converters.models.rec_student import ENCODER_FILE
    from converters.training.rec_teacher_bundle import train_popularity

    student = chosen.student
    popularity = train_popularity(dataset)  # training rows only: cold start must not know the test items
    made = package_recommender(
        chosen.student_dir / ENCODER_FILE,  # the file on disk: the bundles' lineage names it
        student.item_table,
        student.item_bias,
        dataset.interactions.catalogue,
        popularity,
        out_dir=out,
        name=f"{dataset.name}-basket",
        kind=dataset.interactions.kind,
        formats=("tflite", "openvino", "onnx"),
        max_len=student.max_len,
        progress=lambda line: log(f"[rec] {line}"),
    )
    return {fmt.value: str(bundle.path) for fmt, bundle in made.items()}


def _example(dataset: RecDataset, bundles: dict[str, str]) -> dict[str, Any]:
    """One basket through every runtime that opens each bundle: the same top-3 everywhere."""
    ids = dataset.interactions.catalogue.ids
    basket = [i for i in EXAMPLE_BASKET if i in ids] or [ids[0]]
    answers: dict[str, list[str]] = {}
    for fmt, path in bundles.items():
        for runtime in RUNTIMES_FOR_FORMAT[ModelFormat(fmt)]:
            with Recommender.from_bundle(path, runtime=runtime, k=3) as rec:
                result = rec.recommend(basket)
                answers[f"{fmt} @ {rec.info.runtime.value}"] = [item.name for item in result.items]
    distinct = {tuple(a) for a in answers.values()}
    log(f"[rec] basket {basket} -> {next(iter(answers.values()))} on {len(answers)} runtime x format pairs")
    return {"basket": basket, "top3": answers, "runtimes_agree": len(distinct) == 1}


def _planted_top1(dataset: RecDataset, bundle: str) -> float:
    """Share of planted pairs (item 2k -> 2k+1) whose partner the packaged student ranks first.

    Raises:
        ConfigError: under 90% of the pairs come first: the chain lost what the data plants.
    """
    ids = dataset.interactions.catalogue.ids
    with Recommender.from_bundle(bundle, k=1) as rec:
        hits = [rec.recommend([ids[i]]).ids == (ids[i + 1],) for i in range(0, len(ids) - 1, 2)]
    share = float(np.mean(hits))
    log(f"[rec] planted partners ranked first: {sum(hits)} of {len(hits)} ({share:.0%})")
    if share < 0.9:
        raise ConfigError(
            f"quickstart: the packaged recommender ranks only {share:.0%} of the planted partners first "
            "(expected >= 90%); train longer (--rec-epochs) or report this"
        )
    return share


def _rows(
    comparison: Any, bundles: dict[str, str], example: dict[str, Any], planted: float | None, *, synthetic: bool
) -> list[dict[str, str]]:
    reports = {row.name: row.report for row in comparison.rows}
    ndcg = "; ".join(f"{name} {r.metric('ndcg@10').format(3)}" for name, r in reports.items())
    kd = next((p for p in comparison.paired if "KD" in p.model_a and "labels" in p.model_b), None)
    stand_in = ", synthetic stand-in" if synthetic and not comparison.dataset.startswith("synthetic") else ""
    rows = [
        {
            "stage": f"recommender ({comparison.dataset}{stand_in})",
            "result": f"test NDCG@10 [95% CI]: {ndcg}",
        },
        {
            "stage": "recommender bundles",
            "result": f"{', '.join(bundles)}; basket {example['basket']} -> "
            f"{next(iter(example['top3'].values()))}, "
            + ("every runtime agrees" if example["runtimes_agree"] else "RUNTIMES DISAGREE"),
        },
    ]
    if kd is not None:
        verdict = kd.verdict("ndcg@10").value
        said = verdict.replace("A better", "KD better").replace("B better", "labels-only better")
        rows[0]["result"] += f"; KD vs labels-only on NDCG@10: {said}"
    if planted is not None:
        rows.append({"stage": "planted co-occurrences", "result": f"{planted:.0%} of partners ranked first"})
    return rows
