"""``shelfedge quickstart``: the main job, end to end, on any machine.

Train a small product-recognition CNN on the Grocery Store photos (or on a synthetic
shelf dataset generated here when ../shared/data is absent), export it to LiteRT,
OpenVINO and ONNX bundles, run the same validation images through every runtime that
can open each bundle, and compare each against the TensorFlow reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from cli import quickstart_pipeline as qp
from cli._common import QUICKSTART_OUT, emit, log
from cli.quickstart_rec import recommender_stages
from sdk import preprocess as pp
from sdk import synthetic
from sdk.bundle import Bundle
from sdk.data import ImageDataset, default_data_root, load_split
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat, Runtime
from sdk.errors import BackendUnavailableError, ConfigError
from sdk.loading import load
from sdk.manifest import Preprocessing
from sdk.profiles import HardwareProfile, load_profile
from sdk.qa.tables import markdown_table
from sdk.versions import host_info, tool_versions

DEFAULT_TEACHER = Path("out/teacher/bundles/teacher-keras-fp32")
STUDENT = "efficientnet_lite0@160"
COLUMNS = [
    "bundle",
    "runtime",
    "device",
    "precision",
    "size MB",
    "max abs diff vs ref",
    "top-1 agreement",
    "val top-1",
    "infer ms p50",
    "load ms",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        help="Grocery Store style dataset (default: $SHELFEDGE_DATA or "
        "../shared/data/grocery; generated synthetic shelf photos when absent)",
    )
    parser.add_argument("--out", default=str(QUICKSTART_OUT), help=f"output directory (default {QUICKSTART_OUT})")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--input-size", type=int, default=96, help="model input side in pixels (default 96)")
    parser.add_argument("--limit", type=int, default=0, help="use at most N validation images (0: all)")
    parser.add_argument("--retrain", action="store_true", help="train again even if out/.../shelf_cnn.keras exists")
    parser.add_argument(
        "--profile",
        default="x86-kiosk-cpu",
        help="hardware profile to convert, check and bench for (default x86-kiosk-cpu)",
    )
    parser.add_argument(
        "--teacher",
        help="a trained teacher's Keras bundle: ship a student distilled from it "
        f"(default: {DEFAULT_TEACHER} when it exists and fits the data)",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="use the small built-in CNN as the teacher even if a trained teacher exists",
    )
    parser.add_argument(
        "--rec-data",
        default="baskets",
        help="the basket recommender's data: baskets (../shared/data/groceries-baskets; synthetic baskets "
        "with planted co-occurrences when absent), synthetic-baskets or a baskets file",
    )
    parser.add_argument("--rec-epochs", type=int, default=20, help="recommendation student epochs (default 20)")
    parser.add_argument(
        "--rec-teacher-epochs", type=int, help="recommendation teacher's most epochs (default 30, early stop)"
    )
    parser.add_argument("--no-recommender", action="store_true", help="skip the basket recommender half")
    parser.epilog = "example: shelfedge quickstart --out out/quickstart"


def _dataset_root(args: argparse.Namespace, out: Path) -> tuple[Path, str]:
    if args.data:
        return Path(args.data), "given"
    root = default_data_root()
    if (root / "train.txt").is_file():
        return root, "shared"
    target = out / "synthetic-data"
    log(f"[data] {root} not found: generating a synthetic shelf-photo dataset in {target}")
    return synthetic.generate(target), "synthetic"


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Shipped:
    """The model quickstart ships: a student distilled from a trained teacher, or the small CNN."""

    model: Any  # keras.Model (keras is imported lazily: it is the heavy optional backend)
    name: str
    preprocessing: Preprocessing
    info: dict[str, Any]
    teacher_path: Path | None


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # Before any work: without the tf extra this raises the ImportError that cli.main turns into
    # "install shelfedge[tf]" (keras is otherwise imported lazily, with the converters).
    importlib.import_module("keras")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root, origin = _dataset_root(args, out)
    train, val = load_split(root, "train"), load_split(root, "val")
    if args.limit:
        val = val.head(args.limit)
    log(f"[data] {root} ({origin}): {len(train)} train / {len(val)} val images, {len(train.class_names)} classes")
    profile = load_profile(args.profile)  # a bad profile fails before any training
    shipped = _model_to_ship(args, train, root, out, profile)
    (out / "labels.txt").write_text("\n".join(train.class_names) + "\n", encoding="utf-8")
    bundles = _export(shipped, train, out)
    reference, rows = _compare_runtimes(bundles, val)
    table = markdown_table(rows, COLUMNS)
    source_bundle = bundles[ModelFormat.KERAS]
    teacher_bundle = Bundle.open(shipped.teacher_path) if shipped.teacher_path is not None else source_bundle
    teacher = _teacher_summary(shipped, teacher_bundle, reference, val)
    converted = qp.convert_stage(source_bundle.path, profile, root, out)
    parity = qp.parity_stage(converted.chosen, source_bundle.path, val, profile)
    bench = qp.bench_stage(converted.chosen, teacher_bundle, profile, val, out)
    pipeline = qp.summary_rows(teacher, converted, parity, bench, profile)
    rec = None
    if not args.no_recommender:
        rec = recommender_stages(
            out, profile, data=args.rec_data, teacher_epochs=args.rec_teacher_epochs, student_epochs=args.rec_epochs
        )
        pipeline += rec.rows
    pipeline_table = markdown_table(pipeline, ["stage", "result"])
    summary = {
        "schema_version": 1,
        "data": {
            "root": str(root),
            "origin": origin,
            "train": len(train),
            "val": len(val),
            "classes": len(train.class_names),
        },
        "model": shipped.info,
        "teacher": teacher,
        "reference": "tensorflow (Keras bundle) on " + reference["device"],
        "rows": rows,
        "profile": profile.id,
        "convert": {"report": str(out / "convert" / profile.id / "report.json"), "chosen": str(converted.chosen.path)},
        "parity": [r.to_dict() for r in parity],
        "bench": {"report": str(out / "bench" / "bench.json"), "comparison": bench[2].to_dict()},
        "pipeline": pipeline,
        "recommender": rec.to_dict() if rec else None,
        "passed": all(r.verdict.passed for r in parity)
        and all(c.passed is not False for c in bench[0].budgets)
        and (rec is None or rec.passed),
        "host": host_info(),
        "tool_versions": tool_versions(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(_markdown(summary, table, pipeline_table), encoding="utf-8")
    first = bundles[ModelFormat.TFLITE].path
    emit(args, summary, lambda: _text(summary, table, pipeline_table, out, first, val))
    return 0


def _model_to_ship(
    args: argparse.Namespace, train: ImageDataset, root: Path, out: Path, profile: HardwareProfile
) -> _Shipped:
    """A student distilled from the trained teacher when there is one, else the small CNN (trained or reused)."""
    # Lazily: keras and the converters import TensorFlow, which every other command can do without.
    import keras

    from converters.models.small_cnn import SmallCnnConfig, preprocessing_for, train_small_cnn
    from converters.training.distill import distill_for_convert

    teacher_path = _trained_teacher(args, train)
    if teacher_path is not None:
        log(
            f"[teacher] {teacher_path} (trained): distilling the {STUDENT} student from it (cached after the first run)"
        )
        source = distill_for_convert(STUDENT, teacher_path, root, out / "students", profile.input_size, log=log)
        model = keras.saving.load_model(source.model, compile=False)
        name, preprocessing, model_file = source.name, source.preprocessing, str(source.model)
    else:
        config = SmallCnnConfig(input_size=args.input_size, epochs=args.epochs)
        path = out / "shelf_cnn.keras"
        if path.is_file() and not args.retrain:
            log(f"[train] reusing {path} (pass --retrain to train again)")
            model = keras.saving.load_model(path, compile=False)
        else:
            log(f"[train] small CNN, {config.epochs} epochs, {config.input_size}px input")
            t = time.perf_counter()
            model = train_small_cnn(train, config, log=log)
            model.save(path)
            log(f"[train] done in {time.perf_counter() - t:.0f} s -> {path}")
        name, preprocessing, model_file = "shelf_cnn", preprocessing_for(config), str(path)
    info: dict[str, Any] = {
        "path": model_file,
        "name": name,
        "params": int(model.count_params()),
        "input_size": list(preprocessing.size),
    }
    return _Shipped(model=model, name=name, preprocessing=preprocessing, info=info, teacher_path=teacher_path)


def _export(shipped: _Shipped, train: ImageDataset, out: Path) -> dict[ModelFormat, Bundle]:
    from converters.export.pipeline import export  # lazily: it imports TensorFlow

    log("[export] LiteRT, OpenVINO IR, ONNX and the Keras reference bundle")
    return export(
        shipped.model,
        out_dir=out / "bundles",
        name=shipped.name,
        labels=train.class_names,
        preprocessing=shipped.preprocessing,
        progress=lambda m: log(f"[export] {m}"),
    )


def _compare_runtimes(
    bundles: dict[ModelFormat, Bundle], val: ImageDataset
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The TensorFlow reference's outputs, and one row per bundle x runtime that can open it."""
    reference = _run_bundle(bundles[ModelFormat.KERAS], Runtime.TENSORFLOW, val)
    rows: list[dict[str, Any]] = []
    for fmt, bundle in bundles.items():
        for runtime in RUNTIMES_FOR_FORMAT[fmt]:
            try:
                result = reference if runtime is Runtime.TENSORFLOW else _run_bundle(bundle, runtime, val)
            except BackendUnavailableError as e:
                log(f"[compare] skipping {bundle.path.name} on {runtime.value}: {e}")
                continue
            rows.append(_row(bundle, runtime, result, reference, val))
    return reference, rows


