"""The kiosk's product side: class -> basket category mapping, and names, images, descriptions.

The mapping (``demo_app/mapping.csv``) joins the Grocery Store classes to the Groceries basket
categories the recommender was trained on. The catalogue reads the Grocery Store dataset's
``classes.csv`` and its ``iconic-images-and-descriptions`` folder when the dataset is present;
without it every product is its class name made readable, with no image or description.

Thread safety: both objects are immutable once built; share them across request threads.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from sdk.errors import ConfigError

MAPPING_PATH = Path(__file__).with_name("mapping.csv")
# Descriptions are shown on a kiosk card: the dataset's are a few sentences; cap a stray large file.
_MAX_DESCRIPTION_CHARS = 2000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Product:
    """One recognisable product: its class label, readable name, basket category and catalogue data."""

    label: str
    name: str
    category: str | None
    image: Path | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "name": self.name,
            "category": self.category,
            "has_image": self.image is not None,
            "description": self.description,
        }


def read_mapping(path: str | Path = MAPPING_PATH) -> dict[str, str | None]:
    """Class label -> basket category (None: the class has no sensible category) from a CSV.

    The file has a ``class,category`` header after optional ``#`` comment lines.

    Raises:
        ConfigError: the file is missing, has no ``class,category`` header, or lists a class twice.
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    except OSError as e:
        raise ConfigError(f"cannot read the class -> category mapping {path}: {e}; pass an existing CSV file") from e
    rows = list(csv.DictReader(lines))
    if not lines or [h.strip() for h in next(csv.reader(lines[:1]))] != ["class", "category"]:
        raise ConfigError(f"mapping {path} must start with the header 'class,category' (after # comments)")
    mapping: dict[str, str | None] = {}
    for row in rows:
        label = (row["class"] or "").strip()
        if label in mapping:
            raise ConfigError(f"mapping {path} lists class {label!r} twice; keep one row per class")
        mapping[label] = (row["category"] or "").strip() or None
    return mapping


class ProductCatalogue:
    """The products the classifier can name, with their category and (when present) catalogue data."""

    def __init__(self, products: Iterable[Product]) -> None:
        self._products: Mapping[str, Product] = MappingProxyType({p.label: p for p in products})

    @classmethod
    def build(
        cls, labels: Iterable[str], mapping: Mapping[str, str | None], root: str | Path | None = None
    ) -> ProductCatalogue:
        """One product per classifier label; names, images and descriptions from ``root`` when it has them.

        ``root`` is the Grocery Store dataset folder (holding ``classes.csv``); None or a folder
        without it gives names only.

        Raises:
            ConfigError: ``classes.csv`` exists but lacks the dataset's columns.
        """
        extra = _read_dataset(Path(root)) if root is not None else {}
        products = []
        for label in labels:
            image, description = extra.get(label, (None, None))
            products.append(
                Product(
                    label=label,
                    name=label.replace("-", " ").replace("_", " "),
                    category=mapping.get(label),
                    image=image,
                    description=description,
                )
            )
        return cls(products)

    def __contains__(self, label: object) -> bool:
        return label in self._products

    def __len__(self) -> int:
        return len(self._products)

    def get(self, label: str) -> Product | None:
        return self._products.get(label)

    def products(self) -> tuple[Product, ...]:
        return tuple(self._products.values())

    def in_category(self, category: str) -> tuple[Product, ...]:
        """The products whose basket category is ``category`` (the catalogue's matches for a recommendation)."""
        return tuple(p for p in self._products.values() if p.category == category)


def _read_dataset(root: Path) -> dict[str, tuple[Path | None, str | None]]:
    """Label -> (iconic image, description) from the dataset's ``classes.csv``; {} when it is absent.

    Raises:
        ConfigError: ``classes.csv`` lacks the class name, image or description columns.
    """
    classes = root / "classes.csv"
    if not classes.is_file():
        return {}
    with classes.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    try:
        name_col = header.index("Class Name (str)")
        image_col = header.index("Iconic Image Path (str)")
        text_col = header.index("Product Description Path (str)")
    except ValueError as e:
        raise ConfigError(
            f"{classes} lacks a Grocery Store column ({e}); point catalogue_root at the dataset folder or at None"
        ) from e
    found: dict[str, tuple[Path | None, str | None]] = {}
    for row in rows[1:]:
        if len(row) <= max(name_col, image_col, text_col):
            continue
        image = _inside(root, row[image_col])
        text = _inside(root, row[text_col])
        description = None
        if text is not None:
            description = text.read_text(encoding="utf-8", errors="replace").strip()[:_MAX_DESCRIPTION_CHARS] or None
        found[row[name_col]] = (image, description)
    return found


def _inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is an existing file inside ``root`` (the CSV's paths start with '/')."""
    path = (root / relative.lstrip("/")).resolve()
    if not path.is_file() or not path.is_relative_to(root.resolve()):
        return None
    return path
