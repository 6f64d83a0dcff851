"""The adapter against a bare loop over the runtime's own API, timed interleaved, for ``sdk.qa.bench``.

The issue's promise is that an adapter adds no hidden overhead: its inference-only latency
stays within 1.1x of a loop a skilled user would write against the backend directly, on the
same model file with the same settings (threads, precision hint, providers). Each adapter
that can build that loop declares :attr:`sdk.runtime.Capability.BARE_LOOP` and builds it
itself (all backend knowledge lives in ``runtimes/``); the loop returns numpy arrays, as the
adapter does, so both sides pay for the same output copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdk.enums import Runtime
from sdk.qa.bench_stats import interleaved_blocks
from sdk.runtime import BareStep, Session, bare_loop_adapter


@dataclasses.dataclass(frozen=True, kw_only=True)
class Overhead:
    """Adapter vs bare loop, timed in alternating blocks of the same run.

    ``ratio`` is the median over blocks of (adapter block p50 / bare block p50): each block
    pair ran under the same machine conditions, so this paired estimate stays put on a busy
    machine where ``pooled_ratio`` (adapter p50 / bare p50 over all calls) swings with the
    load. Both are reported; 1.0 means no overhead.
    """

    bare_api: str  # what the bare loop calls, e.g. "openvino InferRequest.infer"
    adapter_p50_ms: float
    bare_p50_ms: float
    ratio: float
    pooled_ratio: float
    block_ratio_p25: float  # the spread of the per-block ratios
    block_ratio_p75: float
    blocks: int
    calls_per_block: int
    max_abs_diff: float  # adapter vs bare outputs: proves both ran the same model

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def bare_step(runtime: Runtime, session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
    """A (description, step) pair: ``step(x)`` runs the model file with the backend's own API.

    ``session`` is the adapter's, so the bare loop uses the same backend package, device,
    threads and precision hint; ``example`` sets the input shape the loop is prepared for.

    Raises:
        ConfigError: the runtime has no bare loop, or the model has more than one input.
        BackendUnavailableError: the backend is not installed (naming the pip extra).
        InferenceError: the backend cannot load the model for the bare loop.
    """
    return bare_loop_adapter(runtime).bare_step(session, Path(model_path), example)


def measure_overhead(
    adapter: Callable[[np.ndarray], np.ndarray],
    bare: tuple[str, BareStep],
    example: np.ndarray,
    *,
    blocks: int,
    calls_per_block: int,
    warmup: int,
) -> Overhead:
    """Time ``adapter(x)`` and the bare step in alternating blocks (A B, B A, A B...).

    Alternating short blocks cancels the drifts of a shared machine (another job, frequency
    changes): both loops see the same conditions, so their ratio is stable even when absolute
    times are not. The A B / B A order cancels any advantage of going first or second.
    """
    description, step = bare
    reference = np.asarray(adapter(example))
    outputs = step(example)
    diffs = [float(np.max(np.abs(o.astype(np.float64) - reference))) for o in outputs if o.shape == reference.shape]
    timed = interleaved_blocks(
        {"adapter": lambda: adapter(example), "bare": lambda: step(example)},
        blocks=blocks,
        calls_per_block=calls_per_block,
        warmup=warmup,
    )
    block_ratios = [float(np.median(a) / np.median(b)) for a, b in zip(timed["adapter"], timed["bare"], strict=True)]
    adapter_p50 = float(np.median(np.concatenate(timed["adapter"])))
    bare_p50 = float(np.median(np.concatenate(timed["bare"])))
    p25, p50, p75 = np.percentile(block_ratios, [25, 50, 75])
    return Overhead(
        bare_api=description,
        adapter_p50_ms=adapter_p50,
        bare_p50_ms=bare_p50,
        ratio=float(p50),
        pooled_ratio=adapter_p50 / bare_p50,
        block_ratio_p25=float(p25),
        block_ratio_p75=float(p75),
        blocks=blocks,
        calls_per_block=calls_per_block,
        max_abs_diff=min(diffs) if diffs else float("nan"),
    )
