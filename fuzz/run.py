"""Run shelfedge's fuzz targets and print what they found: iterations, crashes, hangs, generic
exceptions, memory.

Each target (``fuzz/fuzz_<name>.py``, libFuzzer through atheris) runs in its own process,
seeded from the committed hostile corpus (``tests/data/hostile/``), with a per-input timeout
and an RSS limit. A crash, hang or out-of-memory stops libFuzzer: the input is saved, counted,
and the target restarts from its grown corpus until the iterations are done. Generic
exceptions (anything but a shelfedge error) are counted by the target itself and do not stop
it. The peak RSS of each target process comes from the kernel (``wait4``).

    python3 fuzz/run.py --ci                   # bounded: 3,000 iterations, <= 60 s per target
    python3 fuzz/run.py --iterations 100000    # the long run

Results go to ``out/fuzz/<target>/`` (corpus, artifacts, findings.jsonl, libfuzzer.log).
Exit status 1 when anything was found or a peak reached the memory limit. Needs ``atheris``
(``pip install atheris``). This script imports nothing heavy, so its own memory stays out of
the children's figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = {"decode": ROOT / "tests/data/hostile/images", "manifest": ROOT / "tests/data/hostile/manifests"}
CI_ITERATIONS = 3000
CI_SECONDS = 60
MAX_RESTARTS = 25
PROGRESS_SECONDS = 10.0
_STOPS = (  # libFuzzer's line for each way a run stops early -> the counter it feeds
    ("ERROR: libFuzzer: timeout", "hangs"),
    ("ERROR: libFuzzer: out-of-memory", "ooms"),
    ("Uncaught Python exception", "generic"),
    ("ERROR: libFuzzer:", "crashes"),
    ("ERROR: AddressSanitizer", "crashes"),
)


@dataclasses.dataclass(kw_only=True)
class Result:
    """One target's totals over all its libFuzzer runs."""

    target: str
    iterations: int = 0
    seconds: float = 0.0
    crashes: int = 0
    hangs: int = 0
    ooms: int = 0
    generic: int = 0
    peak_rss_mb: float = 0.0
    restarts: int = 0
    findings: list[str] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.hangs or self.ooms or self.generic)


def _libfuzzer_args(args: argparse.Namespace, target_dir: Path, runs: int, seconds: int | None) -> list[str]:
    flags = [
        f"-runs={runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-max_len={args.max_len}",
        "-print_final_stats=1",
        f"-artifact_prefix={target_dir / 'artifacts'}/",
    ]
    if seconds:
        flags.append(f"-max_total_time={seconds}")
    return flags


def _peak_mb(rusage: object) -> float:
    maxrss = float(getattr(rusage, "ru_maxrss", 0))
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def _run_once(target: str, flags: list[str], target_dir: Path, log_path: Path) -> tuple[int, float, str]:
    """One libFuzzer process: (status, peak RSS MB, its log text). Prints progress lines."""
    corpus = target_dir / "corpus"
    command = [sys.executable, str(ROOT / "fuzz" / f"fuzz_{target}.py"), *flags, str(corpus), str(SEEDS[target])]
    env = {**os.environ, "SHELFEDGE_FUZZ_FINDINGS": str(target_dir / "findings.jsonl")}
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        last_print = time.monotonic()
        while True:
            pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.2)
            if time.monotonic() - last_print >= PROGRESS_SECONDS:
                last_print = time.monotonic()
                text = log_path.read_text(errors="replace")
                stats = re.findall(r"^#(\d+)\s.*?exec/s: (\d+) rss: (\d+)Mb", text, re.M)
                if stats:
                    done, speed, rss = stats[-1]
                    print(f"  {target}: {int(done):,} iterations, {speed} exec/s, rss {rss} MB", flush=True)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, _peak_mb(rusage), log_path.read_text(errors="replace")


