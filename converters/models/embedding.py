"""Give an image classifier a second output: its embedding (the pooled features before the head).

``with_embedding_output(model)`` returns a Keras model with the same input and two outputs,
``[logits, embedding]``, sharing every weight with ``model``. Exported with
``converters.export.pipeline.export`` it yields bundles whose manifest lists both outputs (the
logits first, so ``sdk.ImageClassifier`` reads them as before), and ``sdk.ImageEmbedder`` reads
the one named ``embedding``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdk.errors import ConfigError
from sdk.unknown_spec import EMBEDDING_OUTPUT

if TYPE_CHECKING:
    import keras

# Layers whose output is the pooled feature vector of a CNN, searched from the head backwards.
_POOLING_LAYERS = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")


def find_pooled_layer(model: keras.Model) -> Any:
    """The last global pooling layer of ``model`` (its output is the embedding).

    Raises:
        ConfigError: the model has no global pooling layer, or it feeds more than the head.
    """
    pooled = [layer for layer in model.layers if type(layer).__name__ in _POOLING_LAYERS]
    if not pooled:
        names = ", ".join(layer.name for layer in model.layers[-4:])
        raise ConfigError(
            f"with_embedding_output: model {model.name!r} has no GlobalAveragePooling2D/GlobalMaxPooling2D "
            f"layer (its last layers are {names}); pool the features before the classifier head"
        )
    return pooled[-1]


def with_embedding_output(model: keras.Model) -> keras.Model:
    """``model`` with a second output, ``embedding``: the pooled layer's output (weights shared).

    The outputs are ``[logits, embedding]`` in that order; the embedding is the raw pooled
    vector (the SDK normalises it), passed through an ``Identity`` layer named ``embedding`` so
    every format's output names it. A model that already has both outputs is returned as is.

    Raises:
        ConfigError: ``model`` is not a single-input Keras model with one output and a global
            pooling layer (see :func:`find_pooled_layer`).
    """
    import keras

    if not isinstance(model, keras.Model):
        raise ConfigError(f"with_embedding_output needs a keras.Model, got {type(model).__name__}")
    outputs = list(model.outputs)
    if len(outputs) == 2 and EMBEDDING_OUTPUT in {_tensor_layer(t) for t in outputs}:
        return model
    if len(model.inputs) != 1 or len(outputs) != 1:
        raise ConfigError(
            f"with_embedding_output: model {model.name!r} has {len(model.inputs)} inputs and {len(outputs)} "
            "outputs; pass a classifier with one image input and one logits output"
        )
    pooled = find_pooled_layer(model)
    embedding = keras.layers.Identity(name=EMBEDDING_OUTPUT)(pooled.output)
    return keras.Model(model.inputs[0], [outputs[0], embedding], name=f"{model.name}_with_embedding")


def _tensor_layer(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    return str(history[0].name) if history else ""
