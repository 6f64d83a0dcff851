"""Calibrate the "unknown product" rule of a classification bundle on validation data.

The rule is chosen from data, never guessed: on the validation photos the bundle classifies
correctly, each candidate rule's threshold is the loosest one that still keeps ``target`` of
them (e.g. 95%); of the candidates, the one that rejects the most wrongly classified photos
wins (ties: the confidence rule, which needs no centroids). Candidates:

- ``confidence``: top-1 softmax probability below the threshold -> unknown;
- ``distance``: cosine distance from the photo's embedding to the nearest class centroid (the
  mean of the class's L2-normalised training embeddings) above the threshold -> unknown
  (needs a bundle with an embedding output: ``converters/models/embedding.py``).

:func:`calibrate_unknown` runs the bundle through the public SDK, records the rule in the
manifest's ``unknown`` section (and ``centroids.npy`` for ``distance``) and re-hashes the
bundle; a signature no longer holds and is removed (sign again). The pure parts
(:func:`choose_threshold`, :func:`choose_rule`, :func:`class_centroids`) take arrays.
Stateless; safe across threads on different bundles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle, write_bundle
from sdk.classifier import ImageClassifier
from sdk.data import ImageDataset
from sdk.embedder import ImageEmbedder
from sdk.enums import Runtime
from sdk.errors import ConfigError
from sdk.unknown_spec import (
    EMBEDDING_OUTPUT,
    RULE_CONFIDENCE,
    RULE_DISTANCE,
    RULES,
    UnknownRule,
    l2_normalise,
    nearest_centroid_distance,
)

CENTROIDS_FILE = "centroids.npy"
AUTO = "auto"
_BATCH = 32


def choose_threshold(values: np.ndarray, correct: np.ndarray, *, target: float, higher_is_known: bool) -> float:
    """The loosest threshold that keeps at least ``target`` of the correctly classified photos.

    Args:
        values: one score per photo (a confidence, or a distance).
        correct: per photo, whether the classifier's top-1 was right.
        target: share of correct photos to keep, in (0, 1].
        higher_is_known: True for confidences (keep ``value >= threshold``), False for
            distances (keep ``value <= threshold``).

    Raises:
        ConfigError: no photo is classified correctly, or the arrays do not match.
    """
    values, correct = np.asarray(values, np.float64), np.asarray(correct, bool)
    if values.shape != correct.shape or values.ndim != 1:
        raise ConfigError(f"calibrate_unknown: {values.shape} values for {correct.shape} verdicts; pass one each")
    kept = np.sort(values[correct])
    if kept.size == 0:
        raise ConfigError(
            "calibrate_unknown: no validation photo is classified correctly, so no threshold can keep any; "
            "train the model further or check the labels"
        )
    # The k-th best correct photo sets the threshold: keeping it keeps at least k of them.
    k = math.ceil(target * kept.size)
    return float(kept[kept.size - k] if higher_is_known else kept[k - 1])


def measure(known: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """What a rule does on labelled photos: counts, kept share of correct, rejected share of wrong."""
    known, correct = np.asarray(known, bool), np.asarray(correct, bool)
    n_correct, n_wrong = int(correct.sum()), int((~correct).sum())
    accepted = int(known.sum())
    return {
        "n": int(known.size),
        "n_correct": n_correct,
        "n_wrong": n_wrong,
        "kept_correct": round(float((known & correct).sum() / max(n_correct, 1)), 4),
        "rejected_wrong": round(float((~known & ~correct).sum() / max(n_wrong, 1)), 4) if n_wrong else None,
        "rejection_rate": round(1.0 - accepted / max(known.size, 1), 4),
        "accuracy_accepted": round(float((known & correct).sum() / accepted), 4) if accepted else None,
        "accuracy_all": round(n_correct / max(known.size, 1), 4),
    }


def choose_rule(
    confidence: np.ndarray,
    distance: np.ndarray | None,
    correct: np.ndarray,
    *,
    target: float = 0.95,
    rule: str = AUTO,
    centroids_file: str = CENTROIDS_FILE,
) -> UnknownRule:
    """The rule (``confidence``, ``distance`` or the better of both for ``auto``) calibrated on the data.

    Raises:
        ConfigError: an unknown rule or target, ``distance`` without distances, or no correct photo.
    """
    if rule not in (*RULES, AUTO):
        raise ConfigError(f"calibrate_unknown: rule {rule!r} is not one of {', '.join((*RULES, AUTO))}")
    if isinstance(target, bool) or not (isinstance(target, (int, float)) and 0.0 < target <= 1.0):
        raise ConfigError(f"calibrate_unknown: target {target!r} must be a share in (0, 1], e.g. 0.95")
    if rule == RULE_DISTANCE and distance is None:
        raise ConfigError("calibrate_unknown: rule 'distance' needs embeddings; export the bundle with its embedding")
    candidates = []
    if rule in (RULE_CONFIDENCE, AUTO):
        t = choose_threshold(confidence, correct, target=target, higher_is_known=True)
        candidates.append(UnknownRule(rule=RULE_CONFIDENCE, threshold=min(t, 1.0), target=target))
    if rule in (RULE_DISTANCE, AUTO) and distance is not None:
        t = choose_threshold(distance, correct, target=target, higher_is_known=False)
        t = min(max(t, 0.0), 2.0)
        candidates.append(UnknownRule(rule=RULE_DISTANCE, threshold=t, target=target, centroids_file=centroids_file))
    scored = []
    for candidate in candidates:
        known = ~candidate.rejects(confidence, distance)
        scored.append(dataclasses.replace(candidate, measured=measure(known, correct)))
    # Most wrong photos rejected wins; on a tie the first (confidence: no centroids to ship).
    return max(scored, key=lambda c: c.measured["rejected_wrong"] or 0.0)


def class_centroids(embeddings: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """One unit-length centroid per class: the normalised mean of its normalised embeddings.

    Raises:
        ConfigError: a class has no training embedding.
    """
    unit, labels = l2_normalise(embeddings), np.asarray(labels)
    missing = [c for c in range(classes) if not np.any(labels == c)]
    if missing:
        raise ConfigError(
            f"calibrate_unknown: classes {missing[:10]} have no training photo, so they have no centroid; "
            "pass a training split with every class"
        )
    return l2_normalise(np.stack([unit[labels == c].mean(axis=0) for c in range(classes)]))


def record_unknown(bundle: Bundle, rule: UnknownRule, centroids: np.ndarray | None) -> Bundle:
    """Write ``rule`` (and its centroids) into ``bundle``'s manifest; returns the reopened bundle.

    Raises:
        ConfigError: the rule needs centroids that are not given.
        BundleError: a file cannot be written or re-hashed.
    """
    files = dict(bundle.manifest.files)
    old = bundle.manifest.unknown
    if old is not None and old.centroids_file and old.centroids_file != rule.centroids_file:
        files.pop(old.centroids_file, None)
        (bundle.path / old.centroids_file).unlink(missing_ok=True)
    if rule.centroids_file is not None:
        if centroids is None:
            raise ConfigError("record_unknown: the 'distance' rule needs its class centroids")
        np.save(bundle.path / rule.centroids_file, np.asarray(centroids, np.float32), allow_pickle=False)
        files[rule.centroids_file] = ""
    return write_bundle(bundle.path, bundle.manifest.with_changes(unknown=rule, files=files))


def calibrate_unknown(
    bundle: str | Path | Bundle,
    *,
    train: ImageDataset,
    val: ImageDataset,
    target: float = 0.95,
    rule: str = AUTO,
    runtime: Runtime | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Calibrate ``bundle``'s unknown rule on ``val`` (centroids from ``train``) and record it.

    Raises:
        ConfigError: the datasets' classes are not the bundle's labels, a class has no training
            photo, no val photo is classified correctly, or as :func:`choose_rule`.
        BundleError, ManifestError, BackendUnavailableError, InferenceError, InputError: as
            opening and running the bundle with ``sdk.ImageClassifier`` / ``sdk.ImageEmbedder``.
    """
    say = progress or (lambda line: None)
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(Path(bundle))
    for split in (train, val):
        if tuple(split.class_names) != tuple(opened.labels):
            raise ConfigError(
                f"calibrate_unknown: the {split.split} split's classes ({len(split.class_names)}) are not the labels "
                f"of {opened.path} ({len(opened.labels)}), in order; pass the data the model was trained on"
            )
    has_embedding = any(o.name == EMBEDDING_OUTPUT for o in opened.manifest.outputs)
    say(f"classifying {len(val)} val photos…")
    confidence, predicted, val_vectors = _run(opened, val, runtime, with_embedding=has_embedding)
    correct = predicted == np.asarray(val.labels)
    distance = centroids = None
    if has_embedding and rule != RULE_CONFIDENCE:
        say(f"embedding {len(train)} train photos for the class centroids…")
        _, _, train_vectors = _run(opened, train, runtime, with_embedding=True)
        assert train_vectors is not None and val_vectors is not None
        centroids = class_centroids(train_vectors, np.asarray(train.labels), len(opened.labels))
        distance = nearest_centroid_distance(val_vectors, centroids)
    chosen = choose_rule(confidence, distance, correct, target=target, rule=rule)
    say(f"rule {chosen.rule}, threshold {chosen.threshold:.4f}: {_summary(chosen.measured)}")
    return record_unknown(opened, chosen, centroids if chosen.rule == RULE_DISTANCE else None)


