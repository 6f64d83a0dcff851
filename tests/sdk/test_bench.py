"""Benchmarks: structure and sanity of what is measured, never timing thresholds (DESIGN.md).

Tiny settings throughout: a few timed calls per loop, one fresh process where one is needed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import cli
from sdk.enums import ModelFormat, Runtime
from sdk.errors import ConfigError
from sdk.profiles import Budgets, load_profile
from sdk.qa import report_plots
from sdk.qa.bench import BenchConfig, bench_bundle
from sdk.qa.bench_compare import Contender, interleaved_speedups
from sdk.qa.bench_stats import interleaved_blocks, latency_stats, ratio_stats

TINY = BenchConfig(
    warmup=2,
    repeats=15,
    min_time_s=0.0,
    batch_sizes=(1, 2),
    throughput_time_s=0.02,
    e2e_repeats=5,
    cold_start=False,
    measure_memory=False,
    overhead_blocks=4,
    overhead_calls=2,
)
CASES = [
    pytest.param(ModelFormat.TFLITE, "litert", marks=pytest.mark.litert, id="litert"),
    pytest.param(ModelFormat.OPENVINO, "openvino", marks=pytest.mark.openvino, id="openvino"),
    pytest.param(ModelFormat.ONNX, "onnxruntime", marks=pytest.mark.onnxruntime, id="onnxruntime"),
]


def _ordered(stats) -> bool:
    values = [stats.min_ms, stats.p50_ms, stats.p90_ms, stats.p95_ms, stats.p99_ms, stats.max_ms]
    return values == sorted(values) and stats.p50_ci_low_ms <= stats.p50_ms <= stats.p50_ci_high_ms


@pytest.mark.parametrize(("fmt", "runtime"), CASES)
def test_bench_bundle_succeeds_with_sane_numbers_on_each_runtime(exported_bundles, sample_images, fmt, runtime) -> None:
    config = dataclasses.replace(TINY, images=tuple(sample_images), labels=(0, 1, 2, 3, 0))
    lines: list[str] = []
    result = bench_bundle(exported_bundles[fmt], runtime, config=config, progress=lines.append)
    assert result.runtime == runtime and result.session["precision"] == "fp32"
    assert result.inference.count >= 15 and _ordered(result.inference)
    assert len(result.inference_samples_ms) == result.inference.count
    e2e = result.end_to_end
    assert e2e is not None and _ordered(e2e.latency) and e2e.images == 5
    assert e2e.latency.count >= TINY.e2e_repeats
    # The stages are medians of the classifier's own split of each call, so they add up to about
    # the median end-to-end time: not more than it (plus the clock's slack), and most of it.
    stages = e2e.decode_ms + e2e.preprocess_ms + e2e.inference_ms + e2e.postprocess_ms
    assert 0.3 * e2e.latency.p50_ms <= stages <= 1.5 * e2e.latency.p50_ms + 0.05
    assert e2e.accuracy in {i / 5 for i in range(6)}  # top-1 over the 5 labelled images
    assert [(p.mode, p.batch) for p in result.throughput if p.mode == "sync"] == [("sync", 1), ("sync", 2)]
    assert all(p.images_per_s > 0 for p in result.throughput)
    if runtime == "openvino":
        assert any(p.mode == "async" and p.requests >= 1 for p in result.throughput)
    overhead = result.overhead
    assert overhead is not None and overhead.ratio > 0 and overhead.pooled_ratio > 0
    assert overhead.max_abs_diff <= 1e-5  # the bare loop ran the very same model
    assert result.bundle_size_bytes == exported_bundles[fmt].size_bytes()
    assert result.cold_start is None and result.memory is None and result.budgets == ()
    assert any("inference-only" in line for line in lines)
    json.dumps(result.to_dict())  # JSON-ready as it is


@pytest.mark.litert
def test_bench_bundle_succeeds_with_cold_start_and_memory_from_a_fresh_process(exported_bundles) -> None:
    config = dataclasses.replace(
        TINY,
        cold_start=True,
        cold_start_runs=1,
        measure_memory=True,
        end_to_end=False,
        bare_loop=False,
        memory_inferences=3,
    )
    result = bench_bundle(exported_bundles[ModelFormat.TFLITE], config=config)
    cold, memory = result.cold_start, result.memory
    assert cold is not None and len(cold.runs) == 1
    assert cold.cold_start_ms == pytest.approx(cold.load_ms + cold.first_inference_ms, rel=1e-6)
    assert cold.cold_start_ms == pytest.approx(cold.runs[0]["cold_start_ms"])  # the median of one run is that run
    assert cold.runs[0]["inferences"] == 3  # the worker ran the inferences it was asked for
    assert memory is not None and memory.peak_rss_mb >= memory.baseline_rss_mb > 0
    assert memory.delta_mb == pytest.approx(memory.peak_rss_mb - memory.baseline_rss_mb)
    assert memory.method.startswith(("VmHWM", "ru_maxrss"))


@pytest.mark.onnxruntime
def test_bench_bundle_fails_budgets_with_an_absurdly_small_budget(exported_bundles) -> None:
    profile = dataclasses.replace(
        load_profile("onnxruntime-cpu"), budgets=Budgets(p95_latency_ms=1e-6, peak_memory_mb=1e-6, bundle_size_mb=1e-9)
    )
    config = dataclasses.replace(TINY, end_to_end=False, bare_loop=False)
    result = bench_bundle(exported_bundles[ModelFormat.ONNX], profile=profile, config=config)
    by_name = {c.budget: c for c in result.budgets}
    assert by_name["p95_latency_ms"].passed is False
    assert by_name["p95_latency_ms"].observed == result.inference.p95_ms
    assert by_name["bundle_size_mb"].passed is False and by_name["bundle_size_mb"].allowed == 1e-9
    assert by_name["peak_memory_mb"].passed is None  # memory was not measured: not a failure
    assert result.budgets_passed is False and result.summary_row()["budgets"] == "FAIL"
    assert "FAIL" in by_name["p95_latency_ms"].describe()


@pytest.mark.litert
@pytest.mark.onnxruntime
def test_compare_to_succeeds_with_speedup_and_size_ratios(exported_bundles) -> None:
    config = dataclasses.replace(TINY, end_to_end=False, bare_loop=False, batch_sizes=(1,))
    student = bench_bundle(exported_bundles[ModelFormat.TFLITE], config=config)
    teacher = bench_bundle(exported_bundles[ModelFormat.ONNX], config=config)
    comparison = student.compare_to(teacher)
    assert comparison.infer_p50_speedup == pytest.approx(teacher.inference.p50_ms / student.inference.p50_ms)
    assert comparison.size_ratio == pytest.approx(student.bundle_size_bytes / teacher.bundle_size_bytes)
    assert comparison.throughput_ratio > 0 and comparison.e2e_p50_speedup is None
    elsewhere = dataclasses.replace(teacher, host={**teacher.host, "cpu": "another CPU"})
    with pytest.raises(ConfigError, match="one host"):
        student.compare_to(elsewhere)


def test_latency_stats_succeeds_with_ordered_percentiles_and_a_median_ci() -> None:
    samples = np.random.default_rng(0).gamma(4.0, 0.5, 2000)
    stats = latency_stats(samples)
    assert _ordered(stats) and stats.count == 2000
    assert stats.p50_ms == pytest.approx(np.median(samples))
    assert 0 < stats.p50_ci_half_width_pct < 5 and stats.iqr_over_p50 > 0
    assert latency_stats([2.0]).p50_ci_low_ms == latency_stats([2.0]).p50_ci_high_ms == 2.0


@pytest.mark.litert
@pytest.mark.onnxruntime
def test_interleaved_speedups_succeed_with_the_requested_blocks_and_a_spread_around_the_median(
    exported_bundles,
) -> None:
    config = dataclasses.replace(TINY, speedup_blocks=6, speedup_calls=2)
    baseline = Contender(bundle=exported_bundles[ModelFormat.ONNX], runtime=Runtime.ONNXRUNTIME)
    student = Contender(bundle=exported_bundles[ModelFormat.TFLITE], runtime=Runtime.LITERT)
    (speedup,) = interleaved_speedups(baseline, [student], config=config)
    assert speedup.blocks == 6 and speedup.calls_per_block == 2
    assert speedup.p25 <= speedup.median <= speedup.p75 and speedup.ci95_low <= speedup.median <= speedup.ci95_high
    result = bench_bundle(
        student.bundle,
        "litert",
        config=dataclasses.replace(config, end_to_end=False, bare_loop=False, batch_sizes=(1,)),
    )
    teacher = bench_bundle(
        baseline.bundle,
        "onnxruntime",
        config=dataclasses.replace(config, end_to_end=False, bare_loop=False, batch_sizes=(1,)),
    )
    comparison = result.compare_to(teacher, interleaved=speedup)
    assert comparison.infer_p50_speedup == speedup.median and comparison.speedup_method == "interleaved"
    assert comparison.to_dict()["infer_speedup"]["blocks"] == 6
    assert comparison.describe_speedup().startswith(f"{speedup.median:.2f}x (IQR")


def test_interleaved_blocks_succeed_rotating_the_order_and_timing_each_call() -> None:
    order: list[str] = []
    loops = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timed = interleaved_blocks(loops, blocks=3, calls_per_block=2, warmup=1)
    assert order[:3] == list("abc")  # warm-up
    assert order[3:] == list("aabbcc") + list("bbccaa") + list("ccaabb")
    assert {name: [len(block) for block in blocks] for name, blocks in timed.items()} == {n: [2, 2, 2] for n in "abc"}


def test_ratio_stats_succeed_with_median_iqr_and_ci_of_the_given_ratios() -> None:
    stats = ratio_stats([3.0, 1.0, 2.0, 4.0, 5.0], calls_per_block=4)
    assert (stats.median, stats.p25, stats.p75, stats.blocks) == (3.0, 2.0, 4.0, 5)
    assert stats.ci95_low <= 3.0 <= stats.ci95_high
    with pytest.raises(ConfigError, match="no block ratios"):
        ratio_stats([], calls_per_block=1)


def test_latency_stats_fails_with_no_samples() -> None:
    with pytest.raises(ConfigError, match="no samples"):
        latency_stats([])


@pytest.mark.parametrize(
    "changes", [{"repeats": 0}, {"batch_sizes": ()}, {"min_time_s": -1.0}, {"images": (b"x",), "labels": (1, 2)}]
)
def test_bench_config_fails_with_bad_values(changes) -> None:
    with pytest.raises(ConfigError, match="BenchConfig"):
        BenchConfig(**changes)


def test_report_plots_succeed_with_pngs_and_a_static_html_page(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    points = [
        {"label": "a", "runtime": "litert", "precision": "int8", "latency_ms": 1.0, "accuracy": 0.9},
        {"label": "b", "runtime": "openvino", "precision": "fp32", "latency_ms": 2.0, "accuracy": 0.95},
    ]
    assert report_plots.latency_vs_accuracy(points, tmp_path / "acc.png").stat().st_size > 0
    assert report_plots.latency_vs_accuracy([{**p, "accuracy": None} for p in points], tmp_path / "no.png") is None
    assert not (tmp_path / "no.png").exists()
    markdown = "# T\n\n| a | b<c |\n|---|---|\n| 1 | `x` |\n\n![plot](acc.png)\n\n- one\n- two\n"
    page = report_plots.html_page("t", markdown, tmp_path / "r.html").read_text()
    assert "<table>" in page and "<td>1</td>" in page and "b&lt;c" in page and "<code>x</code>" in page
    assert '<img src="acc.png"' in page and "<li>two</li>" in page and "<script" not in page


@pytest.mark.litert
@pytest.mark.tensorflow
def test_cli_bench_succeeds_writing_json_markdown_plots_and_html(
    exported_bundles, sample_images, tmp_path, capsys, monkeypatch
) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.setitem(cli.COMMANDS, "bench", ("cli.bench", "benchmark bundles"))
    out = tmp_path / "bench"
    code = cli.main(
        [
            "bench",
            "--bundle",
            str(exported_bundles[ModelFormat.TFLITE].path),
            "--baseline",
            str(exported_bundles[ModelFormat.KERAS].path),
            "--quick",
            "--no-cold-start",
            "--no-memory",
            "--batch-sizes",
            "1,2",
            "--images",
            *map(str, sample_images),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "bench.json").read_text())
    assert report["schema_version"] == 1 and {"host", "versions", "config", "results"} <= set(report)
    assert [(r["runtime"], r["comparison"] is None) for r in report["results"]] == [
        ("tensorflow", True),
        ("litert", False),
    ]
    assert report["baseline"] == "tiny-keras-fp32 on tensorflow" and report["images"]["count"] == 5
    comparison = report["results"][1]["comparison"]
    spread = comparison["infer_speedup"]
    assert comparison["speedup_method"] == "interleaved" and spread["blocks"] == 10  # --quick's blocks
    assert spread["p25"] <= spread["median"] <= spread["p75"]
    assert comparison["infer_p50_speedup"] == pytest.approx(spread["median"], abs=1e-4)  # rounded to 4 vs 5 places
    assert "inference_samples_ms" not in printed["results"][0] and report["results"][0]["inference_samples_ms"]
    for name in ("bench.md", "report.html", "latency.png", "throughput.png", "e2e_stages.png"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert "<table>" in page and 'src="latency.png"' in page
    assert "| tiny-tflite-fp32" in (out / "bench.md").read_text()


@pytest.mark.onnxruntime
def test_cli_bench_fails_with_exit_1_when_a_budget_fails(
    exported_bundles, sample_images, tmp_path, capsys, monkeypatch
) -> None:
    source = Path(load_profile("onnxruntime-cpu").source).read_text()
    tiny = source.replace("id: onnxruntime-cpu", "id: tiny-budget")
    tiny = tiny.replace("p95_latency_ms: 40", "p95_latency_ms: 1.0e-6")
    assert tiny.count("tiny-budget") == 1 and "1.0e-6" in tiny
    (tmp_path / "tiny-budget.yaml").write_text(tiny)
    monkeypatch.setitem(cli.COMMANDS, "bench", ("cli.bench", "benchmark bundles"))
    code = cli.main(
        [
            "bench",
            "--bundle",
            str(exported_bundles[ModelFormat.ONNX].path),
            "--profile",
            str(tmp_path / "tiny-budget.yaml"),
            "--quick",
            "--no-cold-start",
            "--no-memory",
            "--no-plots",
            "--batch-sizes",
            "1",
            "--images",
            str(sample_images[0]),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "budget FAIL" in capsys.readouterr().out and "p95_latency_ms" in (tmp_path / "o" / "bench.md").read_text()


@pytest.mark.onnxruntime
def test_cli_bench_fails_with_exit_2_when_the_profile_runs_another_runtime_than_the_bundle_format(
    exported_bundles, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "bench", ("cli.bench", "benchmark bundles"))
    code = cli.main(
        [
            "bench",
            "--bundle",
            str(exported_bundles[ModelFormat.ONNX].path),
            "--profile",
            "android-arm64",
            "--quick",
            "--no-cold-start",
            "--no-memory",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "onnx format" in err and "'android-arm64' runs litert" in err and "--runtime onnxruntime" in err
    assert not (tmp_path / "o" / "bench.json").exists()
