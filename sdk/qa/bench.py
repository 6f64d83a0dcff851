"""``bench_bundle``: how fast and how big one bundle is on one runtime/device. Per bundle x runtime:

- inference-only latency: ``Model.run`` on preprocessed tensors after warm-up, until
  ``min_time_s`` and ``repeats`` calls (:mod:`sdk.qa.bench_stats` for the statistics);
- end to end: ``ImageClassifier.classify`` on encoded images held in memory (decode +
  preprocess + inference + softmax/top-k: exactly what apps run, no disk), with the stage split;
- throughput: ``run`` on batches, and parallel infer requests (``run_async``) on runtimes
  with :attr:`sdk.runtime.Capability.ASYNC_REQUESTS` (OpenVINO);
- overhead: the adapter against a bare loop over the backend's own API, interleaved
  (:mod:`sdk.qa.bench_bare`, on runtimes with :attr:`sdk.runtime.Capability.BARE_LOOP`);
- cold start and peak memory in fresh processes (:mod:`sdk.qa.bench_worker`);
- bundle size and the profile's budgets (:mod:`sdk.qa.bench_result`).

Everything runs sequentially in one process except the workers, which run after the
in-process session is closed, so no measurement competes with another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from sdk import preprocess as pp
from sdk.bundle import Bundle
from sdk.classifier import ImageClassifier
from sdk.encryption import model_bytes_for_load
from sdk.enums import Device, Runtime, Task
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError, InputError, ParityError
from sdk.loading import Model, load
from sdk.profiles import HardwareProfile, load_profile
from sdk.qa.bench_bare import Overhead, bare_step, measure_overhead
from sdk.qa.bench_result import (
    BenchResult,
    ColdStart,
    EndToEnd,
    Memory,
    ThroughputPoint,
    check_budgets,
)
from sdk.qa.bench_stats import gc_paused, latency_stats, time_calls, time_for
from sdk.qa.bench_worker import example_input, run_worker
from sdk.runtime import Capability, async_adapter, supports
from sdk.versions import host_info

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """How much to measure; the defaults give a stable median on a quiet 2-core machine."""

    warmup: int = 10
    repeats: int = 200  # at least this many timed calls ...
    min_time_s: float = 2.0  # ... and at least this long, per latency loop
    max_repeats: int = 20_000
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    throughput_time_s: float = 1.0
    threads: int | None = None  # None: the profile's, else the runtime's default
    images: tuple[Path | bytes, ...] = ()  # image files or encoded bytes; () -> generated photos
    labels: tuple[int, ...] | None = None  # class ids of ``images``, for top-1 on the bench images
    end_to_end: bool = True
    e2e_repeats: int = 100
    cold_start: bool = True
    cold_start_runs: int = 3
    measure_memory: bool = True
    memory_inferences: int = 20
    async_throughput: bool = True
    async_requests: int | None = None  # None: OpenVINO's optimal number under the THROUGHPUT hint
    bare_loop: bool = True
    overhead_blocks: int = 100
    overhead_calls: int = 5  # timed calls per block and loop: short blocks follow the machine's load
    speedup_blocks: int = 40  # round-robin blocks of contenders and baseline, for the speed-up ratio
    speedup_calls: int = 5
    top_k: int = 5
    worker_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in (
            "repeats",
            "max_repeats",
            "e2e_repeats",
            "cold_start_runs",
            "overhead_blocks",
            "overhead_calls",
            "speedup_blocks",
            "speedup_calls",
            "top_k",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"BenchConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.min_time_s < 0 or self.throughput_time_s < 0:
            raise ConfigError("BenchConfig warmup, min_time_s and throughput_time_s must not be negative")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"BenchConfig.batch_sizes must list sizes >= 1, got {self.batch_sizes}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ConfigError(
                f"BenchConfig has {len(self.labels)} labels for {len(self.images)} images; "
                f"give one class id per image, or no labels"
            )


def bench_bundle(
    bundle: str | Path | Bundle,
    runtime: Runtime | str | None = None,
    *,
    profile: str | Path | HardwareProfile | None = None,
    device: Device | str | None = None,
    config: BenchConfig | None = None,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark one bundle on one runtime (default: the profile's, else the format's first).

    Raises:
        BundleError, ManifestError, ProfileError, ConfigError, BackendUnavailableError,
            InferenceError: as :func:`sdk.load` (nothing is measured then).
        InputError: an image in ``config.images`` cannot be read or decoded.
    """
    config = config or BenchConfig()
    say = progress or (lambda message: None)
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    chosen_profile = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    encoded = encoded_images(config.images)
    model = load(opened, chosen_profile, runtime=runtime, device=device, threads=config.threads)
    tag = f"{opened.path.name} on {model.plan.runtime.value}"
    notes: list[str] = []
    with model:
        info = model.info
        say(f"{tag}: {info.actual_device}, {info.precision.value}, threads {info.threads or 'default'}")
        tensors = bench_tensors(opened, encoded)
        samples = _inference(model, tensors, config)
        inference = latency_stats(samples)
        say(
            f"{tag}: inference-only {inference.count} calls, p50 {inference.p50_ms:.3f} ms "
            f"(±{inference.p50_ci_half_width_pct:.1f} %), p99 {inference.p99_ms:.3f} ms"
        )
        end_to_end = None
        if config.end_to_end:
            end_to_end = _end_to_end(model, encoded, config, notes)
            if end_to_end:
                say(f"{tag}: end to end {end_to_end.latency.count} images, p50 {end_to_end.latency.p50_ms:.3f} ms")
        overhead = _overhead(model, tensors[0], config, notes) if config.bare_loop else None
        if overhead:
            say(f"{tag}: adapter/bare {overhead.ratio:.3f} ({overhead.bare_api})")
        throughput = _throughput(model, tensors, config)
        say(f"{tag}: throughput " + ", ".join(f"{p.mode} b{p.batch}: {p.images_per_s:.0f} img/s" for p in throughput))
    cold_start, memory = _fresh_processes(opened, model, chosen_profile, device, config, notes, say, tag)
    budgets = chosen_profile.budgets if chosen_profile else None
    return BenchResult(
        name=opened.path.name,
        bundle=str(opened.path),
        format=opened.manifest.format.value,
        runtime=model.plan.runtime.value,
        profile_id=chosen_profile.id if chosen_profile else None,
        session=info.to_dict(),
        bundle_size_bytes=opened.size_bytes(),
        inference=inference,
        inference_samples_ms=tuple(float(v) for v in samples),
        end_to_end=end_to_end,
        throughput=tuple(throughput),
        cold_start=cold_start,
        memory=memory,
        overhead=overhead,
        budgets=check_budgets(
            budgets, inference=inference, end_to_end=end_to_end, memory=memory, bundle_size_bytes=opened.size_bytes()
        )
        if budgets
        else (),
        host=host_info(),
        notes=tuple(notes),
    )


