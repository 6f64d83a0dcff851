"""Sessions shared by threads: the worker pool itself, then every adapter under several threads at once.

Every concurrent answer must equal, bit for bit, the one a single thread gets for the same input;
a session refuses loudly (InferenceError) once closed, never answers for another caller.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from runtimes._pool import Concurrency, WorkerPool
from sdk.errors import ConfigError, InferenceError
from sdk.runtime import ResizableSession, SessionOptions

THREADS = 8


@dataclasses.dataclass(frozen=True)
class Case:
    runtime: str
    model_fixture: str
    default_limit: str  # "1", "optimal" (OpenVINO's number) or "none"


def _case(runtime: str, fixture: str, default: str):  # -> pytest.param
    return pytest.param(Case(runtime, fixture, default), id=f"{runtime}-{fixture}", marks=getattr(pytest.mark, runtime))


CASES = [
    _case("litert", "tflite_file", "1"),
    _case("openvino", "ir_file", "optimal"),
    _case("onnxruntime", "onnx_file", "none"),
    _case("tensorflow", "keras_file", "none"),
    _case("tensorflow", "saved_model_dir", "none"),
]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[Case, ModuleType, Path]:
    c = request.param
    module = importlib.import_module(f"runtimes.{c.runtime}")
    try:
        module.require_backend()
    except ImportError as e:
        pytest.skip(f"{c.runtime} backend not installed: {e}")
    return c, module, request.getfixturevalue(c.model_fixture)


def _open(module: ModuleType, path: Path, **options: object):
    inputs, outputs = module.describe(path)
    return module.open_session(path, inputs, outputs, SessionOptions(**options))


def _batches(count: int, batch: int = 1, seed: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32) for _ in range(count)]


def _hammer(run, inputs: list[np.ndarray], calls_per_thread: int) -> tuple[int, list[BaseException]]:
    """(mismatches, errors) of THREADS threads calling ``run`` at once, each on different inputs."""
    expected = [run(x) for x in inputs]
    mismatches, errors, lock = [0], [], threading.Lock()
    barrier = threading.Barrier(THREADS)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(calls_per_thread):
            index = (i * THREADS + t) % len(inputs)
            try:
                got = run(inputs[index])
            except Exception as e:
                with lock:
                    errors.append(e)
                continue
            if not all(np.array_equal(a, b) for a, b in zip(got, expected[index], strict=True)):
                with lock:
                    mismatches[0] += 1

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    return mismatches[0], errors


# -- the pool ------------------------------------------------------------------------------------


def test_worker_pool_succeeds_with_limit_workers_at_once_and_the_next_call_waiting() -> None:
    pool: WorkerPool[object] = WorkerPool(object, 3, what="test session")
    holding = threading.Barrier(4, timeout=5)  # 3 holders + this thread: fails if fewer can hold at once
    release, fourth_got = threading.Event(), threading.Event()

    def hold() -> None:
        worker = pool.borrow()
        holding.wait()
        release.wait(5)
        pool.give_back(worker)

    def fourth() -> None:
        worker = pool.borrow()
        fourth_got.set()
        pool.give_back(worker)

    holders = [threading.Thread(target=hold) for _ in range(3)]
    for t in holders:
        t.start()
    holding.wait()
    late = threading.Thread(target=fourth)
    late.start()
    assert not fourth_got.wait(0.2), "a 4th call got a worker while 3 were busy with limit 3"
    assert pool.made == 3
    release.set()
    assert fourth_got.wait(5)
    for t in [*holders, late]:
        t.join(5)
    assert pool.made == 3


def test_worker_pool_succeeds_with_one_call_at_a_time_when_limit_is_1() -> None:
    pool: WorkerPool[list[int]] = WorkerPool(lambda: [0], 1, what="test session")
    peak, inside, lock = [0], [0], threading.Lock()

    def work() -> None:
        for _ in range(200):
            worker = pool.borrow()
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            worker[0] += 1  # not atomic: two holders at once could lose an increment
            with lock:
                inside[0] -= 1
            pool.give_back(worker)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    worker = pool.borrow()
    assert (peak[0], pool.made, worker[0]) == (1, 1, THREADS * 200)


def test_worker_pool_fails_with_waiting_calls_when_closed_and_close_waits_for_calls_in_flight() -> None:
    pool: WorkerPool[object] = WorkerPool(object, 1, what="test session")
    held = pool.borrow()
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(_borrow_or_error(pool)))
    waiter.start()
    time.sleep(0.1)  # the waiter is blocked in borrow()
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (pool.close(), closed.set()))
    closer.start()
    waiter.join(5)
    assert isinstance(outcome[0], InferenceError) and "closed" in str(outcome[0])
    assert not closed.wait(0.1), "close() returned while a call was still in flight"
    pool.give_back(held)
    assert closed.wait(5)
    assert pool.made == 0
    with pytest.raises(InferenceError, match="closed"):
        pool.borrow()


def _borrow_or_error(pool: WorkerPool[object]) -> object:
    try:
        return pool.borrow()
    except InferenceError as e:
        return e


def test_worker_pool_succeeds_with_the_slot_freed_when_making_a_worker_fails() -> None:
    attempts = [0]

    def make() -> object:
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("device busy")
        return object()

    pool: WorkerPool[object] = WorkerPool(make, 1, what="test session")
    with pytest.raises(RuntimeError, match="device busy"):
        pool.borrow()
    assert pool.made == 0
    pool.give_back(pool.borrow())
    assert pool.made == 1


def test_worker_pool_succeeds_with_the_limit_raised_and_lowered() -> None:
    pool: WorkerPool[object] = WorkerPool(object, 1, what="test session")
    a = pool.borrow()
    pool.set_limit(2)
    b = pool.borrow()  # would wait forever under the old limit
    pool.give_back(a)
    pool.give_back(b)
    assert pool.made == 2
    pool.set_limit(1)
    assert pool.made == 1  # the surplus free worker is dropped at once


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "4"])
def test_worker_pool_and_session_options_fail_with_a_limit_that_is_not_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        WorkerPool(object, bad, what="test session")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency"):
        SessionOptions(concurrency=bad)  # type: ignore[arg-type]


def test_concurrency_succeeds_with_the_cap_and_its_reason_reported() -> None:
    capped = Concurrency(worker="LiteRT interpreter", call="invoke", default=1, cap=1, cap_reason="delegate")
    assert capped.limit(4) == 1
    assert capped.details(1, 4) == {
        "concurrency": "one LiteRT interpreter behind a lock: concurrent calls wait their turn (4 requested; delegate)",
        "max_concurrent_calls": 1,
    }
    shared = Concurrency(worker=None, call="InferenceSession.run", default=None)
    assert shared.limit(None) is None and shared.limit(5) == 5
    assert "thread-safe" in shared.details(None, None)["concurrency"]


# -- every adapter -------------------------------------------------------------------------------


def test_session_succeeds_with_its_concurrency_in_info_and_resizable(case) -> None:
    c, module, path = case
    with _open(module, path) as session:
        details = session.info.details
        expected = {"1": 1, "none": None}.get(c.default_limit, details.get("optimal_number_of_infer_requests"))
        assert details["max_concurrent_calls"] == expected
        assert details["concurrency"]
        assert isinstance(session, ResizableSession)
        session.set_concurrency(3)
        assert session.info.details["max_concurrent_calls"] == 3
        assert "3" in session.info.details["concurrency"]
        with pytest.raises(ConfigError, match="concurrency"):
            session.set_concurrency(0)
    with pytest.raises(InferenceError, match="closed"):
        session.set_concurrency(2)
    with _open(module, path, concurrency=4) as session:
        assert session.info.details["max_concurrent_calls"] == 4


@pytest.mark.parametrize("concurrency", [None, 3])
def test_run_succeeds_with_threads_sharing_one_session_bit_identical_to_one_thread(case, concurrency) -> None:
    _, module, path = case
    with _open(module, path, concurrency=concurrency) as session:
        output = session.outputs()[0].name
        mismatches, errors = _hammer(lambda x: [session.run({"image": x})[output]], _batches(16), 25)
    assert (mismatches, errors) == (0, [])


def test_run_succeeds_with_outputs_that_outlive_the_next_call_on_the_same_worker(case) -> None:
    _, module, path = case
    first, second = _batches(2)
    with _open(module, path, concurrency=1) as session:
        output = session.outputs()[0].name
        a = session.run({"image": first})[output]
        kept = a.copy()
        b = session.run({"image": second})[output]
    assert np.array_equal(a, kept) and not np.array_equal(a, b)
    assert not np.shares_memory(a, b)


def test_run_fails_loudly_for_calls_after_or_waiting_on_close(case) -> None:
    _, module, path = case
    session = _open(module, path, concurrency=1)
    output = session.outputs()[0].name
    (x,) = _batches(1)
    expected = session.run({"image": x})[output]
    outcomes: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            try:
                got = session.run({"image": x})[output]
            except Exception as e:
                with lock:
                    outcomes.append(e)
                return
            with lock:
                outcomes.append(np.array_equal(got, expected))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    session.close()
    for t in threads:
        t.join(10)
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert len(errors) == 4 and all(isinstance(e, InferenceError) and "closed" in str(e) for e in errors)
    assert all(o is True for o in outcomes if not isinstance(o, Exception))


@pytest.mark.openvino
def test_openvino_run_succeeds_with_threads_on_other_batch_sizes_of_a_static_model(static_ir_file: Path) -> None:
    ov_adapter = pytest.importorskip("runtimes.openvino")
    pytest.importorskip("openvino")
    with _open(ov_adapter, static_ir_file, concurrency=2) as session:
        output = session.outputs()[0].name
        inputs = [*_batches(4, batch=3), *_batches(4, batch=1, seed=3)]
        mismatches, errors = _hammer(lambda x: [session.run({"image": x})[output]], inputs, 10)
    assert (mismatches, errors) == (0, [])


@pytest.mark.openvino
def test_openvino_run_async_succeeds_with_two_threads_each_getting_its_own_results(ir_file: Path) -> None:
    ov_adapter = pytest.importorskip("runtimes.openvino")
    pytest.importorskip("openvino")
    feeds = [[{"image": x} for x in _batches(12, seed=seed)] for seed in (1, 2)]
    with ov_adapter.open_async_session(ir_file, *ov_adapter.describe(ir_file), SessionOptions(), requests=2) as session:
        output = session.outputs()[0].name
        expected = [[session.run(f)[output] for f in group] for group in feeds]
        results: dict[int, list] = {}
        threads = [
            threading.Thread(target=lambda g=g: results.__setitem__(g, [session.run_async(feeds[g]) for _ in range(5)]))
            for g in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for g in (0, 1):
        for run in results[g]:
            assert all(np.array_equal(r[output], e) for r, e in zip(run, expected[g], strict=True))
