"""Image datasets in the Grocery Store layout, and a synthetic one for machines without data.

Layout (Klasson et al., WACV 2019): ``<root>/<split>.txt`` with lines
``relative/path.jpg, fine_id, coarse_id`` and ``<root>/classes.csv``. The synthetic
generator writes the same layout, so every command reads both the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from sdk.errors import ConfigError

DATA_ENV = "SHELFEDGE_DATA"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageDataset:
    """Labelled image files of one split."""

    root: Path
    split: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        return iter(zip(self.paths, self.labels, strict=True))

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
        )

    def balanced(self, per_class: int, seed: int = 0) -> ImageDataset:
        """Up to ``per_class`` items of every class, drawn reproducibly, in a stable order."""
        rng = np.random.default_rng(seed)
        labels = np.asarray(self.labels)
        chosen: list[int] = []
        for cls in np.unique(labels):
            members = np.flatnonzero(labels == cls)
            take = min(per_class, len(members))
            chosen.extend(sorted(rng.choice(members, size=take, replace=False).tolist()))
        return self.subset(sorted(chosen))

    def head(self, n: int) -> ImageDataset:
        return self.subset(range(min(n, len(self))))


def default_data_root() -> Path:
    """``$SHELFEDGE_DATA`` if set, else ``../shared/data/grocery`` next to the working directory."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path("..") / "shared" / "data" / "grocery"


def load_split(root: str | Path, split: str = "val", level: str = "fine") -> ImageDataset:
    """Read one split of a Grocery-Store-layout dataset.

    Args:
        root: the dataset directory (holding ``<split>.txt`` and ``classes.csv``).
        split: ``train`` or ``val``.
        level: ``fine`` (81 classes in Grocery Store) or ``coarse`` (43).

    Raises:
        ConfigError: the directory, split file or classes file is missing or malformed.
    """
    root = Path(root)
    split_file = root / f"{split}.txt"
    if not split_file.is_file():
        raise ConfigError(
            f"{root}: no {split}.txt; point --data at a Grocery Store style dataset "
            "(<split>.txt with 'path, fine_id, coarse_id' lines, and classes.csv), "
            "or run 'shelfedge quickstart', which generates a synthetic one"
        )
    if level not in ("fine", "coarse"):
        raise ConfigError(f"level must be 'fine' or 'coarse', got {level!r}")
    class_names = _class_names(root / "classes.csv", level)
    paths, labels = [], []
    for number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise ConfigError(f"{split_file}:{number}: expected 'path, fine_id, coarse_id', got {line!r}")
        try:
            label = int(parts[1] if level == "fine" else parts[2])
        except ValueError as e:
            raise ConfigError(f"{split_file}:{number}: class ids must be integers: {line!r}") from e
        if not 0 <= label < len(class_names):
            raise ConfigError(f"{split_file}:{number}: class id {label} is not in classes.csv")
        paths.append(root / parts[0])
        labels.append(label)
    return ImageDataset(root=root, split=split, paths=tuple(paths), labels=tuple(labels), class_names=class_names)


def _class_names(path: Path, level: str) -> tuple[str, ...]:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; a dataset directory needs classes.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    names: dict[int, str] = {}
    for row in rows[1:]:
        if len(row) < 4:
            continue
        name, ident = (row[0], row[1]) if level == "fine" else (row[2], row[3])
        names[int(ident)] = name.strip()
    if sorted(names) != list(range(len(names))):
        raise ConfigError(f"{path}: {level} class ids must run 0..N-1 without gaps")
    return tuple(names[i] for i in range(len(names)))
