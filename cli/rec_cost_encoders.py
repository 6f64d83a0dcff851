"""Which encoder ``shelfedge rec-cost`` pairs with its synthetic tables, and its Keras twin for the fused graphs.

The MovieLens student's bundles when ``shelfedge rec-distill --dataset movielens`` made them,
``--bundles``, or a small seeded encoder of the same shape built (once per seed) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from cli import log
from sdk.bundle import Bundle
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.qa.rec_cost import synthetic_catalogue, synthetic_items
from sdk.recommender_items import quantize_table, read_item_files

__all__ = ["FORMATS", "REAL_BUNDLES", "find_encoders"]

REAL_BUNDLES = "out/rec-distill/movielens/bundles/movielens-*-fp32"
FORMATS = (ModelFormat.TFLITE, ModelFormat.OPENVINO, ModelFormat.ONNX)
# The seeded encoder has the MovieLens student's shape (recency pooling, dim 64, window 50, 9,742 items).
SEEDED_ITEMS, SEEDED_DIM, SEEDED_LEN = 9742, 64, 50


def find_encoders(args: argparse.Namespace, out: Path) -> tuple[dict[ModelFormat, Bundle], Any, Any, str]:
    """Encoder bundles by format, a Keras encoder to fuse (or None), the synthetic tables' template, a description.

    Raises:
        ConfigError: a ``--bundles`` path is not a recommendation bundle, none is LiteRT, OpenVINO
            or ONNX, or ``--encoder`` cannot be loaded.
    """
    paths = [Path(p) for p in args.bundles] if args.bundles else sorted(Path().glob(REAL_BUNDLES))
    found: dict[ModelFormat, Bundle] = {}
    for path in paths:
        bundle = Bundle.open(path)
        if bundle.manifest.recommendation is None:
            raise ConfigError(f"rec-cost: {path} is not a recommendation bundle; pass encoder bundles with item files")
        if bundle.manifest.format in FORMATS:
            found.setdefault(bundle.manifest.format, bundle)
    if args.bundles and not found:
        raise ConfigError(f"rec-cost: none of {args.bundles} is a LiteRT, OpenVINO or ONNX bundle")
    keras_encoder = _keras(args.encoder) if args.encoder else None
    if found:
        first = next(iter(found.values()))
        spec = first.manifest.recommendation
        assert spec is not None
        items = read_item_files(first.path, spec)
        names = ", ".join(str(b.path) for b in found.values())
        log(f"[rec-cost] encoder: {names} (synthetic tables resample its {spec.n_items:,}-item table)")
        if keras_encoder is None:
            keras_encoder = _student_encoder(first.path, items.table)
        return found, keras_encoder, (items.dequantized(), items.bias), f"{first.manifest.name}: {names}"
    log("[rec-cost] no real encoder bundle found: building a seeded one (MovieLens student's shape)")
    seeded, keras_model = _seeded(out / "encoder", args.seed)
    return seeded, keras_encoder or keras_model, None, f"seeded recency encoder, dim {SEEDED_DIM}, window {SEEDED_LEN}"


def _student_encoder(bundle: Path, stored: np.ndarray) -> Any:
    """The Keras encoder rec-distill saved beside the bundles: the student whose int8 table is the bundle's."""
    for student in sorted(bundle.parent.parent.glob("student-*/student")):
        try:
            table = np.load(student / "items.npy")
        except (OSError, ValueError):
            continue
        if table.shape == stored.shape and np.array_equal(quantize_table(table, Precision.INT8)[0], stored):
            log(f"[rec-cost] its Keras encoder: {student / 'encoder.keras'} (the student with this item table)")
            return _keras(str(student / "encoder.keras"))
    return None


def _keras(path: str) -> Any:
    import keras

    import converters.models.rec_student  # noqa: F401 -- registers the student's layers for loading

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"rec-cost: --encoder {path}: Keras cannot load it ({e}); pass the student's encoder.keras"
        ) from e


def _seeded(directory: Path, seed: int) -> tuple[dict[ModelFormat, Bundle], Any]:
    """The seeded encoder's bundles (reused when this seed built them before) and its Keras model."""
    from converters.export.rec_bundle import package_recommender
    from converters.models.rec_student import StudentConfig, build_student

    stamp, model_file = directory / "seeded.json", directory / "encoder.keras"
    student = StudentConfig(
        n_items=SEEDED_ITEMS, kind="sequences", shape="recency", dim=SEEDED_DIM, max_len=SEEDED_LEN, seed=seed
    )
    config = {**dataclasses.asdict(student), "schema": 1}
    name = f"seeded-recency{SEEDED_DIM}"
    targets = {f: directory / f"{name}-{f.value}-fp32" for f in FORMATS}
    built = stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == config and model_file.is_file()
    if built and all((t / "manifest.json").is_file() for t in targets.values()):
        return {f: Bundle.open(t) for f, t in targets.items()}, _keras(str(model_file))
    encoder, _ = build_student(student)
    table, bias = synthetic_items(SEEDED_ITEMS, SEEDED_DIM, seed=seed)
    bundles = package_recommender(
        encoder, table, bias, synthetic_catalogue(SEEDED_ITEMS), np.ones(SEEDED_ITEMS),
        out_dir=directory, name=name, kind="sequences", formats=[f.value for f in FORMATS], max_len=SEEDED_LEN,
        progress=lambda line: log(f"[rec-cost] {line}"),
    )  # fmt: skip
    encoder.save(model_file)
    stamp.write_text(json.dumps(config) + "\n", encoding="utf-8")
    return dict(bundles), encoder
