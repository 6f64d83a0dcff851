"""Quantization-aware fine-tuning (the budget's last resort) on a tiny Keras CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from converters.training.qat import QATConfig, fake_quantize, fine_tune, quantized_kernels  # noqa: E402
from sdk.errors import ConfigError, ConversionError  # noqa: E402

pytestmark = pytest.mark.tensorflow


def _saved_tiny_cnn(tiny_cnn, path: Path) -> Path:
    """The suite's tiny CNN (conv, BN, ReLU, depthwise, pool, 3 logits) at 16 px, saved as ``.keras``."""
    tiny_cnn(classes=3, size=16, seed=4).save(str(path))
    return path


def test_fake_quantize_succeeds_with_levels_per_channel_and_straight_through_gradient() -> None:
    import tensorflow as tf

    kernel = tf.Variable(np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        quantized = fake_quantize(kernel, -1, bits=8)
        loss = tf.reduce_sum(quantized * 2.0)
    q = quantized.numpy()
    for c in range(5):
        scale = np.abs(kernel.numpy()[..., c]).max() / 127.0
        steps = q[..., c] / scale
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the int8 grid of its own channel
        assert np.abs(steps).max() == pytest.approx(127.0, abs=1e-3)
    np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), np.full((3, 3, 4, 5), 2.0, np.float32))
    seven = fake_quantize(kernel, -1, bits=7).numpy()[..., 0] / (np.abs(kernel.numpy()[..., 0]).max() / 63.0)
    np.testing.assert_allclose(seven, np.round(seven), atol=1e-3)  # 7 bits: 63 levels a side
    assert np.abs(seven).max() == pytest.approx(63.0, abs=1e-3)


def test_fine_tune_succeeds_and_saves_a_loadable_model(tiny_cnn, tmp_path: Path) -> None:
    source = _saved_tiny_cnn(tiny_cnn, tmp_path / "fp32.keras")
    rng = np.random.default_rng(1)
    tensors = rng.normal(size=(48, 16, 16, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 48)
    lines: list[str] = []

    result = fine_tune(
        source,
        tensors,
        labels,
        tmp_path / "qat" / "model.keras",
        QATConfig(epochs=2, batch_size=16, weight_bits=4),
        log=lines.append,
    )

    model = keras.saving.load_model(str(result.model_path), compile=False)
    assert set(quantized_kernels(model)) == {"conv/kernel", "dw/kernel", "logits/kernel"}
    assert result.kernels == 3 and len(result.history) == 2
    assert 0.0 <= result.fake_quant_agreement_after <= 1.0
    # BatchNorm stayed frozen: its statistics are those the int8 converter will fold.
    original = keras.saving.load_model(str(source), compile=False)
    for a, b in zip(original.get_layer("bn").get_weights(), model.get_layer("bn").get_weights(), strict=False):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(original.get_layer("conv").get_weights()[0], model.get_layer("conv").get_weights()[0])
    assert any(
        "3 kernels fake-quantized to 4 bits, 3 activations to 8 bits" in line for line in lines
    )  # relu, pool, logits
    assert not any(layer.name.endswith("_fake_quant") for layer in model.layers)  # the simulation is not saved


def test_fine_tune_fails_with_mismatched_data_or_config(tiny_cnn, tmp_path: Path) -> None:
    source = _saved_tiny_cnn(tiny_cnn, tmp_path / "fp32.keras")
    with pytest.raises(ConfigError, match="one label each"):
        fine_tune(source, np.zeros((4, 16, 16, 3), np.float32), np.zeros(3), tmp_path / "o.keras", QATConfig())
    with pytest.raises(ConfigError, match="weight_bits"):
        QATConfig(weight_bits=9)
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ConversionError, match="cannot load the Keras model"):
        fine_tune(
            tmp_path / "broken.keras",
            np.zeros((4, 16, 16, 3), np.float32),
            np.zeros(4),
            tmp_path / "o.keras",
            QATConfig(),
        )
