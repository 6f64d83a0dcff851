"""Cold start and peak memory, measured in a fresh process: ``python -m sdk.qa.bench_worker JSON``.

A process that already imported a backend, loaded a model or touched the page cache would
make both numbers look better than what a kiosk sees at boot; so each measurement runs in a
new interpreter that imports only ``sdk`` before it starts the clock.

The worker prints one JSON line:

- ``import_ms`` (the backend's Python package), ``load_ms`` (``sdk.load``: bundle hash
  check + session creation), ``first_inference_ms``; cold start = load + first inference;
- ``baseline_rss_mb`` (after Python + numpy + OpenCV + sdk, before the backend),
  ``peak_rss_mb`` (high-water mark after load + N inferences) and their difference
  ``delta_mb``, the memory the runtime and model cost. On Linux the high-water mark is
  reset at the baseline (``/proc/self/clear_refs``), so start-up spikes do not count.

MB are 10^6 bytes throughout the benchmark reports.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import ParityError

_MB = 1e6


def _proc_status() -> dict[str, float]:
    """VmRSS and VmHWM in MB from /proc/self/status (empty off Linux)."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024 / _MB  # the kernel reports kB
    except OSError:
        pass
    return values


def _ru_maxrss_mb() -> float:
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / _MB if sys.platform == "darwin" else value * 1024 / _MB  # bytes on macOS, kB elsewhere


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "5" resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def example_input(bundle: Any, seed: int = 0) -> np.ndarray:
    """A batch-of-one input for ``bundle``: a random photo through its preprocessing, or
    random values of the input's shape and dtype when the manifest has no preprocessing."""
    from sdk import preprocess as pp

    rng = np.random.default_rng(seed)
    spec = bundle.manifest.inputs[0]
    pre = bundle.manifest.preprocessing
    if pre is not None:
        image = rng.integers(0, 256, (pre.size[0] * 2, pre.size[1] * 2, 3), dtype=np.uint8)
        return pp.preprocess(image, pre, spec)
    shape = [1 if i == 0 or d < 0 else d for i, d in enumerate(spec.shape)]
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """One cold start + peak memory measurement in this (fresh) process.

    Raises:
        ShelfedgeError: whatever ``sdk.load`` or the run raises (see sdk.load).
    """
    from sdk.bundle import Bundle
    from sdk.enums import Runtime
    from sdk.loading import load
    from sdk.runtime import adapter_module

    bundle_path = Path(request["bundle"])
    # Reading the example input's manifest is not part of the cold start; verify=False keeps
    # the hash check inside the timed load below only.
    example = example_input(Bundle.open(bundle_path, verify=False))
    status = _proc_status()
    baseline = status.get("VmRSS", _ru_maxrss_mb())
    reset = _reset_peak()
    runtime = Runtime.parse(request["runtime"], "runtime")
    t0 = time.perf_counter_ns()
    adapter_module(runtime)
    t1 = time.perf_counter_ns()
    after_import = _proc_status().get("VmRSS")
    model = load(
        bundle_path,
        request.get("profile"),
        runtime=runtime,
        device=request.get("device"),
        threads=request.get("threads"),
    )
    t2 = time.perf_counter_ns()
    feed = {model.input_spec.name: example}
    model.run(feed)
    t3 = time.perf_counter_ns()
    for _ in range(int(request.get("inferences", 20))):
        model.run(feed)
    status = _proc_status()
    peak = status["VmHWM"] if "VmHWM" in status else _ru_maxrss_mb()
    method = "VmHWM" + (" (reset at baseline)" if reset else "") if "VmHWM" in status else "ru_maxrss"
    model.close()
    return {
        "import_ms": (t1 - t0) / 1e6,
        "load_ms": (t2 - t1) / 1e6,
        "first_inference_ms": (t3 - t2) / 1e6,
        "cold_start_ms": (t3 - t1) / 1e6,
        "baseline_rss_mb": baseline,
        "after_import_rss_mb": after_import,
        "peak_rss_mb": peak,
        "delta_mb": peak - baseline,
        "memory_method": method,
        "inferences": int(request.get("inferences", 20)),
    }


def run_worker(request: dict[str, Any], *, timeout_s: float = 300.0) -> dict[str, Any]:
    """Run :func:`measure` in a fresh ``python -m sdk.qa.bench_worker`` and return its result.

    Raises:
        ParityError: the worker failed or timed out (the message carries its stderr tail).
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    # The worker must import this very checkout of sdk/runtimes, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    command = [sys.executable, "-m", "sdk.qa.bench_worker", json.dumps(request)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise ParityError(
            f"bench worker for {request['bundle']} on {request['runtime']} took over {timeout_s:.0f} s; "
            f"raise the timeout or check the machine's load"
        ) from e
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise ParityError(
            f"bench worker for {request['bundle']} on {request['runtime']} failed (exit {done.returncode}): {tail}"
        )
    result = json.loads(lines[-1])
    if "error" in result:
        raise ParityError(f"bench worker for {request['bundle']} on {request['runtime']}: {result['error']}")
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print('usage: python -m sdk.qa.bench_worker \'{"bundle": ..., "runtime": ...}\'', file=sys.stderr)
        return 2
    from sdk.errors import ShelfedgeError

    try:
        result = measure(json.loads(argv[0]))
    except ShelfedgeError as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
