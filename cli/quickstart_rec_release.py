"""The release check of the basket recommender in ``shelfedge quickstart``: convert, parity, bench.

The same chain a release of the image model goes through, on the recommender the first half
trained: ``convert`` for the profile (the encoder quantized under the profile's NDCG@10 budget,
every candidate verified through ``sdk.Recommender``), a reference of the fp32 student saved on
the TensorFlow path, ``parity`` of the chosen bundle on the profile's runtime against it (the
profile's tolerances), and ``recommend()`` timed end to end against ``budgets.p99_recommend_ms``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli import log
from cli._rec_reference import make_reference
from sdk.profiles import HardwareProfile
from sdk.qa.rec_bench import bench_recommenders
from sdk.qa.rec_reference_spec import RecDatasetSpec, select_cases
from sdk.rec_datasets import RecDataset
from sdk.recommender import Recommender


def release_stages(
    dataset: RecDataset, data_spec: str, student_dir: Path, profile: HardwareProfile, out: Path
) -> tuple[dict[str, Any], list[dict[str, str]], bool]:
    """Convert, reference, parity and bench; returns the JSON record, summary rows and the verdict.

    Raises:
        ConfigError, ConversionError, ParityError, BackendUnavailableError: from the stages.
    """
    from converters.convert.rec_pipeline import RecConvertConfig, convert_recommender, rec_plan
    from converters.convert.rec_source import RecSource
    from sdk.qa.rec_parity import run_rec_parity

    log(f"[rec] convert for {profile.id}")
    plan = rec_plan(profile)
    report = convert_recommender(
        RecSource.open(student_dir, dataset.name),
        plan,
        dataset,
        out / "convert",
        RecConvertConfig(),
        log=lambda m: log(f"[rec convert] {m}"),
    )
    chosen = report.chosen_variant
    spec = RecDatasetSpec.of(dataset, data_spec, split="test", limit=0, seed=0)
    reference = make_reference(student_dir, dataset, spec, out / "reference", bundle_out=out / "bundles")
    cases = select_cases(dataset, "test")
    [parity] = run_rec_parity(
        [report.chosen.path], reference, cases, profile=profile, runtimes=[profile.runtime], resamples=200, log=log
    )
    bench = _bench(report.chosen.path, dataset, profile)
    budget = profile.budgets.p99_recommend_ms
    within = budget is None or bench.latency.p99_ms <= budget
    m = parity.metrics
    ndcg = chosen.evaluation.test_report.metric("ndcg@10").format(3)
    rows = [
        {
            "stage": f"recommender convert ({profile.id})",
            "result": f"chose {chosen.precision.value} {plan.format.value}: {chosen.size_bytes / 1e6:.3f} MB "
            f"({chosen.size_vs_fp32:.2f}x fp32), test NDCG@10 {ndcg} "
            f"({-chosen.drop_pt:+.2f} pt val vs fp32, budget {plan.max_drop_pt:g} pt)",
        },
        {
            "stage": "recommender parity vs fp32 student",
            "result": f"{parity.status} on {parity.runtime.value} (overlap@10 {m['overlap_at_10']:.3f}, "
            f"NDCG@10 vs ref {m['ndcg_at_10_vs_reference']:.3f}, "
            f"held-out {100 * m['heldout_ndcg_ratio']:.1f} % of ref)",
        },
        {
            "stage": f"recommender bench ({bench.label})",
            "result": f"recommend() p50 {bench.latency.p50_ms:.3f} ms, p99 {bench.latency.p99_ms:.3f} ms"
            + (f", budget {budget:g} ms {'pass' if within else 'FAIL'}" if budget is not None else ""),
        },
    ]
    record = {
        "convert": {"report": str(out / "convert" / profile.id / "report.json"), "chosen": str(report.chosen.path)},
        "reference": str(reference.path),
        "parity": parity.to_dict(),
        "bench": bench.to_dict(),
    }
    return record, rows, parity.passed and within


def _bench(bundle: Path, dataset: RecDataset, profile: HardwareProfile) -> Any:
    ids = dataset.interactions.catalogue.ids
    histories = [[ids[i] for i in h] for h in dataset.split.test.histories]
    log(f"[rec] bench recommend() of {bundle.name} on {profile.runtime.value}")
    with Recommender.from_bundle(bundle, profile=profile, threads=1) as rec:
        [row] = bench_recommenders(
            {f"{bundle.name} on {rec.info.runtime.value}": rec}, histories, blocks=10, calls_per_block=30
        )
    return row