def _teacher_summary(
    shipped: _Shipped, teacher_bundle: Bundle, reference: dict[str, Any], val: ImageDataset
) -> dict[str, str]:
    ref_top1 = float((reference["logits"].argmax(1) == np.asarray(val.labels)).mean())
    params = shipped.info["params"]
    if shipped.teacher_path is not None:
        summary = (
            f"trained teacher {teacher_bundle.path} -> distilled student {shipped.name}, "
            f"{params:,} params, val top-1 {ref_top1:.3f}"
        )
    else:
        summary = (
            f"small built-in CNN {shipped.name}, {params:,} params, "
            f"val top-1 {ref_top1:.3f} (run `shelfedge teacher` for the real one)"
        )
    return {"bundle": str(teacher_bundle.path), "summary": summary}


def _text(summary: dict[str, Any], table: str, pipeline_table: str, out: Path, first: Path, val: ImageDataset) -> str:
    host = summary["host"]
    origin = summary["data"]["origin"]
    return (
        f"\nshelfedge quickstart: {len(val)} {origin} validation images through every runtime, "
        f"compared with the TensorFlow reference ({summary['reference']})\n"
        f"host: {host['cpu']}, {host['logical_cores']} logical cores\n\n{table}\n\n"
        f"release check for {summary['profile']}:\n\n{pipeline_table}\n\n"
        f"report: {out / 'report.md'} and {out / 'report.json'} ({summary['seconds']} s); "
        f"convert, parity and bench reports under {out}/convert, {out}/bench\n"
        f"next: shelfedge inspect {first}\n"
        f"      shelfedge classify {first} {val.paths[0]}"
    )


