"""``shelfedge devices``: what can run here."""

from __future__ import annotations

import argparse

from sdk.cli import emit
from sdk.runtime import available_runtimes
from sdk.tables import markdown_table
from sdk.versions import host_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "example: shelfedge devices --json"


def run(args: argparse.Namespace) -> int:
    runtimes = available_runtimes()
    payload = {
        "host": host_info(),
        "runtimes": {r.value: info for r, info in runtimes.items()},
        "gpu_present": any(info.get("gpus") for info in runtimes.values()),
    }

    def text() -> str:
        rows = []
        for runtime, info in runtimes.items():
            rows.append(
                {
                    "runtime": runtime.value,
                    "available": info["available"],
                    "version": info.get("version"),
                    "package": info.get("package"),
                    "devices": ", ".join(map(str, info.get("devices", []))) or None,
                    "note": None if info["available"] else f"pip install 'shelfedge[{info['extra']}]'",
                }
            )
        host = payload["host"]
        return (
            f"host: {host['cpu']} ({host['logical_cores']} logical cores), {host['os']}\n"
            f"GPU present: {'yes' if payload['gpu_present'] else 'no'}\n\n" + markdown_table(rows)
        )

    emit(args, payload, text)
    return 0
