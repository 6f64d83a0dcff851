"""Threads sharing ONE ImageClassifier and ONE Recommender per runtime: every answer checked bit for bit.

    python3 tests/bench/thread_stress.py [--calls 10000] [--threads 8] [--runtimes litert,openvino]
        [--concurrency N] [--profile ID|YAML] [--size 32 --width 8] [--baseline-calls 2000]

Builds a tiny CNN (6 classes, 32x32) and a tiny recommendation encoder (48 items), exports them to
every installed runtime's format in a temporary folder, then per runtime and task: a single-thread
pass over 64 distinct inputs gives the expected answers (for the classifier every class's score,
for the recommender the whole ranking with scores); ``--threads`` threads then share one
classifier (one recommender), each thread classifying a different input at any moment, for
``--calls`` calls in all; every answer must equal the single-thread one exactly. It prints calls,
errors, mismatches and throughput against one thread (the best of 3 blocks of ``--baseline-calls``),
and exits 1 when any call raised or any answer differed. ``--concurrency`` sizes each session's
pool (LiteRT interpreters, OpenVINO infer requests; a cap for ONNX Runtime and TensorFlow);
``--profile`` applies a hardware profile to its runtime (e.g. an OpenVINO THROUGHPUT hint);
``--size``/``--width`` make the CNN heavy enough for the pool's throughput to show.

A stress check, not a unit test: tests/sdk/test_threads.py runs the same harness with 100 calls
per thread. Bounded: 10,000 calls per runtime and task take about a minute in all on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdk.bundle import Bundle  # noqa: E402  (the repository root goes on the path first)
from sdk.enums import ModelFormat, Runtime  # noqa: E402

# The format each runtime is stressed on, and the module that says whether the runtime is installed.
RUNTIME_FORMATS: dict[Runtime, tuple[ModelFormat, str]] = {
    Runtime.LITERT: (ModelFormat.TFLITE, "ai_edge_litert"),
    Runtime.OPENVINO: (ModelFormat.OPENVINO, "openvino"),
    Runtime.ONNXRUNTIME: (ModelFormat.ONNX, "onnxruntime"),
    Runtime.TENSORFLOW: (ModelFormat.KERAS, "tensorflow"),
}
CLASSES, SIZE = 6, 32
N_ITEMS, DIM, MAX_LEN = 48, 16, 6
DISTINCT_INPUTS = 64


def installed_runtimes() -> list[Runtime]:
    """The runtimes whose backend package is installed (LiteRT also through tensorflow.lite)."""
    found = []
    for runtime, (_, module) in RUNTIME_FORMATS.items():
        if importlib.util.find_spec(module) is not None or (
            runtime is Runtime.LITERT and importlib.util.find_spec("tensorflow") is not None
        ):
            found.append(runtime)
    return found


def build_classifier_bundles(
    out_dir: Path, runtimes: Iterable[Runtime], *, size: int = SIZE, width: int = 8
) -> dict[Runtime, Bundle]:
    """A tiny CNN (conv -> BN -> ReLU -> depthwise -> [pointwise] -> pool -> logits) per runtime's format.

    ``size`` and ``width`` (channels) make it heavier, for throughput: 32 and 8 run in ~0.1 ms.
    """
    import keras

    from converters.export.pipeline import export
    from sdk.manifest import Preprocessing

    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    if width > 8:
        x = keras.layers.Conv2D(width, 1, activation="relu", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x), name="stress_cnn")
    runtimes = list(runtimes)
    bundles = export(
        model,
        out_dir=out_dir,
        formats=sorted({RUNTIME_FORMATS[r][0].value for r in runtimes}),
        name="stress",
        labels=[f"class{i}" for i in range(CLASSES)],
        preprocessing=Preprocessing(size=(size, size), mean=(127.5,) * 3, std=(127.5,) * 3),
    )
    return {r: bundles[RUNTIME_FORMATS[r][0]] for r in runtimes}


def build_recommender_bundles(out_dir: Path, runtimes: Iterable[Runtime]) -> dict[Runtime, Bundle]:
    """A tiny encoder (item embedding -> masked mean -> dense) and a random item table, per runtime's format."""
    import keras

    from converters.export.rec_bundle import package_recommender
    from converters.models.sasrec import MaskedMean, PaddingMask
    from sdk.interactions import Catalogue

    keras.utils.set_random_seed(4)
    history = keras.Input((MAX_LEN,), dtype="int32", name="history")
    embedded = keras.layers.Embedding(N_ITEMS + 1, DIM, name="item_embedding")(history)
    pooled = MaskedMean(name="pool")([embedded, PaddingMask(name="keep")(history)])
    encoder = keras.Model(history, keras.layers.Dense(DIM, name="user")(pooled), name="stress_encoder")
    rng = np.random.default_rng(4)
    ids = tuple(f"item{i:02d}" for i in range(N_ITEMS))
    runtimes = list(runtimes)
    bundles = package_recommender(
        encoder,
        rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
        rng.normal(scale=0.1, size=N_ITEMS).astype(np.float32),
        Catalogue(ids=ids, names=ids),
        rng.integers(1, 100, N_ITEMS).astype(np.float64),
        out_dir=out_dir,
        name="stress-rec",
        kind="sequences",
        formats=sorted({RUNTIME_FORMATS[r][0].value for r in runtimes}),
    )
    return {r: bundles[RUNTIME_FORMATS[r][0]] for r in runtimes}


