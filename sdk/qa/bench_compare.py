"""Speed-ups against a baseline, timed with the baseline in round-robin blocks.

Benchmarking the baseline (e.g. the teacher on TensorFlow) and each contender one after the
other lets the machine's load fall on one and not the other: on a shared machine the
baseline's p50 swung by +-60 % between runs. Here every model is open at once and each block
runs every model ``calls_per_block`` times, in an order rotated per block; the speed-up is
the median over blocks of (baseline block median / contender block median), reported with
its IQR and the 95 % confidence interval of that median (:class:`sdk.qa.bench_stats.RatioStats`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from sdk.bundle import Bundle
from sdk.enums import Device, Runtime
from sdk.loading import Model, load
from sdk.profiles import HardwareProfile
from sdk.qa.bench import BenchConfig, bench_tensors, encoded_images
from sdk.qa.bench_stats import RatioStats, interleaved_blocks, ratio_stats


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contender:
    """A bundle on a runtime (with the profile it is judged under), as ``bench_bundle`` ran it."""

    bundle: Bundle
    runtime: Runtime
    profile: HardwareProfile | None = None


def interleaved_speedups(
    baseline: Contender,
    contenders: Sequence[Contender],
    *,
    config: BenchConfig,
    device: Device | str | None = None,
) -> list[RatioStats]:
    """The inference-only speed-up of each contender over ``baseline`` (> 1: faster), in order.

    Every model runs ``Model.run`` on its own preprocessing of the first bench image.

    Raises:
        BundleError, ManifestError, ConfigError, BackendUnavailableError, InferenceError: as
            :func:`sdk.load` for any of the models.
        InputError: the bench image cannot be read or decoded.
    """
    image = encoded_images(config.images)[:1]
    with contextlib.ExitStack() as stack:
        loops: dict[str, Callable[[], object]] = {}
        for i, who in enumerate([baseline, *contenders]):
            model = stack.enter_context(
                load(who.bundle, who.profile, runtime=who.runtime, device=device, threads=config.threads)
            )
            loops[str(i)] = _loop(model, bench_tensors(who.bundle, image)[0])
        timed = interleaved_blocks(
            loops, blocks=config.speedup_blocks, calls_per_block=config.speedup_calls, warmup=config.warmup
        )
    base = [float(np.median(block)) for block in timed["0"]]
    return [
        ratio_stats(
            [b / float(np.median(c)) for b, c in zip(base, timed[str(i)], strict=True)],
            calls_per_block=config.speedup_calls,
        )
        for i in range(1, len(contenders) + 1)
    ]


def _loop(model: Model, tensor: np.ndarray) -> Callable[[], object]:
    feed = {model.input_spec.name: tensor}
    return lambda: model.run(feed)