def run_target(target: str, args: argparse.Namespace) -> Result:
    """Fuzz one target for ``args.iterations`` inputs (restarting after each crash, hang or OOM)."""
    target_dir = Path(args.out) / target
    for sub in ("corpus", "artifacts"):
        (target_dir / sub).mkdir(parents=True, exist_ok=True)
    findings_path = target_dir / "findings.jsonl"
    findings_path.unlink(missing_ok=True)
    result = Result(target=target)
    started = time.monotonic()
    deadline = started + args.max_seconds if args.max_seconds else None
    while result.iterations < args.iterations and result.restarts <= MAX_RESTARTS:
        left = None if deadline is None else max(1, int(deadline - time.monotonic()))
        flags = _libfuzzer_args(args, target_dir, args.iterations - result.iterations, left)
        status, peak, log = _run_once(target, flags, target_dir, target_dir / f"libfuzzer-{result.restarts}.log")
        result.peak_rss_mb = max(result.peak_rss_mb, peak)
        executed = re.findall(r"stat::number_of_executed_units: (\d+)", log)
        result.iterations += int(executed[-1]) if executed else 0
        if status == 0:
            break
        stop = next((counter for line, counter in _STOPS if line in log), "crashes")
        setattr(result, stop, getattr(result, stop) + 1)
        artifact = re.findall(r"Test unit written to (\S+)", log)
        result.findings.append(f"{stop}: {artifact[-1] if artifact else f'exit status {status}, see the log'}")
        result.restarts += 1
        if deadline is not None and time.monotonic() >= deadline:
            break
    result.seconds = time.monotonic() - started
    if findings_path.exists():
        entries = [json.loads(line) for line in findings_path.read_text(encoding="utf-8").splitlines()]
        result.generic += len(entries)
        kinds = Counter((e["type"], e["where"]) for e in entries)
        for (kind, where), count in kinds.most_common():
            example = next(e for e in entries if (e["type"], e["where"]) == (kind, where))
            message, sample = example["message"][:120], f"generic-{example['input_sha1']}"
            result.findings.append(f"generic: {count} x {kind} at {where}: {message} (e.g. {sample})")
    return result


def _table(results: list[Result], rss_limit_mb: int) -> str:
    header = ("target", "iterations", "seconds", "exec/s", "crashes", "hangs", "generic exc.", "OOM", "peak RSS MB")
    rows = [header]
    for r in results:
        speed = r.iterations / r.seconds if r.seconds else 0.0
        peak = f"{r.peak_rss_mb:.0f}" + (" (over)" if r.peak_rss_mb >= rss_limit_mb else "")
        counts = (str(r.crashes), str(r.hangs), str(r.generic), str(r.ooms))
        rows.append((r.target, f"{r.iterations:,}", f"{r.seconds:.1f}", f"{speed:.0f}", *counts, peak))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help=f"bounded run: {CI_ITERATIONS} iterations, {CI_SECONDS} s")
    parser.add_argument("--iterations", type=int, default=None, help="inputs per target (default 100000)")
    parser.add_argument("--max-seconds", type=int, default=None, help="wall-clock cap per target")
    parser.add_argument("--targets", nargs="+", choices=sorted(SEEDS), default=sorted(SEEDS))
    parser.add_argument("--timeout", type=int, default=10, help="per-input timeout, seconds (a hang)")
    parser.add_argument("--rss-limit-mb", type=int, default=500, help="memory limit of a target process")
    parser.add_argument("--max-len", type=int, default=65536, help="the longest input libFuzzer makes")
    parser.add_argument("--out", default=str(ROOT / "out" / "fuzz"))
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = CI_ITERATIONS if args.ci else 100_000
    if args.max_seconds is None and args.ci:
        args.max_seconds = CI_SECONDS
    results = []
    for target in args.targets:
        print(f"fuzzing {target}: {args.iterations:,} iterations, seeds {SEEDS[target].relative_to(ROOT)}", flush=True)
        results.append(run_target(target, args))
    print()
    print(_table(results, args.rss_limit_mb))
    for r in results:
        for finding in r.findings:
            print(f"{r.target}: {finding}")
    failed = [r.target for r in results if not r.clean or r.peak_rss_mb >= args.rss_limit_mb]
    print(f"\n{'FOUND PROBLEMS in ' + ', '.join(failed) if failed else 'clean'}; logs under {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
