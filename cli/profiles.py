"""``shelfedge profiles [ID]``: the hardware profiles."""

from __future__ import annotations

import argparse

import yaml

from cli import emit
from sdk.profiles import list_profiles, load_profile
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", nargs="?", help="a profile id or YAML path to show in full")
    parser.epilog = "examples: shelfedge profiles; shelfedge profiles android-arm64 --json"


def run(args: argparse.Namespace) -> int:
    if args.profile:
        profile = load_profile(args.profile)
        emit(args, profile.to_dict(), lambda: yaml.safe_dump(profile.to_dict(), sort_keys=False))
        return 0
    profiles = list_profiles()
    rows = [
        {
            "id": p.id,
            "runtime": p.runtime.value,
            "device": p.device.value + (f" (fallback {p.fallback_device.value})" if p.fallback_device else ""),
            "precisions": ",".join(x.value for x in p.precisions),
            "p95 budget ms": p.budgets.p95_latency_ms,
            "fallback": p.fallback.value,
            "description": p.description,
        }
        for p in profiles
    ]
    emit(args, [p.to_dict() for p in profiles], lambda: markdown_table(rows))
    return 0
