"""Measure enrolment without retraining and the unknown-product rule on the Grocery Store data.

Leaves ``--leave-out`` classes out of training of the quickstart small CNN, exports it with its
embedding output (ONNX), calibrates the unknown rule on the trained classes, then enrols each
left-out class from at most ``--shots`` train photos (``demo_app.enrolment``, as the kiosk app
does) and reports on val:

- recall of the enrolled classes next to the trained classes' (with the app's matching rule,
  at the threshold the app uses and at a few others);
- the unknown rule on the trained classes: accuracy on accepted photos and the rejection rate;
  the left-out classes before enrolment: the share called unknown;
- non-product images (generated noise and patterns): the share called unknown, and the share
  taken for an enrolled product.

Run (minutes on a laptop CPU)::

    python tests/bench/enrolment_eval.py --epochs 4 --size 64 --out out/bench/enrolment

``--train-per-class`` / ``--val-per-class`` make a quick smaller run. Writes ``result.json``
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from demo_app.enrolment import DEFAULT_ENROL_DISTANCE, Enrolment, prefers_enrolled
from sdk import ImageClassifier
from sdk.bundle import Bundle
from sdk.data import ImageDataset, default_data_root, load_split
from sdk.enums import ColorOrder

THRESHOLDS = (0.05, 0.1, DEFAULT_ENROL_DISTANCE, 0.2, 0.3)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="Grocery Store layout (default: ../shared/data/grocery)")
    p.add_argument("--out", type=Path, default=Path("out/bench/enrolment"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="model input side in pixels")
    p.add_argument("--leave-out", type=int, default=5, help="classes left out of training and enrolled")
    p.add_argument("--shots", type=int, default=5, help="train photos per enrolled class (1-5)")
    p.add_argument("--train-per-class", type=int, default=0, help="cap train photos per class (0: all)")
    p.add_argument("--val-per-class", type=int, default=0, help="cap val photos per class (0: all)")
    p.add_argument("--noise", type=int, default=40, help="generated non-product images")
    p.add_argument("--rule", choices=("auto", "confidence", "distance"), default="auto", help="unknown rule")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def split_classes(train: ImageDataset, val: ImageDataset, leave_out: int, seed: int) -> tuple[list[int], list[int]]:
    """(trained, left-out) class indices: ``leave_out`` classes drawn reproducibly among those with val photos."""
    rng = np.random.default_rng(seed)
    candidates = sorted(set(val.labels) & set(train.labels))
    out = sorted(int(c) for c in rng.choice(candidates, size=leave_out, replace=False))
    return [c for c in range(len(train.class_names)) if c not in out], out


def restrict(data: ImageDataset, classes: list[int]) -> ImageDataset:
    """``data`` limited to ``classes``, relabelled 0..len(classes)-1 with those class names."""
    index = {c: i for i, c in enumerate(classes)}
    keep = [i for i, label in enumerate(data.labels) if label in index]
    return dataclasses.replace(
        data,
        paths=tuple(data.paths[i] for i in keep),
        labels=tuple(index[data.labels[i]] for i in keep),
        class_names=tuple(data.class_names[c] for c in classes),
    )


def non_products(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Generated non-product RGB images: uniform and Gaussian noise, stripes, checkerboards, gradients, flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            img = rng.uniform(0, 255, (size, size, 3))
        elif kind == 1:
            img = np.clip(rng.normal(128, 60, (size, size, 3)), 0, 255)
        elif kind == 2:
            f, angle = rng.uniform(3, 20), rng.uniform(0, np.pi)
            wave = np.sin(2 * np.pi * f * (x * np.cos(angle) + y * np.sin(angle)))
            img = (wave[..., None] * 0.5 + 0.5) * rng.uniform(60, 255, 3)
        elif kind == 3:
            cells = int(rng.integers(2, 16))
            board = ((np.floor(x * cells) + np.floor(y * cells)) % 2)[..., None]
            img = board * rng.uniform(0, 255, 3) + (1 - board) * rng.uniform(0, 255, 3)
        elif kind == 4:
            img = (x[..., None] * rng.uniform(0, 255, 3) + y[..., None] * rng.uniform(0, 255, 3)) / 2
        else:
            img = np.ones((size, size, 3)) * rng.uniform(0, 255, 3)
        images.append(np.asarray(img, np.uint8))
    return images


def train_and_export(train: ImageDataset, args: argparse.Namespace, out: Path) -> Path:
    """Train the quickstart small CNN on ``train``, export an ONNX bundle with its embedding output."""
    from converters.export.pipeline import export
    from converters.models.embedding import with_embedding_output
    from converters.models.small_cnn import SmallCnnConfig, preprocessing_for, train_small_cnn

    config = SmallCnnConfig(input_size=args.size, epochs=args.epochs, seed=args.seed)
    model = with_embedding_output(train_small_cnn(train, config, log=lambda m: print(f"[train] {m}", flush=True)))
    bundles = export(
        model, out_dir=out / "bundles", name="enrol_cnn", labels=train.class_names,
        preprocessing=preprocessing_for(config), formats=["onnx"],
    )  # fmt: skip
    return next(iter(bundles.values())).path


def observe(classifier: ImageClassifier, enrolment: Enrolment, image: Any) -> dict[str, Any]:
    """One photo's top-1, unknown flag, nearest enrolled product and nearest centroid distance."""
    # Arrays here are generated RGB; files are decoded by the sdk (the color order only applies to arrays).
    result = classifier.classify(image, array_color=ColorOrder.RGB)
    vector = enrolment.embedder.embed(image, array_color=ColorOrder.RGB).vector
    match, centroid = enrolment.match_vector(vector)
    return {"top1": result.top1.label, "unknown": result.unknown, "match": match, "centroid": centroid}


