"""Saved recommendation references: a model's scores on every evaluation case, compared anywhere later.

The recommendation counterpart of :mod:`sdk.qa.reference`, with the same guarantees: a directory
holding ``reference.npz`` and ``reference.json``, the JSON written last (a directory holding it is
complete) and naming the npz's sha256 (checked on load), and a hash per input so that a comparison
on another machine proves it fed the candidate the same inputs. The inputs are evaluation cases
(a basket with one item hidden, a user's history), so each case carries two hashes:

- ``history_sha256``: the case's item indices (int32) as the dataset split gives them — the same
  for every model, so it proves the same data, split, seed and limit;
- ``window_sha256``: the (max_len,) int32 encoder input the reference model saw (item index + 1,
  left-padded, newest last; a basket counts an item once) — checked for a candidate of the same
  window, proving the same window rules.

``reference.npz`` holds ``scores`` (cases, n_items) float32 (every item's score, before any
exclusion), ``top_k`` (cases, k) int32 (the best items with the history excluded, -1 where fewer
were left), ``targets`` and ``groups`` (the held-out item and the basket/user of each case) and,
when the reference is a recommendation bundle, its dequantized ``item_table`` and ``item_bias``:
they tell a later comparison whether a candidate is the same model (:mod:`sdk.qa.rec_parity`).
``reference.json`` records the dataset spec (to open the same cases again), the per-case hashes,
the catalogue's sha256 and where the reference ran. Making one: :mod:`sdk.qa.rec_reference_make`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import sha256_file
from sdk.errors import BundleError, ConfigError, InputError, ManifestError, ParityError
from sdk.interaction_splits import EvalCases
from sdk.qa.ranking import RankedCases, rank_cases
from sdk.qa.rec_reference_file import (
    REC_REFERENCE_SCHEMA_VERSION,
    TASK,
    full_info,
    parse_document,
    write_files,
)
from sdk.qa.rec_reference_spec import RecDatasetSpec, case_windows, catalogue_sha256
from sdk.qa.reference_schema import REFERENCE_JSON, REFERENCE_NPZ, read_npz, tensor_sha256

__all__ = [
    "REC_REFERENCE_SCHEMA_VERSION",
    "TASK",
    "TOP_K",
    "RecReference",
    "is_rec_reference",
    "load_rec_reference",
    "rank_scores",
    "save_rec_reference",
]

TOP_K = 10


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RecReference:
    """A loaded, verified recommendation reference; arrays are read-only. Compare by content, not ``==``.

    Immutable: safe to share across threads.
    """

    path: Path
    created_utc: str
    dataset: RecDatasetSpec
    k: int
    max_len: int
    history_sha256: tuple[str, ...]
    window_sha256: tuple[str, ...]
    scores: np.ndarray  # (cases, n_items) float32
    top_k: np.ndarray  # (cases, k) int32, -1 where fewer items were left
    targets: np.ndarray  # (cases,) int32
    groups: np.ndarray  # (cases,) int32
    item_table: np.ndarray | None  # (n_items, dim) float32: the reference bundle's table, dequantized
    item_bias: np.ndarray | None
    info: Mapping[str, Any]
    npz_sha256: str

    @property
    def num_cases(self) -> int:
        return len(self.history_sha256)

    @property
    def cases(self) -> str:
        return f"{self.num_cases:,} {self.dataset.split} cases of {self.dataset.spec}"

    def check_cases(self, cases: EvalCases, where: str) -> None:
        """Prove that ``cases`` are the ones the reference was made on: count, histories and targets.

        Raises:
            ParityError: naming the first differing case and how many differ.
        """
        fix = (
            f"the dataset, split, seed or limit differ from the reference's ({self.dataset.describe()}); "
            "open the dataset the reference recorded"
        )
        if len(cases) != self.num_cases:
            raise ParityError(f"{where}: {len(cases):,} cases, the reference has {self.num_cases:,}; {fix}")
        hashes = history_hashes(cases.histories)
        differing = [i for i, (a, b) in enumerate(zip(hashes, self.history_sha256, strict=True)) if a != b]
        differing += [int(i) for i in np.flatnonzero(np.asarray(cases.targets) != self.targets) if i not in differing]
        if differing:
            first = min(differing)
            raise ParityError(
                f"{where}: case {first} (history of {len(cases.histories[first])} items, held-out item "
                f"{int(cases.targets[first])}) differs from the reference's ({len(differing)} of {self.num_cases} "
                f"cases differ); {fix}"
            )

    def check_windows(self, cases: EvalCases, max_len: int, kind: str, where: str) -> str:
        """Check the encoder windows a candidate of window ``max_len`` builds against the reference's.

        Returns:
            What was checked, in words (windows of another length are not comparable).

        Raises:
            ParityError: a window of the same length differs (other window rules).
        """
        if max_len != self.max_len or kind != self.dataset.kind:
            return f"windows not compared: the reference's model sees {self.max_len} items, this one {max_len}"
        hashes = [tensor_sha256(w) for w in case_windows(cases.histories, max_len, kind)]
        differing = [i for i, (a, b) in enumerate(zip(hashes, self.window_sha256, strict=True)) if a != b]
        if differing:
            raise ParityError(
                f"{where}: the encoder input of case {differing[0]} differs from the reference's "
                f"({len(differing)} of {self.num_cases} windows differ) although the histories are the same; "
                "the window rules (order, repeats, padding) changed: make the reference again with this shelfedge"
            )
        return f"same {max_len}-item windows for all {self.num_cases:,} cases"

    def check_catalogue(self, ids: Sequence[str], where: str) -> None:
        """Refuse a candidate whose catalogue is not the reference's, item for item.

        Raises:
            ParityError: the catalogue's ids or their order differ.
        """
        if catalogue_sha256(ids) != self.dataset.catalogue_sha256:
            raise ParityError(
                f"{where}: its catalogue ({len(ids):,} items) is not the reference's ({self.dataset.n_items:,} "
                "items, same ids in the same order); score columns would not be the same items: compare a "
                "bundle made for this dataset"
            )


def history_hashes(histories: Sequence[np.ndarray]) -> list[str]:
    """One sha256 per case: its history's item indices as int32 (:func:`tensor_sha256`)."""
    return [tensor_sha256(np.asarray(h, np.int32)) for h in histories]


