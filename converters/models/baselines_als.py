"""ALS baseline: implicit-feedback matrix factorisation from the ``implicit`` package (CPU).

Fitting uses ``implicit.cpu.als.AlternatingLeastSquares``; scoring does not need the package. A
history never seen in training (a basket, a leave-last-out history) gets its user factor the way
``implicit``'s ``recalculate_user`` computes it, solved here in numpy from the item factors::

    (Y^T Y + (alpha - 1) Y_h^T Y_h + regularization I) x = alpha * sum(Y_h)

(``Y_h``: the factors of the history's items; checked against ``recalculate_user`` in the tests),
then ``score = x @ Y^T``. An empty history has a zero factor and scores every item 0.

A fitted :class:`Als` is frozen with read-only arrays: safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from converters.models.baselines import check_train, interaction_matrix
from sdk.errors import BackendUnavailableError, ConfigError

MAX_THREADS = 2  # this project's machines share two cores among everyone


@dataclasses.dataclass(frozen=True, kw_only=True)
class Als:
    """Item factors and the settings a history's user factor is solved with.

    Attributes:
        item_factors: ``(n_items, factors)`` float32.
        regularization: the L2 penalty of the least-squares solve.
        alpha: the confidence of an observed interaction (an unobserved one has confidence 1).
        iterations: the ALS sweeps the factors were fitted with (recorded, not used to score).
    """

    item_factors: np.ndarray
    regularization: float
    alpha: float
    iterations: int
    name: str = "als"

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    @property
    def params(self) -> Mapping[str, Any]:
        return {
            "factors": int(self.item_factors.shape[1]),
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
        }

    def user_factors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """One least-squares user factor per history (float32, ``(len(histories), factors)``).

        Raises:
            ConfigError: a history holds an index outside the catalogue.
        """
        matrix = interaction_matrix(histories, self.n_items, what="als histories")
        factors = self.item_factors.astype(np.float64)
        size = factors.shape[1]
        base = factors.T @ factors + self.regularization * np.eye(size)
        out = np.zeros((len(histories), size), np.float64)
        for row in range(len(histories)):
            items = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
            if not items.size:
                continue  # no evidence: the zero factor, every item scores 0
            chosen = factors[items]
            system = base + (self.alpha - 1.0) * (chosen.T @ chosen)
            out[row] = np.linalg.solve(system, self.alpha * chosen.sum(axis=0))
        return out.astype(np.float32)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """``user_factor @ item_factors.T`` for each history.

        Raises:
            ConfigError: a history holds an index outside the catalogue.
        """
        return np.asarray(self.user_factors(histories) @ self.item_factors.T, np.float32)


def fit_als(
    train_rows: Sequence[np.ndarray],
    n_items: int,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    iterations: int = 15,
    alpha: float = 10.0,
    threads: int = MAX_THREADS,
    seed: int = 0,
) -> Als:
    """Fit ALS on the binary training rows (``implicit``, CPU, no progress bar).

    Raises:
        ConfigError: a parameter is out of range (factors, iterations, threads >= 1; regularization,
            alpha > 0; threads at most 2), or bad training rows.
        BackendUnavailableError: the ``implicit`` package is not installed.
    """
    checks = {
        "factors": (factors, factors >= 1),
        "iterations": (iterations, iterations >= 1),
        "threads": (threads, 1 <= threads <= MAX_THREADS),
        "regularization": (regularization, regularization > 0),
        "alpha": (alpha, alpha > 0),
    }
    for key, (value, ok) in checks.items():
        if not ok:
            raise ConfigError(
                f"als: {key}={value!r} is out of range; factors, iterations >= 1, "
                f"1 <= threads <= {MAX_THREADS}, regularization and alpha > 0"
            )
    matrix = check_train(train_rows, n_items, "als")
    cpu_als, limits = _import_implicit()
    # implicit warns when BLAS runs its own thread pool beside its own threads, and its package
    # import probes for CUDA: neither is news to the caller, so both stay out of their terminal.
    with warnings.catch_warnings(), limits(1, "blas"):
        warnings.simplefilter("ignore")
        model = cpu_als.AlternatingLeastSquares(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            num_threads=threads,
            random_state=seed,
        )
        model.fit(matrix, show_progress=False)
    item_factors = np.ascontiguousarray(model.item_factors, np.float32)
    item_factors.flags.writeable = False  # shared across threads: nobody may write it
    return Als(
        item_factors=item_factors, regularization=float(regularization), alpha=float(alpha), iterations=iterations
    )


def _import_implicit() -> tuple[Any, Any]:
    # implicit is optional (the recsys extra) and slow to import: only fitting ALS needs it.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import implicit.cpu.als as cpu_als
            from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise BackendUnavailableError(
            f"als: the 'implicit' package is not installed ({e}); pip install 'shelfedge[recsys]'"
        ) from e
    return cpu_als, threadpool_limits
