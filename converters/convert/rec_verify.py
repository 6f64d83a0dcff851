"""Verification of every recommendation candidate through ``sdk``: ranked cases, NDCG@10, overlap with fp32.

A candidate bundle is opened with :class:`sdk.recommender.Recommender` on the runtime the profile
names (fallback ``record``: the report says where it ran) and every validation and test case is
ranked by the shared evaluator (:mod:`sdk.qa.ranking`), exactly as ``rec-compare`` and
``rec-distill`` rank a model: items already in the history excluded, pessimistic ties. Validation
NDCG@10 decides the budget and the choice; the test cases only feed the report (HR@10, NDCG@10 with
its 95 % grouped-bootstrap interval, coverage@10). The quantizers' budget search judges a bare model
file before it is a bundle: :func:`ndcg_eval_fn` runs it through the format's sdk adapter and scores
the user vectors against the fp32 bundle's item table, the numbers ``Recommender`` computes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from converters.convert.plan import ConvertPlan
from converters.convert.rec_report import RecEvaluation, RecVariant
from converters.models.sasrec import pad_histories
from converters.quantize import common as qc
from converters.training.loop import Log
from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, Precision
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases
from sdk.qa.ranking import HIT_K, RankedCases, rank_cases
from sdk.qa.ranking_stats import ranking_report
from sdk.recommender import Recommender, RecommenderOptions
from sdk.recommender_items import read_item_files
from sdk.runtime import SessionOptions, describe_model, open_session

_BATCH = 256


def verify_recommender(
    bundle: Bundle,
    val: EvalCases,
    test: EvalCases,
    plan: ConvertPlan,
    log: Log,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> RecEvaluation:
    """Rank ``val`` and ``test`` with ``bundle`` through ``sdk.Recommender`` on the profile's runtime.

    Raises:
        ConfigError, BundleError: the bundle is not a recommendation bundle for these cases.
        BackendUnavailableError: the format's runtime is not installed here.
        InferenceError: the runtime failed.
    """
    started = time.perf_counter()
    options = RecommenderOptions(profile=plan.profile, fallback="record")
    with Recommender.create(bundle, options) as recommender:
        ids = recommender.catalogue.ids
        n_items = len(ids)

        def score(histories: Sequence[np.ndarray]) -> np.ndarray:
            return np.stack([recommender.scores([ids[i] for i in history]) for history in histories])

        name = bundle.path.name
        ranked_val = rank_cases(score, val, n_items, name=name)
        ranked_test = rank_cases(score, test, n_items, name=name)
        ran = recommender.info
    evaluation = RecEvaluation(
        val=ranked_val,
        test=ranked_test,
        test_report=ranking_report(ranked_test, resamples=resamples, seed=seed),
        ran=ran,
        seconds=time.perf_counter() - started,
    )
    log(
        f"[verify] {bundle.path.name}: val NDCG@10 {evaluation.val_ndcg:.4f}, test NDCG@10 "
        f"{evaluation.test_report.metric('ndcg@10').format()} on {ran.runtime.value} {ran.actual_device}"
        f"{' (fell back)' if ran.fell_back else ''}"
    )
    return evaluation


def overlap_at_10(candidate: RankedCases, reference: RankedCases) -> float:
    """Mean share of the reference's top-10 items that the candidate's top-10 also holds, over the cases."""
    a, b = candidate.top_items[:, :HIT_K], reference.top_items[:, :HIT_K]
    common = ((a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)).any(axis=2).sum(axis=1)
    listed = np.maximum((b >= 0).sum(axis=1), 1)
    return float(np.mean(common / listed))


def rec_budget_misses(
    plan: ConvertPlan, precision: Precision, drop_pt: float, ndcg: float, fp32_ndcg: float, overlap: float
) -> tuple[str, ...]:
    """What a candidate misses: the NDCG@10 budget (points), and the task tier of its parity tolerances.

    As ``choice.budget_misses`` for classifiers: ``min_accuracy_ratio`` is validation NDCG@10 as a
    fraction of the fp32 bundle's, ``min_overlap_at_10`` the share of fp32's top-10 it keeps.
    """
    tol = plan.profile.tolerance(precision)
    ratio = ndcg / fp32_ndcg if fp32_ndcg > 0 else 1.0
    misses = []
    if drop_pt > plan.max_drop_pt + 1e-9:
        misses.append(f"NDCG@10 drop {drop_pt:.2f} pt > budget {plan.max_drop_pt:g} pt")
    if tol.min_accuracy_ratio is not None and ratio < tol.min_accuracy_ratio - 1e-9:
        misses.append(f"NDCG@10 {ratio:.4f} of fp32 < parity min_accuracy_ratio {tol.min_accuracy_ratio:g}")
    if tol.min_overlap_at_10 is not None and overlap < tol.min_overlap_at_10 - 1e-9:
        misses.append(f"top-10 overlap {overlap:.4f} < parity min_overlap_at_10 {tol.min_overlap_at_10:g}")
    return tuple(misses)


def make_rec_variant(
    bundle: Bundle,
    precision: Precision,
    evaluation: RecEvaluation,
    fp32: RecEvaluation,
    fp32_size_bytes: int,
    plan: ConvertPlan,
    seconds: float,
) -> RecVariant:
    """The report row of a verified candidate, judged against the fp32 bundle's NDCG@10, answers and size."""
    drop = round((fp32.val_ndcg - evaluation.val_ndcg) * 100.0, 6)
    overlap = overlap_at_10(evaluation.val, fp32.val)
    return RecVariant(
        name=bundle.path.name,
        bundle=bundle,
        precision=precision,
        evaluation=evaluation,
        drop_pt=drop,
        overlap=overlap,
        test_overlap=overlap_at_10(evaluation.test, fp32.test),
        misses=rec_budget_misses(plan, precision, drop, evaluation.val_ndcg, fp32.val_ndcg, overlap),
        kept_in_float=len(bundle.manifest.kept_in_float),
        size_bytes=bundle.size_bytes(),
        fp32_size_bytes=fp32_size_bytes,
        seconds=seconds,
    )