def rank_scores(scores: np.ndarray, cases: EvalCases, name: str, k_max: int = TOP_K) -> RankedCases:
    """Rank saved scores (one row per case) through the shared evaluator (history excluded, ties pessimistic).

    Raises:
        ConfigError: the rows are not one per case, or a score is not finite (see ``rank_cases``).
    """
    if scores.ndim != 2 or scores.shape[0] != len(cases):
        raise ConfigError(f"{name}: {scores.shape} scores for {len(cases)} cases; pass one row per case")
    position = 0

    def saved(histories: Sequence[np.ndarray]) -> np.ndarray:
        nonlocal position
        # rank_cases asks for the cases in order, batch after batch: prove it, then hand out the rows.
        if any(h is not cases.histories[position + i] for i, h in enumerate(histories)):
            raise ConfigError(f"{name}: the evaluator asked for cases out of order; rank them in one pass")
        rows = scores[position : position + len(histories)]
        position += len(histories)
        return rows

    return rank_cases(saved, cases, scores.shape[1], k_max=max(k_max, TOP_K), name=name)


def save_rec_reference(
    out_dir: str | Path,
    *,
    dataset: RecDatasetSpec,
    cases: EvalCases,
    scores: np.ndarray,
    max_len: int,
    info: Mapping[str, Any],
    item_table: np.ndarray | None = None,
    item_bias: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``reference.npz`` then ``reference.json`` under ``out_dir``.

    Args:
        out_dir: the reference directory (created if missing).
        dataset: how to open the cases again (:class:`RecDatasetSpec`).
        cases: the evaluation cases, in order.
        scores: (cases, n_items) every item's score per case, before any exclusion.
        max_len: the reference model's window (the window hashes are of that length).
        info: where it ran: must hold ``runtime`` and ``device``; tool versions and host are added.
        item_table, item_bias: the reference bundle's table (dequantized) and bias, when it is one.
        overwrite: replace a reference already in ``out_dir``.

    Raises:
        InputError: the scores are not one finite float row of ``n_items`` per case.
        ConfigError: ``info`` lacks runtime/device or is not JSON, or a reference is there already.
        BundleError: the files cannot be written.
    """
    x = np.asarray(scores)
    if x.shape != (len(cases), dataset.n_items) or x.dtype.kind != "f" or not np.all(np.isfinite(x)):
        raise InputError(
            f"save_rec_reference: scores {x.dtype} {x.shape}, expected finite floats "
            f"({len(cases)}, {dataset.n_items}): one row of every item's score per case"
        )
    ranked = rank_scores(x.astype(np.float32), cases, "reference")
    arrays = {
        "scores": x.astype(np.float32),
        "top_k": ranked.top_items[:, :TOP_K].astype(np.int32),
        "targets": np.asarray(cases.targets, np.int32),
        "groups": np.asarray(cases.groups, np.int32),
    }
    if item_table is not None:
        arrays["item_table"] = np.asarray(item_table, np.float32)
        if item_bias is not None:
            arrays["item_bias"] = np.asarray(item_bias, np.float32)
    windows = case_windows(cases.histories, max_len, dataset.kind)
    document = {
        "schema_version": REC_REFERENCE_SCHEMA_VERSION,
        "task": TASK,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "num_cases": len(cases),
        "k": TOP_K,
        "dataset": dataset.to_dict(),
        "cases": {
            "max_len": int(max_len),
            "history_sha256": history_hashes(cases.histories),
            "window_sha256": [tensor_sha256(w) for w in windows],
        },
        "arrays": [{"key": key, "shape": list(a.shape), "dtype": str(a.dtype)} for key, a in arrays.items()],
        "info": full_info(info),
    }
    out = Path(out_dir)
    write_files(out, arrays, document, overwrite=overwrite)
    return out


def is_rec_reference(directory: str | Path) -> bool:
    """Whether ``directory`` holds a recommendation reference (its JSON says ``task: recommendation``)."""
    try:
        data = json.loads((Path(directory) / REFERENCE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("task") == TASK


def load_rec_reference(directory: str | Path) -> RecReference:
    """Read a recommendation reference, checking its schema strictly and the npz against its hash.

    Raises:
        BundleError: the directory or a file is missing, the npz does not match its sha256 in the
            JSON, or its arrays disagree with the JSON.
        ManifestError: the JSON is unreadable, has an unknown or missing key, a bad value or an
            unsupported schema version.
    """
    path = Path(directory)
    json_path, npz_path = path / REFERENCE_JSON, path / REFERENCE_NPZ
    if not path.is_dir():
        raise BundleError(f"{path}: no such reference directory; save one with 'shelfedge reference --dataset ...'")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"{path}: no {REFERENCE_JSON}; the reference is incomplete, save it again") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{json_path}: cannot read the reference JSON ({e}); save the reference again") from e
    doc = parse_document(data, str(json_path))
    if not npz_path.is_file():
        raise BundleError(f"{path}: {REFERENCE_NPZ} is missing; copy it together with {REFERENCE_JSON}")
    actual = sha256_file(npz_path)
    if actual != doc["npz_sha256"]:
        raise BundleError(
            f"{npz_path}: sha256 {actual[:12]}…, {REFERENCE_JSON} says {doc['npz_sha256'][:12]}…; the file was "
            "changed or corrupted after it was saved: restore both files together or save the reference again"
        )
    arrays = read_npz(npz_path)
    expected = {a["key"]: (tuple(a["shape"]), a["dtype"]) for a in doc["arrays"]}
    if set(arrays) != set(expected):
        raise BundleError(f"{npz_path}: holds {sorted(arrays)}, {REFERENCE_JSON} describes {sorted(expected)}")
    for key, (shape, dtype) in expected.items():
        if arrays[key].shape != shape or str(arrays[key].dtype) != dtype:
            raise BundleError(
                f"{npz_path}: {key!r} is {arrays[key].dtype} {arrays[key].shape}, {REFERENCE_JSON} says {dtype} {shape}"
            )
        arrays[key].flags.writeable = False
    return RecReference(
        path=path,
        created_utc=doc["created_utc"],
        dataset=doc["dataset"],
        k=doc["k"],
        max_len=doc["max_len"],
        history_sha256=doc["history_sha256"],
        window_sha256=doc["window_sha256"],
        scores=arrays["scores"],
        top_k=arrays["top_k"],
        targets=arrays["targets"],
        groups=arrays["groups"],
        item_table=arrays.get("item_table"),
        item_bias=arrays.get("item_bias"),
        info=types.MappingProxyType(doc["info"]),
        npz_sha256=actual,
    )