def _run(
    bundle: Bundle, data: ImageDataset, runtime: Runtime | str | None, *, with_embedding: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-1 probability, top-1 index and (optionally) unit embeddings of every photo of ``data``."""
    confidence, predicted, vectors = [], [], []
    # The rule is being replaced: classify with the bundle as it would answer without one.
    plain = dataclasses.replace(bundle, manifest=bundle.manifest.with_changes(unknown=None))
    with ImageClassifier.from_bundle(plain, runtime=runtime, top_k=1) as classifier:
        for start in range(0, len(data), _BATCH):
            for result in classifier.classify_batch(data.paths[start : start + _BATCH]):
                confidence.append(result.top1.score)
                predicted.append(result.top1.index)
    if with_embedding:
        with ImageEmbedder.from_bundle(bundle, runtime=runtime) as embedder:
            for start in range(0, len(data), _BATCH):
                vectors.extend(e.vector for e in embedder.embed_batch(data.paths[start : start + _BATCH]))
    return np.asarray(confidence), np.asarray(predicted), np.stack(vectors) if vectors else None


def _summary(measured: Mapping[str, Any]) -> str:
    return (
        f"keeps {measured['kept_correct']:.1%} of {measured['n_correct']} correct, rejects "
        f"{measured['rejected_wrong'] or 0:.1%} of {measured['n_wrong']} wrong; accuracy on accepted "
        f"{measured['accuracy_accepted'] or 0:.1%}, rejection rate {measured['rejection_rate']:.1%}"
    )