def classifier_inputs(count: int = DISTINCT_INPUTS, seed: int = 0) -> list[np.ndarray]:
    """``count`` different BGR uint8 frames of a few sizes (each one is resized by the preprocessing)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE + i % 5, SIZE + 2 * (i % 3), 3), dtype=np.uint8) for i in range(count)]


def recommender_inputs(count: int = DISTINCT_INPUTS, seed: int = 1) -> list[list[str]]:
    """``count`` different histories of 1..MAX_LEN items (the catalogue ids ``item00``..)."""
    rng = np.random.default_rng(seed)
    return [[f"item{j:02d}" for j in rng.choice(N_ITEMS, 1 + i % MAX_LEN, replace=False)] for i in range(count)]


def classify_answer(classifier: Any) -> Callable[[np.ndarray], Hashable]:
    """Every class's (index, score) as the classifier ranks them: compared exactly."""
    return lambda image: tuple((c.index, c.score) for c in classifier.classify(image, top_k=CLASSES).categories)


def recommend_answer(recommender: Any) -> Callable[[list[str]], Hashable]:
    """The whole ranking with scores (history items excluded): compared exactly."""
    return lambda history: tuple((i.id, i.score) for i in recommender.recommend(history, k=N_ITEMS).items)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stress:
    """What one shared object did under ``threads`` threads."""

    threads: int
    calls: int
    errors: int
    mismatches: int
    seconds: float
    baseline_calls: int
    baseline_per_s: float  # one thread, the best of 3 blocks: other load on the host only lowers it
    first_errors: tuple[str, ...]

    @property
    def per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.mismatches == 0 and self.calls > 0


