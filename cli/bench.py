"""``shelfedge bench --bundle B [--bundle B2 ...] [--profile P] [--baseline TEACHER]``.

Runs every runtime that can open each bundle (or only the profile's runtime, when it can,
unless ``--all-runtimes``), prints progress lines on stderr and ends with one summary table;
writes bench.json, bench.md, PNG plots and report.html under ``--out``. Exits 1 when a
profile budget fails, so CI can gate on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cli import data_dir, emit, log
from cli._bench_rec import run_recommendation_bench
from sdk import synthetic
from sdk.bundle import Bundle
from sdk.data import ImageDataset, load_split
from sdk.enums import RUNTIMES_FOR_FORMAT, Runtime, Task
from sdk.errors import BackendUnavailableError, ConfigError
from sdk.profiles import Budgets, HardwareProfile, load_profile
from sdk.qa.bench import BenchConfig, bench_bundle
from sdk.qa.bench_compare import Contender, interleaved_speedups
from sdk.qa.bench_report import bench_document, summary_table, write_report
from sdk.qa.bench_result import BenchResult, Comparison

_T = TypeVar("_T")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# --quick: enough to see every number once (CI smoke tests), not to compare them.
_QUICK = BenchConfig(
    warmup=3,
    repeats=20,
    min_time_s=0.1,
    throughput_time_s=0.1,
    e2e_repeats=10,
    overhead_blocks=10,
    overhead_calls=3,
    speedup_blocks=10,
    speedup_calls=3,
    cold_start_runs=1,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle", action="append", required=True, metavar="BUNDLE", help="bundle directory; repeat for several"
    )
    parser.add_argument("--profile", help="hardware profile id or YAML: its runtime, device, threads and budgets")
    parser.add_argument(
        "--runtime", help="only this runtime (default: the profile's, else every runtime that can open the bundle)"
    )
    parser.add_argument(
        "--all-runtimes",
        action="store_true",
        help="with --profile, still run every runtime that can open each bundle (the profile's "
        "options apply to its own runtime; its budgets to every row)",
    )
    parser.add_argument("--device", help="CPU | GPU | NPU | TPU | AUTO (default: the profile's, else CPU)")
    parser.add_argument("--threads", type=int, help="inference threads (default: the profile's, else each runtime's)")
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="DIR|FILE",
        help="a dataset root (with val.txt), a folder of images, or image files (default: "
        "../shared/data/grocery val split, else generated synthetic photos)",
    )
    parser.add_argument("--max-images", type=int, default=32, help="at most N images (default 32)")
    parser.add_argument(
        "--dataset",
        help="recommendation bundles: the histories to time (baskets, movielens, a CSV; default: drawn "
        "from the bundle's own catalogue by popularity)",
    )
    parser.add_argument("--repeats", type=int, help="at least N timed calls per latency loop (default 200)")
    parser.add_argument("--min-time", type=float, help="at least S seconds per latency loop (default 2)")
    parser.add_argument("--batch-sizes", default="1,4,8", help="throughput batch sizes (default 1,4,8)")
    parser.add_argument("--cold-start-runs", type=int, help="fresh processes per runtime (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a rough smoke-test pass: short loops, one fresh process (numbers are not stable)",
    )
    parser.add_argument("--no-cold-start", action="store_true", help="skip cold start (memory still runs once)")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--baseline",
        metavar="BUNDLE",
        help="bundle to compare against in the same run (e.g. the teacher's keras bundle)",
    )
    parser.add_argument("--out", default="out/bench", help="report directory (default out/bench)")
    parser.epilog = (
        "example: shelfedge bench --bundle out/quickstart/bundles/shelf_cnn-tflite-fp32 "
        "--baseline out/quickstart/bundles/shelf_cnn-keras-fp32 --profile x86-kiosk-cpu. "
        "--json prints bench.json without the per-call samples."
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    profile = load_profile(args.profile) if args.profile else None
    bundles = [Bundle.open(path) for path in args.bundle]  # a bad path fails before any timing
    recommendation = [b.manifest.task is Task.RECOMMENDATION for b in bundles]
    if any(recommendation):
        if not all(recommendation) or args.baseline:
            raise ConfigError(
                "bench recommendation bundles on their own (recommend() is timed, not image inference), "
                "without --baseline"
            )
        return run_recommendation_bench(args, bundles, profile)
    baseline_bundle = Bundle.open(args.baseline) if args.baseline else None
    # Which runtime runs each bundle is settled before any timing: a mismatch fails at once.
    plan = [(b, _runtimes(b, None if args.all_runtimes else profile, args.runtime)) for b in bundles]
    paths, labels, names, images = _images(args, out)
    log(f"[bench] {images['count']} {images['origin']} images from {images['source']}")
    config = _config(args, paths)
    done: dict[tuple[str, Runtime], BenchResult] = {}
    ran: dict[int, Contender] = {}  # id(result) -> what ran, for the interleaved speed-ups

    def measure(bundle: Bundle, runtime: Runtime, chosen: HardwareProfile | None) -> BenchResult | None:
        key = (str(bundle.path.resolve()), runtime)
        if key not in done:
            # Top-1 on the bench images only means something when the ids are the bundle's classes.
            own = labels if labels is not None and names == bundle.labels else None
            log(f"[bench] {bundle.path.name} on {runtime.value}")
            try:
                done[key] = bench_bundle(
                    bundle,
                    runtime,
                    profile=chosen,
                    device=args.device,
                    config=dataclasses.replace(config, labels=own),
                    progress=lambda m: log(f"[bench]   {m}"),
                )
            except BackendUnavailableError as e:
                log(f"[bench] skipping {bundle.path.name} on {runtime.value}: {e}")
                return None
            ran[id(done[key])] = Contender(bundle=bundle, runtime=runtime, profile=chosen)
        return done[key]

    baseline = None
    if baseline_bundle is not None:
        # The baseline (the teacher) is not meant to fit the device: no budgets for it.
        teacher_profile = dataclasses.replace(profile, budgets=Budgets()) if profile else None
        baseline = measure(baseline_bundle, RUNTIMES_FOR_FORMAT[baseline_bundle.manifest.format][0], teacher_profile)
    results = [r for b, chosen_runtimes in plan for rt in chosen_runtimes if (r := measure(b, rt, profile))]
    if not results:
        raise BackendUnavailableError(
            "no bundle could run on any installed runtime; see the lines above and 'shelfedge devices'"
        )
    failed = [f"{r.label}: {c.describe()}" for r in results for c in r.budgets if c.passed is False]
    if baseline is not None and baseline not in results:
        results.insert(0, baseline)
    comparisons = _comparisons(results, baseline, ran, config, args.device)
    document = bench_document(results, config=config, images=images, baseline=baseline, comparisons=comparisons)
    written = write_report(out, document, results, comparisons, baseline=baseline, plots=not args.no_plots, log=log)
    table = summary_table(results, comparisons, baseline)

    def text() -> str:
        host = document["host"]
        lines = [
            f"\nshelfedge bench: {len(results)} bundle x runtime runs on {host['cpu']}, "
            f"{host['logical_cores']} logical cores",
            "",
            table,
            "",
        ]
        if baseline:
            lines.append(f"baseline: {baseline.label} (infer p50 {baseline.inference.p50_ms:.3f} ms)")
        lines += [f"budget FAIL: {line}" for line in failed]
        lines.append("report: " + ", ".join(str(p) for p in written.values()))
        return "\n".join(lines)

    emit(args, _without_samples(document), text)
    return 1 if failed else 0


def _config(args: argparse.Namespace, paths: list[Path]) -> BenchConfig:
    base = _QUICK if args.quick else BenchConfig()
    return dataclasses.replace(
        base,
        repeats=args.repeats or base.repeats,
        min_time_s=base.min_time_s if args.min_time is None else args.min_time,
        cold_start_runs=args.cold_start_runs or base.cold_start_runs,
        batch_sizes=_batch_sizes(args.batch_sizes),
        threads=args.threads,
        images=tuple(paths),
        cold_start=not args.no_cold_start,
        measure_memory=not args.no_memory,
    )


def _comparisons(
    results: list[BenchResult],
    baseline: BenchResult | None,
    ran: dict[int, Contender],
    config: BenchConfig,
    device: str | None,
) -> list[Comparison | None]:
    """Each result against the baseline, its inference speed-up timed interleaved with it."""
    if baseline is None:
        return [None] * len(results)
    others = [r for r in results if r is not baseline]
    log(
        f"[bench] speed-up vs {baseline.label}: {len(others) + 1} models in {config.speedup_blocks} round-robin "
        f"blocks of {config.speedup_calls} calls each"
    )
    speedups = interleaved_speedups(ran[id(baseline)], [ran[id(r)] for r in others], config=config, device=device)
    by_result = {id(r): s for r, s in zip(others, speedups, strict=True)}
    for r in others:
        log(f"[bench]   {r.label}: {by_result[id(r)].describe()}")
    return [r.compare_to(baseline, interleaved=by_result[id(r)]) if r is not baseline else None for r in results]


def _runtimes(bundle: Bundle, profile: HardwareProfile | None, runtime: str | None) -> list[Runtime]:
    """The runtimes to bench ``bundle`` on: --runtime, else the profile's, else every one that reads it.

    Raises:
        ConfigError: --runtime is unknown, or the profile's runtime cannot open the bundle's format
            (running another runtime under the profile's name would report numbers it never asked for).
    """
    allowed = RUNTIMES_FOR_FORMAT[bundle.manifest.format]
    if runtime:
        try:
            chosen = Runtime.parse(runtime, "--runtime")
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if chosen not in allowed:
            log(
                f"[bench] skipping {bundle.path.name}: {chosen.value} cannot open a "
                f"{bundle.manifest.format.value} bundle"
            )
            return []
        return [chosen]
    if profile is not None:
        if profile.runtime not in allowed:
            fmt = bundle.manifest.format.value
            readers = ", ".join(r.value for r in allowed)
            raise ConfigError(
                f"bundle {bundle.path} is in the {fmt} format, but profile {profile.id!r} runs "
                f"{profile.runtime.value}, which cannot open it; use a profile for {readers}, or pass "
                f"--runtime {allowed[0].value} (or --all-runtimes) to bench it there"
            )
        return [profile.runtime]
    return list(allowed)


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as e:
        raise ConfigError(f"--batch-sizes must be comma-separated integers like 1,4,8, got {text!r}") from e
    return sizes


def _images(
    args: argparse.Namespace, out: Path
) -> tuple[list[Path], tuple[int, ...] | None, tuple[str, ...] | None, dict[str, Any]]:
    """(paths, class ids or None, class names or None, description for the report)."""
    given = [Path(p) for p in args.images or ()]
    if len(given) == 1 and given[0].is_dir() and not (given[0] / "val.txt").is_file():
        files = sorted(p for p in given[0].rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(
                f"{given[0]} holds no {'/'.join(_IMAGE_SUFFIXES)} images; pass image files or a dataset root"
            )
        files = _spread(files, args.max_images)
        return files, None, None, {"origin": "folder", "source": str(given[0]), "count": len(files)}
    if given and not (len(given) == 1 and given[0].is_dir()):
        missing = [str(p) for p in given if not p.is_file()]
        if missing:
            raise ConfigError(f"--images: no such file(s): {', '.join(missing)}")
        return given, None, None, {"origin": "files", "source": "command line", "count": len(given)}
    root = given[0] if given else data_dir(None, required=False)
    origin = "given dataset" if given else "shared dataset"
    if not (root / "val.txt").is_file():
        root, origin = synthetic.generate(out / "synthetic-data", train_per_class=1, val_per_class=4), "synthetic"
    dataset = _spread_dataset(load_split(root, "val"), args.max_images)
    return (
        list(dataset.paths),
        dataset.labels,
        dataset.class_names,
        {"origin": origin, "source": f"{root} (val split)", "count": len(dataset)},
    )


def _spread(items: list[_T], count: int) -> list[_T]:
    if count < 1:
        raise ConfigError(f"--max-images must be at least 1, got {count}")
    if len(items) <= count:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def _spread_dataset(dataset: ImageDataset, count: int) -> ImageDataset:
    # Every class first (balanced), then evenly spaced: a few images still cover the classes.
    per_class = max(1, math.ceil(count / max(1, len(dataset.class_names))))
    balanced = dataset.balanced(per_class)
    chosen = _spread(list(range(len(balanced))), count)
    return balanced.subset([int(i) for i in chosen])


def _without_samples(document: dict[str, Any]) -> dict[str, Any]:
    def strip(result: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in result.items() if k != "inference_samples_ms"}

    return {**document, "results": [strip(r) for r in document["results"]]}
