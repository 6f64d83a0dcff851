"""Shared adapter helpers: layout inference and manifest-vs-model spec checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes._common import accelerator_unavailable, check_specs, infer_layout, make_spec, with_dynamic_batch
from sdk.enums import FallbackPolicy, Layout
from sdk.errors import BackendUnavailableError, ManifestError
from sdk.runtime import SessionOptions
from sdk.tensors import Quantization, TensorSpec

MODEL = Path("model.bin")
IMAGE = TensorSpec(
    name="image",
    shape=(-1, 224, 224, 3),
    dtype="uint8",
    layout=Layout.NHWC,
    quantization=Quantization(scale=0.5, zero_point=0),
)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((-1, 224, 224, 3), Layout.NHWC),
        ((1, 3, 224, 224), Layout.NCHW),
        ((1, 28, 28, 1), Layout.NHWC),
        ((1, 3, 8, 4), Layout.NHWC),
        ((1, 16, 8, 8), Layout.ANY),
        ((-1, 1000), Layout.NC),
        ((5,), Layout.ANY),
    ],
)
def test_infer_layout_succeeds_with_channel_position(shape: tuple[int, ...], layout: Layout) -> None:
    assert infer_layout(shape) is layout


def test_make_spec_succeeds_with_dynamic_dims_as_minus_one() -> None:
    spec = make_spec("x", [None, "batch_size", 32, -1, 3], "float32")
    assert spec.shape == (-1, -1, 32, -1, 3) and spec.dtype == "float32"


def test_check_specs_succeeds_with_matching_specs_and_alias() -> None:
    given = TensorSpec(name="image:0", shape=(-1, 224, 224, 3), dtype="uint8")
    assert check_specs(MODEL, "input", [given], [IMAGE], {"image:0": "image"}) == [IMAGE]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": "int8"}, r"dtype int8, the model's is uint8"),
        ({"shape": (-1, 224, 224)}, r"shape \(-1, 224, 224\)"),
        ({"shape": (-1, 256, 224, 3)}, r"shape \(-1, 256, 224, 3\)"),
        ({"quantization": Quantization(scale=0.25, zero_point=0)}, r"quantization"),
        ({"name": "pixels"}, r"'pixels' is not in the model"),
    ],
)
def test_check_specs_fails_with_mismatch(change: dict, message: str) -> None:
    given = TensorSpec(**{**IMAGE.__dict__, **change})
    with pytest.raises(ManifestError, match=message):
        check_specs(MODEL, "input", [given], [IMAGE])


def test_check_specs_fails_with_missing_model_input() -> None:
    other = TensorSpec(name="basket", shape=(-1, 20), dtype="int64")
    with pytest.raises(ManifestError, match=r"needs inputs \['basket'\]"):
        check_specs(MODEL, "input", [IMAGE], [IMAGE, other])


def test_check_specs_succeeds_with_subset_of_outputs() -> None:
    logits = TensorSpec(name="logits", shape=(-1, 5), dtype="float32")
    embedding = TensorSpec(name="embedding", shape=(-1, 64), dtype="float32")
    assert check_specs(MODEL, "output", [embedding], [logits, embedding]) == [embedding]


def test_with_dynamic_batch_succeeds_with_static_batch() -> None:
    static = TensorSpec(name="x", shape=(1, 8), dtype="float32")
    assert with_dynamic_batch([static])[0].shape == (-1, 8)


def test_accelerator_unavailable_fails_under_strict_and_records_under_record() -> None:
    with pytest.raises(BackendUnavailableError, match="no NPU; buy one, or use a hardware profile"):
        accelerator_unavailable(SessionOptions(fallback=FallbackPolicy.STRICT), "x", "no NPU", "buy one")
    record = SessionOptions(fallback=FallbackPolicy.RECORD)
    assert accelerator_unavailable(record, "x", "no NPU", "buy one") == "no NPU"