def hammer(
    answer: Callable[[Any], Hashable],
    inputs: Sequence[Any],
    *,
    threads: int,
    calls: int,
    baseline_calls: int | None = None,
) -> Stress:
    """Call ``answer`` from ``threads`` threads at once, ``calls`` calls in all, each checked exactly.

    The expected answers come from one thread first; thread ``t``'s ``i``-th call takes input
    ``(i * threads + t) % len(inputs)``, so the threads work on different inputs at any moment.
    """
    expected = [answer(x) for x in inputs]
    baseline_calls = min(calls, len(inputs) * 8) if baseline_calls is None else baseline_calls
    baseline_per_s = _one_thread_rate(answer, inputs, baseline_calls)
    per_thread = max(1, calls // threads)
    counts = {"errors": 0, "mismatches": 0}
    first_errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        errors = mismatches = 0
        barrier.wait()
        for i in range(per_thread):
            index = (i * threads + t) % len(inputs)
            try:
                mismatches += answer(inputs[index]) != expected[index]
            except Exception as e:  # counted, never raised: the point is to see every failure
                errors += 1
                if len(first_errors) < 3:
                    first_errors.append(f"{type(e).__name__}: {e}"[:300])
        with lock:
            counts["errors"] += errors
            counts["mismatches"] += mismatches

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - start
    return Stress(
        threads=threads,
        calls=per_thread * threads,
        errors=counts["errors"],
        mismatches=counts["mismatches"],
        seconds=seconds,
        baseline_calls=baseline_calls,
        baseline_per_s=baseline_per_s,
        first_errors=tuple(first_errors),
    )


def _one_thread_rate(answer: Callable[[Any], Hashable], inputs: Sequence[Any], calls: int) -> float:
    """Calls per second on this thread: the best of 3 blocks of ``calls`` in all (0 for no calls)."""
    block, best = max(1, calls // 3), 0.0
    for first in range(0, calls, block):
        count = min(block, calls - first)
        start = time.perf_counter()
        for i in range(first, first + count):
            answer(inputs[i % len(inputs)])
        best = max(best, count / (time.perf_counter() - start))
    return best


def _stress_runtime(
    runtime: Runtime, classifier_bundle: Bundle, rec_bundle: Bundle, args: argparse.Namespace
) -> list[tuple[str, Stress, str]]:
    from sdk.classifier import ClassifierOptions, ImageClassifier
    from sdk.recommender import Recommender

    rows = []
    options = ClassifierOptions(profile=args.profile, runtime=runtime, concurrency=args.concurrency)
    with ImageClassifier.create(classifier_bundle, options) as classifier:
        stress = hammer(
            classify_answer(classifier),
            classifier_inputs(),
            threads=args.threads,
            calls=args.calls,
            baseline_calls=args.baseline_calls,
        )
        rows.append(("classify", stress, str(classifier.info.details.get("concurrency", "?"))))
    with Recommender.from_bundle(rec_bundle, profile=args.profile, runtime=runtime) as recommender:
        if args.concurrency is not None:  # RecommenderOptions has no concurrency field yet: size the session
            recommender.model.session.set_concurrency(args.concurrency)
        stress = hammer(
            recommend_answer(recommender),
            recommender_inputs(),
            threads=args.threads,
            calls=args.calls,
            baseline_calls=args.baseline_calls,
        )
        rows.append(("recommend", stress, str(recommender.info.details.get("concurrency", "?"))))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls per runtime and task, all threads together")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--runtimes", default="", help="comma-separated (default: every installed one)")
    parser.add_argument("--concurrency", type=int, default=None, help="ClassifierOptions(concurrency=N)")
    parser.add_argument("--baseline-calls", type=int, default=2000, help="single-thread calls timed for the ratio")
    parser.add_argument("--profile", default=None, help="hardware profile id or YAML (applies to its own runtime)")
    parser.add_argument("--size", type=int, default=SIZE, help="classifier input size (heavier: e.g. 160)")
    parser.add_argument("--width", type=int, default=8, help="classifier channels (heavier: e.g. 64)")
    args = parser.parse_args(argv)
    runtimes = [Runtime.parse(r, "--runtimes") for r in args.runtimes.split(",") if r] or installed_runtimes()
    print(f"building tiny bundles for {', '.join(r.value for r in runtimes)} ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="thread-stress-") as tmp:
        classifier_bundles = build_classifier_bundles(Path(tmp) / "cls", runtimes, size=args.size, width=args.width)
        rec_bundles = build_recommender_bundles(Path(tmp) / "rec", runtimes)
        rows = []
        for runtime in runtimes:
            for task, stress, concurrency in _stress_runtime(
                runtime, classifier_bundles[runtime], rec_bundles[runtime], args
            ):
                rows.append((runtime.value, task, stress, concurrency))
                print(
                    f"{runtime.value:12} {task:9} {stress.calls:>7} calls  {stress.errors:>5} errors  "
                    f"{stress.mismatches:>5} mismatches  {stress.per_s:8.0f}/s vs {stress.baseline_per_s:8.0f}/s "
                    f"on 1 thread  [{concurrency}]",
                    flush=True,
                )
                for line in stress.first_errors:
                    print(f"    e.g. {line}")
    _summary(rows, args.threads)
    return 0 if all(stress.ok for _, _, stress, _ in rows) else 1


def _summary(rows: list[tuple[str, str, Stress, str]], threads: int) -> None:
    print("\n| runtime | task | threads | calls | errors | mismatches | calls/s | 1 thread calls/s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for runtime, task, s, _ in rows:
        ratio = s.per_s / s.baseline_per_s if s.baseline_per_s else 0.0
        print(
            f"| {runtime} | {task} | {threads} | {s.calls} | {s.errors} | {s.mismatches} | {s.per_s:.0f} | "
            f"{s.baseline_per_s:.0f} | {ratio:.2f} |"
        )
    bad = [f"{r}/{t}" for r, t, s, _ in rows if not s.ok]
    print("\nall answers exact, no errors" if not bad else f"\nFAILED: {', '.join(bad)}")


if __name__ == "__main__":
    sys.exit(main())