def ndcg_eval_fn(fp32: Bundle, cases: EvalCases) -> qc.EvalFn:
    """Validation NDCG@10 of a candidate encoder file, scored against ``fp32``'s item table.

    The file runs through the sdk adapter of the bundle's format (CPU, what the quantizers'
    budget search measures); user vectors score ``table @ user + bias`` as ``Recommender`` does.

    Raises:
        ConfigError: ``fp32`` is not a recommendation bundle.
        BundleError: its item files cannot be read.
    """
    spec = fp32.manifest.recommendation
    if spec is None:
        raise ConfigError(f"{fp32.path}: not a recommendation bundle; pass the fp32 bundle with its item files")
    items = read_item_files(fp32.path, spec)
    table, bias = items.dequantized(), items.bias
    popularity = np.asarray(items.popularity, np.float32)
    runtime = RUNTIMES_FOR_FORMAT[fp32.manifest.format][0]

    def evaluate_file(path: Path) -> float:
        inputs, outputs = describe_model(runtime, path)
        feed, out = inputs[0], outputs[0]
        with open_session(runtime, path, inputs, outputs, SessionOptions()) as session:

            def score(histories: Sequence[np.ndarray]) -> np.ndarray:
                raw = session.run({feed.name: pad_histories(histories, spec.max_len)})[out.name]
                if out.quantization is not None:
                    raw = out.quantization.dequantize(raw)
                users = np.asarray(raw, np.float32).reshape(len(histories), -1)
                scores = users @ table.T
                scores = scores + bias if bias is not None else scores
                # An empty history gets the popularity ranking, as Recommender.scores gives it.
                empty = [i for i, history in enumerate(histories) if not len(history)]
                scores[empty] = popularity
                return scores

            ranked = rank_cases(score, cases, spec.n_items, batch_size=_BATCH, name=path.name)
        return float(ranked.per_case()["ndcg@10"].mean())

    return evaluate_file