def _run_bundle(bundle: Bundle, runtime: Runtime, val: ImageDataset) -> dict[str, Any]:
    log(f"[compare] {bundle.path.name} on {runtime.value}: {len(val)} images")
    t0 = time.perf_counter()
    model = load(bundle, runtime=runtime)
    spec = bundle.manifest.inputs[0]
    pre = bundle.manifest.preprocessing
    if pre is None:
        raise ConfigError(f"{bundle.path}: manifest has no preprocessing")
    with model:
        tensors = [pp.load_and_preprocess(path, pre, spec) for path in val.paths]
        model.run({spec.name: tensors[0]})  # first inference: part of the load cost
        load_ms = (time.perf_counter() - t0) * 1e3
        outputs, times = [], []
        name = bundle.manifest.outputs[0].name
        for tensor in tensors:
            t = time.perf_counter()
            outputs.append(model.run({spec.name: tensor})[name])
            times.append((time.perf_counter() - t) * 1e3)
        info = model.info
    return {
        "logits": np.concatenate(outputs, axis=0).astype(np.float32),
        "p50_ms": float(np.median(times)),
        "load_ms": load_ms,
        "device": info.actual_device + (" (fell back)" if info.fell_back else ""),
        "precision": info.precision.value,
    }


def _row(
    bundle: Bundle, runtime: Runtime, result: dict[str, Any], reference: dict[str, Any], val: ImageDataset
) -> dict[str, Any]:
    logits, ref = result["logits"], reference["logits"]
    labels = np.asarray(val.labels)
    return {
        "bundle": bundle.manifest.format.value,
        "runtime": runtime.value,
        "device": result["device"],
        "precision": result["precision"],
        "size MB": round(bundle.size_bytes() / 1e6, 3),
        "max abs diff vs ref": float(np.abs(logits - ref).max()),
        "top-1 agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
        "val top-1": float((logits.argmax(1) == labels).mean()),
        "infer ms p50": round(result["p50_ms"], 3),
        "load ms": round(result["load_ms"], 1),
    }


def _trained_teacher(args: argparse.Namespace, train: ImageDataset) -> Path | None:
    """The trained teacher to distil from: --teacher, else the default one when it exists and fits the data."""
    if args.small:
        return None
    if args.teacher:
        return Path(args.teacher)
    if not (DEFAULT_TEACHER / "manifest.json").is_file():
        return None
    if Bundle.open(DEFAULT_TEACHER).labels != tuple(train.class_names):
        log(f"[teacher] {DEFAULT_TEACHER} was trained on other classes: using the small built-in CNN")
        return None
    return DEFAULT_TEACHER


def _markdown(summary: dict[str, Any], table: str, pipeline_table: str) -> str:
    host = summary["host"]
    data = summary["data"]
    return (
        "# shelfedge quickstart\n\n"
        f"Data: `{data['root']}` ({data['origin']}), {data['train']} train / {data['val']} val images, "
        f"{data['classes']} classes. Model shipped: {summary['model']['name']}, {summary['model']['params']:,} "
        f"parameters, {summary['model']['input_size']} px input. Teacher: {summary['teacher']['summary']}.\n\n"
        f"## Release check for {summary['profile']}\n\n{pipeline_table}\n\n"
        "## Every runtime on the fp32 exports\n\n"
        f"Reference: {summary['reference']}. Host: {host['cpu']}, {host['logical_cores']} logical cores. "
        "Inference latency is batch 1, median over the validation images, measured in this one run.\n\n"
        f"{table}\n\n"
        "Tool versions: " + ", ".join(f"{k} {v}" for k, v in summary["tool_versions"].items()) + "\n"
    )
