"""The second half of ``shelfedge quickstart``: convert for a profile -> parity -> bench -> summary.

The first half (``cli.quickstart``) picks the teacher and the model to ship and shows every
runtime agreeing on its fp32 exports; this half does what a release needs: the converted bundle
for the default profile, its parity against the model it was made from (all three tiers, the
profile's tolerances), and its latency next to the teacher's measured in the same run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cli import log
from sdk.bundle import Bundle
from sdk.data import ImageDataset
from sdk.enums import RUNTIMES_FOR_FORMAT
from sdk.profiles import Budgets, HardwareProfile
from sdk.qa.bench import BenchConfig, bench_bundle
from sdk.qa.bench_report import bench_document, summary_table, write_report

# Long enough for a usable median on a 2-core machine, short enough for a first run.
BENCH = BenchConfig(
    warmup=5,
    repeats=100,
    min_time_s=1.0,
    batch_sizes=(1, 4),
    throughput_time_s=0.5,
    e2e_repeats=30,
    cold_start_runs=1,
    async_throughput=False,
    bare_loop=False,
)


def convert_stage(source_bundle: Path, profile: HardwareProfile, data_root: Path, out: Path) -> Any:
    """``shelfedge convert`` of the source Keras bundle for ``profile``; returns the ConvertReport."""
    from converters.convert.pipeline import ConvertConfig, ModelSource, convert
    from converters.convert.plan import plan

    log(f"[quickstart] convert for {profile.id}")
    return convert(
        ModelSource.from_bundle(source_bundle),
        plan(profile),
        data_root,
        out / "convert",
        ConvertConfig(),
        log=lambda m: log(f"[convert] {m}"),
    )


def parity_stage(bundle: Bundle, reference_bundle: Path, val: ImageDataset, profile: HardwareProfile) -> list[Any]:
    """The chosen bundle on the profile's runtime vs the fp32 model it came from (computed now)."""
    from sdk.qa.parity_run import open_reference, run_parity

    log(f"[quickstart] parity of {bundle.path.name} against {reference_bundle.name}")
    reference = open_reference(reference_bundle, val, log=lambda m: log(f"[parity] {m}"))
    return run_parity([bundle.path], reference, val, profile=profile, log=log)


def bench_stage(
    bundle: Bundle, teacher: Bundle, profile: HardwareProfile, val: ImageDataset, out: Path
) -> tuple[Any, Any, Any]:
    """Bench the chosen bundle (profile runtime, budgets) and the teacher (TF reference) in one run."""
    images = tuple(val.paths[:16])
    config = dataclasses.replace(BENCH, images=images)
    say = lambda m: log(f"[bench]   {m}")  # noqa: E731
    log(f"[quickstart] bench {bundle.path.name} on {profile.runtime.value} and the teacher on tensorflow")
    teacher_profile = dataclasses.replace(profile, budgets=Budgets())  # the teacher is not meant to fit the device
    baseline = bench_bundle(
        teacher, RUNTIMES_FOR_FORMAT[teacher.manifest.format][0], profile=teacher_profile, config=config, progress=say
    )
    result = bench_bundle(bundle, profile=profile, config=config, progress=say)
    comparison = result.compare_to(baseline)
    document = bench_document(
        [baseline, result],
        config=config,
        images={"origin": "val", "source": str(val.root), "count": len(images)},
        baseline=baseline,
        comparisons=[None, comparison],
    )
    write_report(out / "bench", document, [baseline, result], [None, comparison], baseline=baseline, log=log)
    log(summary_table([baseline, result], [None, comparison], baseline))
    return result, baseline, comparison


def summary_rows(
    teacher: dict[str, Any],
    convert_report: Any,
    parity: list[Any],
    bench: tuple[Any, Any, Any],
    profile: HardwareProfile,
) -> list[dict[str, str]]:
    """The short end-of-run summary: one line per stage."""
    chosen = next(v for v in convert_report.variants if v.chosen)
    result, baseline, comparison = bench
    verdicts = [("PASS" if r.verdict.passed else "FAIL " + ", ".join(r.verdict.failed)) for r in parity]
    task = parity[0].metrics if parity else {}
    budgets = [c for c in result.budgets if c.passed is not None]
    return [
        {"stage": "teacher", "result": teacher["summary"]},
        {
            "stage": f"convert ({profile.id})",
            "result": f"chose {chosen.precision.value} {chosen.bundle.manifest.format.value}: "
            f"{chosen.bundle.size_bytes() / 1e6:.3f} MB ({chosen.size_vs_fp32:.2f}x the fp32 bundle of that format), "
            f"val top-1 {chosen.evaluation.top1:.3f} "
            f"({-chosen.drop_pt:+.2f} pt vs fp32, budget {convert_report.plan.max_drop_pt:g} pt)",
        },
        {
            "stage": "parity vs fp32 source",
            "result": f"{'; '.join(verdicts)} (top-1 agreement {task.get('top1_agreement', float('nan')):.3f}, "
            f"accuracy {100 * task.get('accuracy_ratio', float('nan')):.1f} % of the source)",
        },
        {
            "stage": f"bench ({result.label})",
            "result": f"infer p50 {result.inference.p50_ms:.2f} ms vs teacher {baseline.inference.p50_ms:.2f} ms "
            f"({comparison.infer_p50_speedup:.1f}x faster), "
            + (
                f"end to end p50 {result.end_to_end.latency.p50_ms:.2f} ms ({comparison.e2e_p50_speedup:.1f}x), "
                if result.end_to_end and comparison.e2e_p50_speedup
                else ""
            )
            + "budgets "
            + (
                "pass"
                if all(c.passed for c in budgets)
                else "FAIL " + ", ".join(c.budget for c in budgets if not c.passed)
            ),
        },
    ]
