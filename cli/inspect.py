"""``shelfedge inspect BUNDLE``: the manifest, after checking every file's hash and that the model needs no other."""

from __future__ import annotations

import argparse

from cli import emit
from sdk.bundle import Bundle
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory")
    parser.epilog = "example: shelfedge inspect out/quickstart/bundles/shelf_cnn-tflite-fp32"


def run(args: argparse.Namespace) -> int:
    bundle = Bundle.open(args.bundle)
    m = bundle.manifest
    payload = {
        "path": str(bundle.path),
        "verified": True,
        "verified_files": sorted(m.files),
        "model_files": list(bundle.model_files),
        "size_bytes": bundle.size_bytes(),
        "manifest": m.to_dict(),
    }

    def text() -> str:
        tensors = [
            {
                "io": io,
                "name": t.name,
                "shape": "x".join("N" if d == -1 else str(d) for d in t.shape),
                "dtype": t.dtype,
                "layout": t.layout.value,
                "quantization": (
                    f"scale={t.quantization.scale:.6g} zp={t.quantization.zero_point}" if t.quantization else None
                ),
            }
            for io, group in (("input", m.inputs), ("output", m.outputs))
            for t in group
        ]
        pre = m.preprocessing.to_dict() if m.preprocessing else None
        steps = [{"step": s.name, "seconds": s.seconds, "config": s.config} for s in m.provenance.steps]
        return "\n".join(
            [
                f"bundle {bundle.path}: the sha256 of its {len(m.files)} listed files verified, "
                f"{bundle.size_bytes() / 1e6:.2f} MB; the model loads {', '.join(bundle.model_files)}, all listed",
                f"name {m.name} | task {m.task.value} | format {m.format.value} | precision "
                f"{m.precision.value} | {len(bundle.labels)} labels | schema v{m.schema_version}",
                "",
                markdown_table(tensors),
                "",
                f"preprocessing: {pre}",
                f"source: {m.provenance.source} (sha256 {m.provenance.source_sha256[:16]}…), "
                f"created {m.provenance.created_utc}",
                "",
                markdown_table(steps) if steps else "no conversion steps recorded",
                "",
                "tool versions: " + ", ".join(f"{k} {v}" for k, v in m.provenance.tool_versions.items()),
                "metrics: " + (str(dict(m.metrics)) if m.metrics else "none recorded"),
            ]
        )

    emit(args, payload, text)
    return 0