def answer(obs: dict[str, Any], threshold: float) -> str:
    """The app's answer: an enrolled product's name, ``?`` (unknown) or the top trained class."""
    if prefers_enrolled(obs["match"], threshold, obs["centroid"]):
        return str(obs["match"].product.name)
    return "?" if obs["unknown"] else str(obs["top1"])


def summarise(rows: list[tuple[str, dict[str, Any]]], trained: set[str], threshold: float) -> dict[str, Any]:
    """Recall of trained / enrolled classes at ``threshold`` (micro and per-class mean)."""
    out: dict[str, Any] = {"threshold": threshold}
    for group, names in (("trained", trained), ("enrolled", None)):
        hits: dict[str, list[bool]] = {}
        for truth, obs in rows:
            if (truth in trained) == (names is not None):
                hits.setdefault(truth, []).append(answer(obs, threshold) == truth)
        flat = [h for v in hits.values() for h in v]
        out[group] = {
            "photos": len(flat),
            "recall": float(np.mean(flat)) if flat else None,
            "mean_class_recall": float(np.mean([np.mean(v) for v in hits.values()])) if hits else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from converters.training.calibrate_unknown import calibrate_unknown

    started = time.perf_counter()
    root = args.data or default_data_root()
    train_all, val_all = load_split(root, "train"), load_split(root, "val")
    if args.train_per_class:
        train_all = train_all.balanced(args.train_per_class, seed=args.seed)
    if args.val_per_class:
        val_all = val_all.balanced(args.val_per_class, seed=args.seed)
    kept, left = split_classes(train_all, val_all, args.leave_out, args.seed)
    names = train_all.class_names
    print(f"[data] {root}: {len(kept)} trained classes, left out: {', '.join(names[c] for c in left)}", flush=True)
    train, val = restrict(train_all, kept), restrict(val_all, kept)
    args.out.mkdir(parents=True, exist_ok=True)
    path = train_and_export(train, args, args.out)
    say = lambda m: print(f"[calibrate] {m}", flush=True)  # noqa: E731
    bundle = calibrate_unknown(path, train=train, val=val, rule=args.rule, progress=say)
    rule = bundle.manifest.unknown
    assert rule is not None
    db = Path(tempfile.mkdtemp()) / "enrolled.sqlite"
    enrolment = Enrolment.open(Bundle.open(path), db)
    rng = np.random.default_rng(args.seed)
    for c in left:
        photos = [p for p, label in train_all if label == c]
        chosen = [photos[i] for i in sorted(rng.choice(len(photos), size=min(args.shots, len(photos)), replace=False))]
        enrolment.store.add(names[c], None, [enrolment.embedder.embed(p).vector for p in chosen])
    with ImageClassifier.from_bundle(path, top_k=1) as classifier:
        rows = [(names[label], observe(classifier, enrolment, p)) for p, label in val_all if label in kept + left]
        noise = [observe(classifier, enrolment, img) for img in non_products(args.noise, 256, args.seed)]
    result = report(rows, noise, {names[c] for c in kept}, enrolment, rule.to_dict())
    result.update(
        left_out=[names[c] for c in left], shots=args.shots, epochs=args.epochs, size=args.size,
        train_photos=len(train), seconds=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(markdown(result))
    enrolment.close()
    return 0


def report(
    rows: list[tuple[str, dict[str, Any]]],
    noise: list[dict[str, Any]],
    trained: set[str],
    enrolment: Enrolment,
    rule: dict[str, Any],
) -> dict[str, Any]:
    """Every figure of the module docstring, from the observations."""
    used = enrolment.threshold
    known_rows = [obs for truth, obs in rows if truth in trained]
    accepted = [(truth, obs) for truth, obs in rows if truth in trained and not obs["unknown"]]
    left_rows = [obs for truth, obs in rows if truth not in trained]
    return {
        "rule": {k: rule[k] for k in ("rule", "threshold", "target")},
        "enrol_threshold": used,
        "enrol_threshold_source": enrolment.threshold_source,
        "at_app_threshold": summarise(rows, trained, used),
        "sweep": [summarise(rows, trained, t) for t in THRESHOLDS],
        "val_trained": {
            "photos": len(known_rows),
            "accuracy_all": float(np.mean([obs["top1"] == truth for truth, obs in rows if truth in trained])),
            "rejection_rate": float(np.mean([obs["unknown"] for obs in known_rows])),
            "accuracy_on_accepted": float(np.mean([obs["top1"] == t for t, obs in accepted])) if accepted else None,
        },
        "left_out_before_enrolment_unknown": float(np.mean([obs["unknown"] for obs in left_rows])),
        "non_products": {
            "images": len(noise),
            "unknown": float(np.mean([obs["unknown"] for obs in noise])),
            "taken_for_enrolled": float(np.mean([prefers_enrolled(o["match"], used, o["centroid"]) for o in noise])),
            "answered_unknown_by_app": float(np.mean([answer(o, used) == "?" for o in noise])),
        },
    }


def markdown(r: dict[str, Any]) -> str:
    """The result as markdown tables."""

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    lines = [
        f"unknown rule: {r['rule']['rule']} threshold {r['rule']['threshold']:.4f} (target {r['rule']['target']}); "
        f"enrolment threshold {r['enrol_threshold']:.4f} ({r['enrol_threshold_source']})",
        "",
        "| distance threshold | trained val recall | enrolled val recall (micro) | enrolled mean class recall |",
        "|---|---|---|---|",
    ]
    for s in [r["at_app_threshold"], *r["sweep"]]:
        lines.append(
            f"| {s['threshold']:.3f} | {pct(s['trained']['recall'])} ({s['trained']['photos']}) | "
            f"{pct(s['enrolled']['recall'])} ({s['enrolled']['photos']}) | {pct(s['enrolled']['mean_class_recall'])} |"
        )
    v, n = r["val_trained"], r["non_products"]
    lines += [
        "",
        "| unknown rule | value |",
        "|---|---|",
        f"| val (trained classes) top-1, no rule | {pct(v['accuracy_all'])} of {v['photos']} |",
        f"| val rejection rate | {pct(v['rejection_rate'])} |",
        f"| val accuracy on accepted photos | {pct(v['accuracy_on_accepted'])} |",
        f"| left-out classes called unknown before enrolment | {pct(r['left_out_before_enrolment_unknown'])} |",
        f"| non-product images called unknown by the rule | {pct(n['unknown'])} of {n['images']} |",
        f"| non-product images taken for an enrolled product | {pct(n['taken_for_enrolled'])} |",
        f"| non-product images the app answers 'I don't know' | {pct(n['answered_unknown_by_app'])} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
