"""The ``unknown`` section of an image classification manifest: when to say "I don't know".

Written by ``converters/training/calibrate_unknown.py`` from validation data; bundles without
it classify as they always did. Two rules:

- ``confidence``: the photo is unknown when the top-1 probability (softmax max) is below
  ``threshold``;
- ``distance``: the photo is unknown when the cosine distance (1 - cosine similarity) from its
  L2-normalised embedding to the nearest class centroid is above ``threshold``. The centroids
  (one L2-normalised row per class, in label order) are ``centroids_file``, a float32 ``.npy``
  listed and hashed in the manifest's ``files``.

``target`` is the share of correctly classified validation photos the threshold was chosen to
keep; ``measured`` holds what the calibration measured on that data (counts and rates).

Immutable; safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdk._strict import StrictReader, as_float, as_relative_path, as_str, as_str_dict
from sdk.errors import ManifestError

# The name of an image model's embedding output (converters/models/embedding.py writes it).
EMBEDDING_OUTPUT = "embedding"
RULE_CONFIDENCE = "confidence"
RULE_DISTANCE = "distance"
RULES = (RULE_CONFIDENCE, RULE_DISTANCE)
# Cosine distance of unit vectors lies in [0, 2]; a probability in [0, 1].
_THRESHOLD_RANGE = {RULE_CONFIDENCE: (0.0, 1.0), RULE_DISTANCE: (0.0, 2.0)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnknownRule:
    """A calibrated rejection rule (see the module docstring).

    Attributes:
        rule: ``"confidence"`` or ``"distance"``.
        threshold: top-1 probability below which (confidence), or cosine distance above which
            (distance), a photo is unknown.
        target: the share of correctly classified validation photos the threshold keeps, in (0, 1].
        centroids_file: the class centroids (``distance`` only; None for ``confidence``).
        measured: what calibration measured (plain JSON values).

    Raises:
        ValueError: an unknown rule, a threshold or target out of range, or a centroids file
            missing for ``distance`` (or given for ``confidence``).
    """

    rule: str
    threshold: float
    target: float
    centroids_file: str | None = None
    measured: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown.rule {self.rule!r} is not one of: {', '.join(RULES)}")
        low, high = _THRESHOLD_RANGE[self.rule]
        if not (math.isfinite(self.threshold) and low <= self.threshold <= high):
            raise ValueError(f"unknown.threshold {self.threshold} for rule {self.rule!r} must be in [{low}, {high}]")
        if not (math.isfinite(self.target) and 0.0 < self.target <= 1.0):
            raise ValueError(f"unknown.target {self.target} must be a share in (0, 1], e.g. 0.95")
        if (self.rule == RULE_DISTANCE) != (self.centroids_file is not None):
            raise ValueError(
                "unknown.centroids_file must be given for rule 'distance' and only for it, "
                f"got rule {self.rule!r} with centroids_file {self.centroids_file!r}"
            )

    def rejects(self, confidence: np.ndarray, distance: np.ndarray | None) -> np.ndarray:
        """Per photo, whether it is unknown: a bool array from top-1 probabilities and centroid distances.

        Raises:
            ValueError: the rule is ``distance`` and no distances are given.
        """
        if self.rule == RULE_CONFIDENCE:
            return np.asarray(confidence) < self.threshold
        if distance is None:
            raise ValueError("the 'distance' rule needs the cosine distance to the nearest centroid")
        return np.asarray(distance) > self.threshold

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle files this section needs (the centroids, for ``distance``)."""
        return (self.centroids_file,) if self.centroids_file else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "threshold": self.threshold,
            "target": self.target,
            "centroids_file": self.centroids_file,
            "measured": dict(self.measured),
        }

    @classmethod
    def from_section(cls, manifest: StrictReader, key: str) -> UnknownRule | None:
        """Parse the manifest's optional ``key`` section; None when it is absent or null.

        Raises:
            ManifestError (via ``manifest``): an unknown/missing key or an impossible value.
        """
        r = manifest.child(key, required=False)
        return cls.from_reader(r) if r is not None else None

    @classmethod
    def from_reader(cls, r: StrictReader) -> UnknownRule:
        """Parse strictly.

        Raises:
            ManifestError (via ``r``): an unknown/missing key or an impossible value.
        """
        try:
            value = cls(
                rule=r.required("rule", as_str),
                threshold=r.required("threshold", as_float),
                target=r.required("target", as_float),
                centroids_file=r.optional("centroids_file", None, as_relative_path),
                measured=r.optional("measured", {}, as_str_dict),
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Each row of a (n, d) array scaled to unit length, as float32 (an all-zero row stays zero)."""
    rows = np.asarray(rows, np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


def nearest_centroid_distance(unit_rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cosine similarity) from each unit row to its nearest unit centroid."""
    similarity = unit_rows @ centroids.T
    return (1.0 - similarity.max(axis=-1)).astype(np.float32)


def load_centroids(bundle_dir: Path, rule: UnknownRule, classes: int, dim: int) -> np.ndarray:
    """The rule's class centroids, (classes, dim) float32 unit rows, read from the bundle.

    The file's hash was checked when the bundle was opened; it is read without pickles.

    Raises:
        ManifestError: the file cannot be read as a float (classes, dim) array, or a row is not
            of unit length; re-run the calibration (converters/training/calibrate_unknown.py).
    """
    assert rule.centroids_file is not None
    path = Path(bundle_dir) / rule.centroids_file
    fix = "re-run the unknown-product calibration on this bundle"
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read the class centroids ({e}); {fix}") from e
    if centroids.dtype.kind != "f" or centroids.shape != (classes, dim) or not np.all(np.isfinite(centroids)):
        raise ManifestError(
            f"{path}: centroids are {centroids.dtype} {centroids.shape}, expected finite float ({classes}, {dim}): "
            f"one row per label and embedding dimension; {fix}"
        )
    centroids = centroids.astype(np.float32)
    if not np.allclose(np.linalg.norm(centroids, axis=-1), 1.0, atol=1e-3):
        raise ManifestError(f"{path}: centroid rows must have unit length; {fix}")
    return centroids
