"""Shared by the quantizer tests: smooth calibration images and one tiny fp32 bundle per format."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdk.bundle import Bundle
from sdk.enums import ModelFormat
from sdk.manifest import Preprocessing


def _smooth_images(n: int, seed: int) -> np.ndarray:
    """Low-frequency images in [-1, 1]: activations like a photo's, not like white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (n, 4, 4, 3))
    images = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2) + rng.normal(0, 0.05, (n, 32, 32, 3))
    return np.clip(images, -1, 1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class QuantSetup:
    fp32_bundle: Bundle
    calibration: Any
    val: np.ndarray
    fp32_val: np.ndarray

    def source_model(self) -> Any:
        """The Keras source the fp32 bundle was exported from, as a lineage root for ``package``."""
        from converters.export.source import SourceModel

        provenance = self.fp32_bundle.manifest.provenance
        return SourceModel(
            kind=ModelFormat.KERAS,
            path=self.fp32_bundle.path,
            sha256=provenance.source_sha256,
            description=provenance.source,
            inputs=self.fp32_bundle.manifest.inputs,
            outputs=self.fp32_bundle.manifest.outputs,
            saved_model_dir=None,
        )


@pytest.fixture(scope="session")
def smooth_images() -> Callable[[int, int], np.ndarray]:
    """``smooth_images(n, seed)``: n low-frequency 32x32 images in [-1, 1]."""
    return _smooth_images


@pytest.fixture(scope="session")
def quant_setup_for(
    tiny_cnn: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., QuantSetup]:
    """``quant_setup_for(fmt, predictor, labels, preprocessing)``: the suite's tiny CNN (16 wide, a
    32-channel pointwise layer) exported to ``fmt``, a calibration set of 32 smooth images, and 64
    validation images with the fp32 model's outputs on them (``predictor(model_path)(images)``)."""

    def build(
        fmt: ModelFormat,
        predictor: Callable[[Path], Callable[[np.ndarray], np.ndarray]],
        labels: Sequence[str],
        preprocessing: Preprocessing,
    ) -> QuantSetup:
        from converters.export.pipeline import export
        from converters.quantize.calibration import from_arrays

        bundle = export(
            tiny_cnn(width=16, pointwise=32, seed=3),
            out_dir=tmp_path_factory.mktemp(f"{fmt.value}-export"),
            formats=(fmt.value,),
            name="tiny",
            labels=labels,
            preprocessing=preprocessing,
        )[fmt]
        val = _smooth_images(64, seed=11)
        return QuantSetup(
            fp32_bundle=bundle,
            calibration=from_arrays(_smooth_images(32, seed=5), source="smooth-random"),
            val=val,
            fp32_val=predictor(bundle.model_path)(val),
        )

    return build
