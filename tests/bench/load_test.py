"""A bounded load test of the kiosk app on loopback: locust, headless, stopping by itself.

    python3 tests/bench/load_test.py [--users 8] [--seconds 30] [--max-requests 20000]
        [--bundle B --recommender R] [--profile x86-kiosk-cpu] [--data ../shared/data/grocery]
        [--photos 81] [--json out/demo-load.json]

Starts ``shelfedge demo`` (the real app process, quickstart bundles by default) on a free
127.0.0.1 port, then picks up to ``--photos`` val photos (one per class first) and keeps those the
app recognises correctly one at a time: under load each must get the same label again, else it
counts as a wrong answer. ``--users`` locust users, each with its own session cookie (its own
basket), mix recognise (5) / add to basket (2) / recommend (3) / view basket (1) with no wait
time, until ``--seconds`` or ``--max-requests`` is reached. It prints req/s, p50/p99 per endpoint,
errors, wrong answers, and the app process's resident memory before, at peak and after (growth is
measured from the warmed-up app; the target is < 10 %). Exits 1 on any error or wrong answer, or
when memory grew 10 % or more.

A script, not a pytest test (locust patches the process with gevent): pytest imports it and finds
no tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=20_000, help="stop after this many requests")
    p.add_argument("--bundle", help="image bundle (default: the quickstart's, as shelfedge demo picks)")
    p.add_argument("--recommender", help="recommendation bundle (default: the quickstart's)")
    p.add_argument("--profile", default="x86-kiosk-cpu")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "grocery"), help="Grocery Store folder")
    p.add_argument("--photos", type=int, default=81, help="val photos to pick (one per class first)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    if args.users < 1 or args.seconds <= 0 or args.max_requests < 1:
        p.error("--users, --seconds and --max-requests must be positive")
    return args


def val_photos(root: Path, limit: int) -> list[tuple[Path, str]]:
    """Up to ``limit`` (photo, class name) pairs from ``root``'s val split, one per class first."""
    names = {}
    for line in (root / "classes.csv").read_text().splitlines()[1:]:
        cells = line.split(",")
        names[int(cells[1])] = cells[0]
    by_class: dict[str, list[Path]] = {}
    for line in (root / "val.txt").read_text().splitlines():
        if line.strip():
            rel, fine = (c.strip() for c in line.split(",")[:2])
            by_class.setdefault(names[int(fine)], []).append(root / rel)
    picked: list[tuple[Path, str]] = []
    for rank in range(max(len(v) for v in by_class.values())):
        for label, paths in sorted(by_class.items()):
            if rank < len(paths) and len(picked) < limit:
                picked.append((paths[rank], label))
    return picked


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_app(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """``shelfedge demo`` on a free loopback port, once it answers /api/health."""
    import httpx

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "cli", "demo", "--host", HOST, "--port", str(port), "--profile", args.profile]
    argv += ["--no-build", "--catalogue", args.data]
    argv += ["--bundle", args.bundle] if args.bundle else []
    argv += ["--recommender", args.recommender] if args.recommender else []
    started = time.perf_counter()
    app = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    while True:
        if app.poll() is not None:
            raise SystemExit(f"shelfedge demo exited with {app.returncode}: {app.communicate()[1]}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
        if time.perf_counter() - started > 120:
            app.kill()
            raise SystemExit("shelfedge demo did not answer /api/health within 120 s")
    print(f"app: pid {app.pid} at {url}, answering after {time.perf_counter() - started:.2f} s", flush=True)
    return app, url


def reference_answers(url: str, photos: list[tuple[Path, str]]) -> list[tuple[bytes, str]]:
    """The photos the app recognises correctly one at a time (these also warm the app up)."""
    import httpx

    kept = []
    for path, label in photos:
        data = path.read_bytes()
        r = httpx.post(f"{url}/api/recognise", files={"image": (path.name, data, "image/jpeg")}, timeout=30)
        r.raise_for_status()
        if r.json()["product"]["label"] == label:
            kept.append((data, label))
    print(f"photos: {len(kept)} of {len(photos)} val photos recognised correctly one at a time; used under load")
    if not kept:
        raise SystemExit("the app recognised none of the photos: check the bundle and --data")
    return kept


def run_load(args: argparse.Namespace, url: str, photos: list[tuple[bytes, str]], pid: int) -> dict[str, Any]:
    """Locust users against ``url`` until the time or request limit; the stats and memory samples."""
    import gevent
    from locust import HttpUser, events, task
    from locust.env import Environment

    wrong = {"count": 0, "examples": []}  # type: dict[str, Any]
    labels = sorted({label for _, label in photos})

    class Shopper(HttpUser):
        host = url

        @task(5)
        def recognise(self) -> None:
            data, label = random.choice(photos)
            with self.client.post(
                "/api/recognise", files={"image": ("p.jpg", data, "image/jpeg")}, name="recognise", catch_response=True
            ) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                elif (got := r.json()["product"]["label"]) != label:
                    wrong["count"] += 1
                    wrong["examples"] = (wrong["examples"] + [f"{label} -> {got}"])[:5]
                    r.failure(f"wrong answer: {label} recognised as {got}")

        @task(2)
        def add(self) -> None:
            r = self.client.post("/api/basket", json={"label": random.choice(labels)}, name="basket add")
            if r.ok and r.json()["count"] >= 8:
                self.client.delete("/api/basket", name="basket empty")

        @task(3)
        def recommend(self) -> None:
            self.client.get("/api/recommend?k=5", name="recommend")

        @task(1)
        def basket(self) -> None:
            self.client.get("/api/basket", name="basket view")

    env = Environment(user_classes=[Shopper], events=events)
    runner = env.create_local_runner()

    def on_request(**_: Any) -> None:
        if env.stats.total.num_requests >= args.max_requests and runner.state != "stopped":
            gevent.spawn(runner.quit)

    env.events.request.add_listener(on_request)
    rss = [rss_bytes(pid)]

    def sample() -> None:
        while True:
            gevent.sleep(1.0)
            rss.append(rss_bytes(pid))

    sampler = gevent.spawn(sample)
    started = time.perf_counter()
    runner.start(args.users, spawn_rate=args.users)
    gevent.spawn_later(args.seconds, runner.quit)
    runner.greenlet.join(timeout=args.seconds + 60)
    elapsed = time.perf_counter() - started
    sampler.kill()
    gevent.sleep(1.0)  # let the app settle before the last memory reading
    rss.append(rss_bytes(pid))
    return {"elapsed_s": elapsed, "stats": env.stats, "rss": rss, "wrong": wrong}


def report(args: argparse.Namespace, result: dict[str, Any], photos: int) -> dict[str, Any]:
    stats, rss = result["stats"], result["rss"]
    total = stats.total
    rows = []
    for entry in sorted(stats.entries.values(), key=lambda e: e.name):
        rows.append(
            {
                "endpoint": f"{entry.method} {entry.name}",
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "req_s": round(entry.num_requests / result["elapsed_s"], 1),
                "p50_ms": entry.get_response_time_percentile(0.5),
                "p99_ms": entry.get_response_time_percentile(0.99),
            }
        )
    errors = total.num_failures - result["wrong"]["count"]
    summary = {
        "users": args.users,
        "seconds": round(result["elapsed_s"], 1),
        "requests": total.num_requests,
        "req_s": round(total.num_requests / result["elapsed_s"], 1),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "errors": errors,
        "wrong_answers": result["wrong"]["count"],
        "wrong_examples": result["wrong"]["examples"],
        "photos": photos,
        "rss_start_mb": round(rss[0] / 2**20, 1),
        "rss_peak_mb": round(max(rss) / 2**20, 1),
        "rss_end_mb": round(rss[-1] / 2**20, 1),
        "rss_growth_pct": round(100 * (rss[-1] - rss[0]) / rss[0], 2),
        "endpoints": rows,
    }
    print(f"\n{'endpoint':<22}{'requests':>9}{'failures':>9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}")
    for row in rows:
        print(
            f"{row['endpoint']:<22}{row['requests']:>9}{row['failures']:>9}{row['req_s']:>8}"
            f"{row['p50_ms']:>8}{row['p99_ms']:>8}"
        )
    print(
        f"{'all':<22}{summary['requests']:>9}{total.num_failures:>9}{summary['req_s']:>8}"
        f"{summary['p50_ms']:>8}{summary['p99_ms']:>8}"
    )
    print(
        f"\n{args.users} users, {summary['seconds']} s: {summary['req_s']} req/s, p50 {summary['p50_ms']} ms, "
        f"p99 {summary['p99_ms']} ms, {errors} errors, {summary['wrong_answers']} wrong answers; app RSS "
        f"{summary['rss_start_mb']} MB -> peak {summary['rss_peak_mb']} MB -> end {summary['rss_end_mb']} MB "
        f"({summary['rss_growth_pct']:+.2f} %, target < 10 %)"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    import locust  # noqa: F401  (first: locust patches the process with gevent on import)

    args = parse_args(argv)
    photos = val_photos(Path(args.data), args.photos)
    app, url = start_app(args)
    try:
        kept = reference_answers(url, photos)
        result = run_load(args, url, kept, app.pid)
    finally:
        app.send_signal(signal.SIGINT)
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
    summary = report(args, result, len(kept))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    failed = summary["errors"] or summary["wrong_answers"] or summary["rss_growth_pct"] >= 10
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
