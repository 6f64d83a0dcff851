"""``shelfedge matrix --bundles DIR --profiles P1,P2 --reference M|ref/``: parity + bench for every
bundle x profile that can run on this host, one summary table, one report.

Progress lines go to stderr; the table (or ``--json``) to stdout. Exits 1 when a parity check
or a budget fails or a bundle is invalid, 2 on a usage error (bad profile, no bundles, data
that is not the reference's), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.bundle import Bundle
from sdk.data import load_split
from sdk.enums import ModelFormat
from sdk.errors import BackendUnavailableError, ConfigError, ShelfedgeError
from sdk.profiles import HardwareProfile, load_profile
from sdk.qa.bench import BenchConfig
from sdk.qa.matrix import run_matrix
from sdk.qa.matrix_report import write_matrix_report
from sdk.qa.parity_run import open_reference
from sdk.qa.rec_reference import is_rec_reference

# --quick: every number once (CI smoke tests, demos), not numbers to compare; the same loop
# lengths as ``shelfedge bench --quick``.
QUICK = BenchConfig(
    warmup=3,
    repeats=20,
    min_time_s=0.1,
    throughput_time_s=0.1,
    e2e_repeats=10,
    overhead_blocks=10,
    overhead_calls=3,
    cold_start_runs=1,
    batch_sizes=(1, 4),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundles",
        required=True,
        metavar="DIR",
        help="directory searched recursively for bundles (an export or 'shelfedge convert --out' dir)",
    )
    parser.add_argument(
        "--profiles", required=True, metavar="P1,P2", help="comma-separated hardware profile ids or YAML paths"
    )
    parser.add_argument(
        "--reference",
        required=True,
        help="a saved reference directory (shelfedge reference) or the server model's Keras bundle",
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0, help="first N images when computing the reference now")
    parser.add_argument(
        "--bench-images", type=int, default=32, help="bench on N of the parity images, evenly spread (default 32)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short bench loops and one fresh process per pair (smoke tests; numbers are rough)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    parser.add_argument("--out", default="out/matrix", help="report directory (default out/matrix)")
    parser.epilog = (
        "example: shelfedge matrix --bundles out/convert --profiles x86-kiosk-cpu,onnxruntime-cpu,"
        "android-arm64 --reference out/ref --quick"
    )


def run(args: argparse.Namespace) -> int:
    names = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if not names:
        raise ConfigError("--profiles is empty; pass ids or YAML paths like x86-kiosk-cpu,onnxruntime-cpu")
    if args.limit < 0:
        raise ConfigError(f"--limit must not be negative, got {args.limit}")
    profiles = [load_profile(name) for name in names]  # a bad profile fails before any work
    if is_rec_reference(args.reference):
        return _run_recommendations(args, profiles)
    dataset = load_split(data_dir(args.data), args.split)
    if args.limit:
        dataset = dataset.head(args.limit)
    reference = open_reference(args.reference, dataset, log=log)
    base = QUICK if args.quick else BenchConfig()
    result = run_matrix(
        args.bundles,
        profiles,
        reference,
        dataset,
        bench=base,
        bench_images=args.bench_images,
        exclude=[Path(args.reference)],
        log=log,
    )
    written = write_matrix_report(args.out, result, plots=not args.no_plots, log=log)
    if not result.ran and not any(row.status == "error" for row in result.rows):
        raise BackendUnavailableError(
            f"no bundle x profile pair could run on this host; the reasons are in {written['markdown']} "
            "(see also 'shelfedge devices')"
        )
    document = result.to_dict()

    def text() -> str:
        counts = document["counts"]
        lines = [
            f"\nshelfedge matrix: {len(result.rows)} rows ({counts['ran']} ran, {counts['skipped']} skipped, "
            f"{counts['error']} errors) on {document['host']['cpu']}; reference "
            f"{result.reference.get('runtime')} on {result.reference.get('device')}, {result.images} images",
            "",
            result.table(skipped=False),
            "",
        ]
        skipped = result.skipped_reasons()
        if skipped:
            lines += ["skipped pairs (all listed in matrix.md):"]
            lines += [f"  {count} x {reason}" for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1])]
            lines.append("")
        lines += [
            f"FAIL {row.name} x {row.profile or '-'}: {failure}" for row in result.rows for failure in row.failures
        ]
        lines.append("verdict: " + ("PASS" if result.passed else "FAIL"))
        lines.append("report: " + ", ".join(str(p) for p in written.values()))
        return "\n".join(lines)

    emit(args, document, text)
    return 0 if result.passed else 1


def _run_recommendations(args: argparse.Namespace, profiles: list[HardwareProfile]) -> int:
    """Recommendation bundles below --bundles x profiles against a saved recommendation reference."""
    from sdk.qa.matrix import REFERENCE_FORMATS, find_bundles
    from sdk.qa.rec_matrix import run_rec_matrix
    from sdk.qa.rec_reference import load_rec_reference

    reference = load_rec_reference(args.reference)
    log(f"[matrix] reference {reference.path}: {reference.dataset.describe()}")
    dataset, cases = reference.dataset.open()
    ids = dataset.interactions.catalogue.ids
    histories = [[ids[i] for i in h] for h in cases.histories]
    bundles = [p for p in find_bundles(args.bundles) if not _is_reference_format(p, REFERENCE_FORMATS)]
    counts = {"blocks": 4, "calls_per_block": 10} if args.quick else {"blocks": 10, "calls_per_block": 30}
    result = run_rec_matrix(bundles, profiles, reference, cases, histories, log=log, **counts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = result.to_dict()
    (out / "matrix.json").write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    table = result.table()
    header = (
        f"reference {reference.info.get('runtime')} on {reference.info.get('device')}: {reference.dataset.describe()}"
    )
    (out / "matrix.md").write_text(f"# shelfedge matrix: recommendations\n\n{header}\n\n{table}\n", encoding="utf-8")
    if not any(row.status == "ran" for row in result.rows) and not any(row.status == "error" for row in result.rows):
        raise BackendUnavailableError(
            f"no recommendation bundle x profile pair could run here; see {out / 'matrix.md'}"
        )

    def text() -> str:
        failures = [
            f"FAIL {Path(r.bundle).name} x {r.profile}: {r.cells()['result']}" for r in result.rows if not r.passed
        ]
        verdict = "verdict: " + ("PASS" if result.passed else "FAIL")
        return "\n".join([f"\n{header}", "", result.table(skipped=False), "", *failures, verdict, f"report: {out}"])

    emit(args, document, text)
    return 0 if result.passed else 1


def _is_reference_format(path: Path, formats: tuple[ModelFormat, ...]) -> bool:
    try:
        return Bundle.open(path, verify=False).manifest.format in formats
    except ShelfedgeError:
        return False  # an invalid bundle is a row with its error
