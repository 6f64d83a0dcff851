"""8 threads share ONE ImageClassifier and ONE Recommender per installed runtime: 0 errors, every answer exact.

The harness is tests/bench/thread_stress.py's (the stress command runs it with >= 10,000 calls per
runtime); here 8 threads x 100 calls per runtime and task keep CI fast. Each answer (every class's
score; the whole ranking with scores) must equal the single-thread answer for the same input bit
for bit: before sessions were pooled, LiteRT and OpenVINO raised on about half of these calls and
silently answered for another caller on a few.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from sdk.bundle import Bundle
from sdk.classifier import ClassifierOptions, ImageClassifier
from sdk.enums import Runtime
from sdk.errors import ConfigError, InferenceError
from sdk.recommender import Recommender

THREADS, CALLS_PER_THREAD = 8, 100


def _load_stress() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "thread_stress.py"
    spec = importlib.util.spec_from_file_location("thread_stress", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("thread_stress", module)
    spec.loader.exec_module(module)
    return module


stress = _load_stress()
RUNTIMES = [pytest.param(r, marks=getattr(pytest.mark, r.value), id=r.value) for r in stress.installed_runtimes()]


@pytest.fixture(scope="module")
def classifier_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[Runtime, Bundle]:
    return stress.build_classifier_bundles(tmp_path_factory.mktemp("threads-cls"), stress.installed_runtimes())


@pytest.fixture(scope="module")
def recommender_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[Runtime, Bundle]:
    return stress.build_recommender_bundles(tmp_path_factory.mktemp("threads-rec"), stress.installed_runtimes())


def _assert_exact(result) -> None:
    assert (result.errors, result.mismatches, result.first_errors) == (0, 0, ())
    assert result.calls == THREADS * CALLS_PER_THREAD


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("concurrency", [None, 4])
def test_classifier_succeeds_with_8_threads_sharing_it_bit_identical_to_one_thread(
    classifier_bundles: dict[Runtime, Bundle], runtime: Runtime, concurrency: int | None
) -> None:
    options = ClassifierOptions(runtime=runtime, concurrency=concurrency)
    with ImageClassifier.create(classifier_bundles[runtime], options) as classifier:
        result = stress.hammer(
            stress.classify_answer(classifier),
            stress.classifier_inputs(),
            threads=THREADS,
            calls=THREADS * CALLS_PER_THREAD,
            baseline_calls=0,
        )
        details = classifier.info.details
    _assert_exact(result)
    if concurrency is not None:
        assert details["max_concurrent_calls"] == concurrency
    assert details["concurrency"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_recommender_succeeds_with_8_threads_sharing_it_bit_identical_to_one_thread(
    recommender_bundles: dict[Runtime, Bundle], runtime: Runtime
) -> None:
    with Recommender.from_bundle(recommender_bundles[runtime], runtime=runtime) as recommender:
        result = stress.hammer(
            stress.recommend_answer(recommender),
            stress.recommender_inputs(),
            threads=THREADS,
            calls=THREADS * CALLS_PER_THREAD,
            baseline_calls=0,
        )
    _assert_exact(result)


def test_classifier_succeeds_with_concurrency_from_options_and_from_bundle(
    classifier_bundles: dict[Runtime, Bundle],
) -> None:
    runtime = stress.installed_runtimes()[0]
    with ImageClassifier.from_bundle(classifier_bundles[runtime], runtime=runtime, concurrency=3) as classifier:
        assert classifier.options.concurrency == 3
        assert classifier.info.details["max_concurrent_calls"] == 3
        assert classifier.model.plan.options.concurrency == 3
        result = classifier.classify(stress.classifier_inputs(1)[0])
        assert result.ran.details["max_concurrent_calls"] == 3


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "4"])
def test_classifier_options_fail_with_a_concurrency_that_is_not_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"ClassifierOptions\.concurrency"):
        ClassifierOptions(concurrency=bad)  # type: ignore[arg-type]


def test_classifier_fails_loudly_for_calls_waiting_when_it_is_closed(classifier_bundles: dict[Runtime, Bundle]) -> None:
    runtime = stress.installed_runtimes()[0]
    classifier = ImageClassifier.create(classifier_bundles[runtime], ClassifierOptions(runtime=runtime, concurrency=1))
    image = stress.classifier_inputs(1)[0]
    expected = stress.classify_answer(classifier)(image)
    outcomes: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        answer = stress.classify_answer(classifier)
        while True:
            try:
                got = answer(image)
            except Exception as e:
                with lock:
                    outcomes.append(e)
                return
            with lock:
                outcomes.append(got == expected)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    classifier.close()
    for t in threads:
        t.join(10)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == THREADS
    assert all(isinstance(e, InferenceError) and "closed" in str(e) for e in errors), errors
    assert all(o is True for o in outcomes if not isinstance(o, Exception))
    assert any(o is True for o in outcomes), "no call completed before close"