def synthetic_photos(count: int = 8, *, size: tuple[int, int] = (480, 640), seed: int = 0) -> list[bytes]:
    """JPEG-encoded camera-sized pictures (gradient, boxes, noise): the default bench images."""
    rng = np.random.default_rng(seed)
    photos = []
    h, w = size
    for _ in range(count):
        ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        top, bottom = rng.integers(30, 225, 3), rng.integers(30, 225, 3)
        image = (top * (1 - ramp) + bottom * ramp).repeat(w, axis=1)
        for _ in range(6):
            y, x = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            dy, dx = int(rng.integers(20, h // 3)), int(rng.integers(20, w // 3))
            image[y : y + dy, x : x + dx] = rng.integers(0, 256, 3)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        photos.append(data.tobytes())
    return photos


# --------------------------------------------------------------------------- steps


def encoded_images(images: Sequence[Path | bytes]) -> list[bytes]:
    """The bench images as encoded bytes held in memory; () -> :func:`synthetic_photos`.

    Raises:
        InputError: an image file cannot be read.
    """
    if not images:
        return synthetic_photos()
    encoded = []
    for image in images:
        if isinstance(image, bytes):
            encoded.append(image)
            continue
        try:
            encoded.append(Path(image).read_bytes())
        except OSError as e:
            raise InputError(f"cannot read bench image {image}: {e}; check the path") from e
    return encoded


def bench_tensors(bundle: Bundle, encoded: Sequence[bytes]) -> list[np.ndarray]:
    """The encoded images preprocessed as ``bundle``'s manifest says (random inputs without preprocessing).

    Raises:
        InputError: an image cannot be decoded.
    """
    manifest = bundle.manifest
    if manifest.preprocessing is None:
        return [example_input(bundle, seed=i) for i in range(len(encoded))]
    return [pp.load_and_preprocess(data, manifest.preprocessing, manifest.inputs[0]) for data in encoded]


def _inference(model: Model, tensors: list[np.ndarray], config: BenchConfig) -> np.ndarray:
    name = model.input_spec.name
    feeds = [{name: t} for t in tensors]
    # Model.run with its feed checks: the call apps make, so its cost is what they pay.
    return time_calls(
        lambda i: model.run(feeds[i % len(feeds)]),
        warmup=config.warmup,
        min_calls=config.repeats,
        min_time_s=config.min_time_s,
        max_calls=config.max_repeats,
    )


def _end_to_end(model: Model, encoded: list[bytes], config: BenchConfig, notes: list[str]) -> EndToEnd | None:
    manifest = model.bundle.manifest
    if manifest.task is not Task.IMAGE_CLASSIFICATION or manifest.preprocessing is None:
        notes.append(
            f"end to end skipped: ImageClassifier needs an image_classification bundle with "
            f"preprocessing; this is a {manifest.task.value} bundle"
        )
        return None
    classifier = ImageClassifier(model)  # shares the session; closed with the model
    hits = []
    for i, data in enumerate(encoded):  # the warm-up pass doubles as the accuracy pass
        top1 = classifier.classify(data, config.top_k).top1.index
        if config.labels is not None:
            hits.append(top1 == config.labels[i])
    for i in range(config.warmup):
        classifier.classify(encoded[i % len(encoded)], config.top_k)
    totals: list[float] = []
    stages = []
    clock, spent = time.perf_counter_ns, 0
    with gc_paused():
        budget_ns = config.min_time_s * 1e9
        while len(totals) < config.max_repeats and (len(totals) < config.e2e_repeats or spent < budget_ns):
            data = encoded[len(totals) % len(encoded)]
            t0 = clock()
            result = classifier.classify(data, config.top_k)
            elapsed = clock() - t0
            spent += elapsed
            totals.append(elapsed / 1e6)
            stages.append(result.timings)
    # Decoding is inside the classifier's preprocess stage; time it alone to split the two.
    decode = np.median(
        time_calls(
            lambda i: pp.decode_image(encoded[i % len(encoded)]),
            warmup=len(encoded),
            min_calls=3 * len(encoded),
            min_time_s=0.0,
            max_calls=3 * len(encoded),
        )
    )
    pre = float(np.median([s.preprocess_ms for s in stages]))
    return EndToEnd(
        latency=latency_stats(totals),
        decode_ms=float(min(decode, pre)),
        preprocess_ms=max(0.0, pre - float(decode)),
        inference_ms=float(np.median([s.inference_ms for s in stages])),
        postprocess_ms=float(np.median([s.postprocess_ms for s in stages])),
        images=len(encoded),
        accuracy=float(np.mean(hits)) if hits else None,
    )


def _overhead(model: Model, example: np.ndarray, config: BenchConfig, notes: list[str]) -> Overhead | None:
    try:
        bare = bare_step(model.plan.runtime, model.session, model.bundle.model_path, example)
    except (ConfigError, BackendUnavailableError, InferenceError) as e:
        notes.append(f"overhead not measured: {e}")
        return None
    name, output = model.input_spec.name, model.bundle.manifest.outputs[0].name
    return measure_overhead(
        lambda x: model.run({name: x})[output],
        bare,
        example,
        blocks=config.overhead_blocks,
        calls_per_block=config.overhead_calls,
        warmup=config.warmup,
    )


def _throughput(model: Model, tensors: list[np.ndarray], config: BenchConfig) -> list[ThroughputPoint]:
    name, points = model.input_spec.name, []
    for batch in config.batch_sizes:
        feed = {name: np.concatenate([tensors[j % len(tensors)] for j in range(batch)], axis=0)}
        for _ in range(2):  # a new batch size may resize or compile: not part of the steady state
            model.run(feed)

        def step(feed: dict[str, np.ndarray] = feed, batch: int = batch) -> int:
            model.run(feed)
            return batch

        images, seconds = time_for(step, min_time_s=config.throughput_time_s, min_calls=3)
        points.append(
            ThroughputPoint(
                mode="sync", batch=batch, requests=1, images_per_s=images / seconds, images=images, seconds=seconds
            )
        )
    if config.async_throughput and supports(model.plan.runtime, Capability.ASYNC_REQUESTS):
        points.append(_async_throughput(model, tensors, config))
    return points


def _async_throughput(model: Model, tensors: list[np.ndarray], config: BenchConfig) -> ThroughputPoint:
    # A second session tuned for throughput: parallel requests on the one-stream latency session would queue.
    manifest = model.bundle.manifest
    adapter = async_adapter(model.plan.runtime)
    session = adapter.open_async_session(
        model.bundle.model_path,
        list(manifest.inputs),
        list(manifest.outputs),
        model.plan.options,
        requests=config.async_requests,
        model_bytes=model_bytes_for_load(model.bundle),  # encrypted: decrypted in memory (the environment's key)
    )
    with session:
        requests = session.async_requests
        name = model.input_spec.name
        feeds = [{name: tensors[j % len(tensors)]} for j in range(4 * requests)]  # keep every request busy
        session.run_async(feeds)
        images, seconds = time_for(
            lambda: len(session.run_async(feeds)), min_time_s=config.throughput_time_s, min_calls=2
        )
    return ThroughputPoint(
        mode="async", batch=1, requests=requests, images_per_s=images / seconds, images=images, seconds=seconds
    )


def _fresh_processes(
    bundle: Bundle,
    model: Model,
    profile: HardwareProfile | None,
    device: Device | str | None,
    config: BenchConfig,
    notes: list[str],
    say: Progress,
    tag: str,
) -> tuple[ColdStart | None, Memory | None]:
    if not (config.cold_start or config.measure_memory):
        return None, None
    request = {
        "bundle": str(bundle.path),
        "runtime": model.plan.runtime.value,
        "profile": (profile.source or profile.id) if profile else None,
        "device": str(device) if device is not None else None,
        "threads": config.threads,
        "inferences": config.memory_inferences,
    }
    runs = []
    for i in range(config.cold_start_runs if config.cold_start else 1):
        try:
            runs.append(run_worker(request, timeout_s=config.worker_timeout_s))
        except ParityError as e:
            notes.append(f"fresh-process run {i + 1} failed: {e}")
            say(f"{tag}: fresh-process run {i + 1} failed: {e}")
            continue
        last = runs[-1]
        say(
            f"{tag}: fresh process {i + 1}: load {last['load_ms']:.0f} ms + first inference "
            f"{last['first_inference_ms']:.1f} ms, peak +{last['delta_mb']:.0f} MB"
        )
    if not runs:
        return None, None
    return (
        ColdStart.from_runs(runs) if config.cold_start else None,
        Memory.from_runs(runs) if config.measure_memory else None,
    )
