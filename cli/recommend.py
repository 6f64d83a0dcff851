"""``shelfedge recommend BUNDLE --history "whole milk,yogurt" -k 10``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import emit
from sdk.errors import ConfigError
from sdk.qa.tables import markdown_table
from sdk.recommender import Recommender, RecommenderOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="recommendation bundle directory (encoder + items.npz + items.json)")
    parser.add_argument(
        "--history",
        default="",
        help="item ids as in the bundle's catalogue, comma-separated, oldest first (empty: most popular items)",
    )
    parser.add_argument("-k", "--k", type=int, default=10, help="items to recommend (default 10)")
    parser.add_argument("--exclude", default="", help="item ids never to recommend, comma-separated")
    parser.add_argument("--allow", help="file of the only item ids that may be recommended, one per line (in stock)")
    parser.add_argument("--category", help="only items of this category (a MovieLens genre, a basket department)")
    parser.add_argument(
        "--keep-history", action="store_true", help="allow items already in the history to be recommended again"
    )
    parser.add_argument(
        "--runtime", help="litert | openvino | onnxruntime | tensorflow (default: the profile's, else the format's)"
    )
    parser.add_argument("--device", help="CPU | GPU | NPU | TPU | AUTO (default: the profile's, else CPU)")
    parser.add_argument("--profile", help="hardware profile id or YAML path")
    parser.add_argument("--fallback", choices=["strict", "record"], help="override the profile's fallback policy")
    parser.add_argument("--threads", type=int, help="inference threads")
    parser.add_argument(
        "--search",
        choices=("auto", "exact", "ivf"),
        default="auto",
        help="exact: score every item; ivf: the bundle's IVF index (approximate); auto (default): ivf when the "
        "bundle has an index and brute force would miss the profile's p99_recommend_ms",
    )
    parser.add_argument("--n-probe", type=int, default=64, help="IVF lists opened per request (default 64)")
    parser.epilog = 'example: shelfedge recommend out/rec/baskets-onnx-fp32 --history "whole milk,yogurt" -k 5 --json'


def run(args: argparse.Namespace) -> int:
    options = RecommenderOptions(
        profile=args.profile,
        runtime=args.runtime,
        device=args.device,
        fallback=args.fallback,
        threads=args.threads,
        k=args.k,
        search=args.search,
        n_probe=args.n_probe,
    )
    history = _split(args.history)
    allow = _read_allow(Path(args.allow)) if args.allow else None
    with Recommender.create(args.bundle, options) as recommender:
        result = recommender.recommend(
            history,
            exclude=_split(args.exclude),
            allow=allow,
            category=args.category,
            exclude_history=not args.keep_history,
        )
    payload = {"bundle": args.bundle, "history": history, **result.to_dict()}

    def text() -> str:
        rows = [
            {"rank": rank, "id": item.id, "name": item.name, "score": item.score}
            for rank, item in enumerate(result.items, start=1)
        ]
        info = result.ran
        ran = (
            f"ran on {info.runtime.value} {info.runtime_version}, device {info.actual_device}"
            f" (requested {info.requested_device.value}), precision {info.precision.value}"
        )
        if info.fell_back:
            ran += f"; FELL BACK: {info.fallback_reason}"
        t = result.timings
        lines = [ran, f"encode {t.encode_ms:.3f} ms, score {t.score_ms:.3f} ms, total {t.total_ms:.3f} ms"]
        search = f"search {result.search}"
        if result.search == "ivf":
            search += f", {result.n_probe} of {result.n_lists} lists"
        lines.append(f"{search}, {result.candidates:,} items scored ({info.details.get('search', '')})")
        lines += [f"note: {note}" for note in result.notes()]
        return "\n".join(lines) + "\n\n" + (markdown_table(rows) if rows else "(no items left to recommend)")

    emit(args, payload, text)
    return 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _read_allow(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"--allow {path}: cannot read the allow-list ({e}); pass a text file, one item id a line"
        ) from e
    return [line.strip() for line in lines if line.strip()]
