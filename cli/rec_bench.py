"""``shelfedge rec-bench BUNDLE... --dataset movielens``: recommend() latency per bundle and runtime, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli import emit, log
from sdk.errors import ConfigError
from sdk.qa.rec_bench import bench_recommenders, markdown
from sdk.rec_datasets import NAMED, open_rec_dataset
from sdk.recommender import Recommender


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="+", help="recommendation bundle directories")
    parser.add_argument("--dataset", default="baskets", help=f"where the histories come from: {', '.join(NAMED)}, ...")
    parser.add_argument("--runtimes", help="comma-separated runtimes to try on every bundle (default: each bundle's)")
    parser.add_argument("-k", type=int, default=10, help="items per call (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1: one shopper per core)")
    parser.add_argument("--blocks", type=int, default=20, help="round-robin blocks (default 20)")
    parser.add_argument("--calls-per-block", type=int, default=50, help="calls per contender per block (default 50)")
    parser.add_argument("--out", default="out/rec-bench", help="output directory (default out/rec-bench)")
    parser.epilog = "example: shelfedge rec-bench out/rec-distill/movielens/bundles/* --dataset movielens"


def run(args: argparse.Namespace) -> int:
    dataset = open_rec_dataset(args.dataset, fallback=args.dataset in NAMED)
    ids = dataset.interactions.catalogue.ids
    histories = [[ids[i] for i in history] for history in dataset.split.test.histories]
    runtimes = [r.strip() for r in args.runtimes.split(",")] if args.runtimes else [None]
    recommenders: dict[str, Recommender] = {}
    try:
        for path in args.bundle:
            for runtime in runtimes:
                try:
                    recommender = Recommender.from_bundle(path, runtime=runtime, threads=args.threads, k=args.k)
                except ConfigError as e:  # this runtime cannot open this format: say so, keep the others
                    log(f"[rec-bench] skipped {Path(path).name} on {runtime}: {e}")
                    continue
                recommenders[f"{Path(path).name} @ {recommender.info.runtime.value}"] = recommender
        log(f"[rec-bench] {len(recommenders)} contenders x {len(histories):,} {dataset.name} histories, interleaved")
        rows = bench_recommenders(
            recommenders, histories, k=args.k, blocks=args.blocks, calls_per_block=args.calls_per_block
        )
    finally:
        for recommender in recommenders.values():
            recommender.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"dataset": dataset.name, "k": args.k, "threads": args.threads, "rows": [r.to_dict() for r in rows]}
    (out / "rec_bench.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "rec_bench.md").write_text(markdown(rows) + "\n", encoding="utf-8")
    emit(args, payload, lambda: markdown(rows) + f"\n\nreports: {out}")
    return 0
