"""``shelfedge devices``: what can run here."""

from __future__ import annotations

import argparse

from cli import emit
from sdk.qa.tables import markdown_table
from sdk.runtime import available_runtimes
from sdk.versions import host_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "example: shelfedge devices --json"


def run(args: argparse.Namespace) -> int:
    runtimes = available_runtimes()
    host = host_info()
    gpu_present = _gpu_present(runtimes)
    payload = {
        "host": host,
        "runtimes": {r.value: info for r, info in runtimes.items()},
        "gpu_present": gpu_present,
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
                    "devices": ", ".join(_device_text(d) for d in info.get("devices", [])) or None,
                    "note": None if info["available"] else f"pip install 'shelfedge[{info['extra']}]'",
                }
            )
        return (
            f"host: {host['cpu']} ({host['logical_cores']} logical cores), {host['os']}\n"
            f"GPU present: {'yes' if gpu_present else 'no'}\n\n" + markdown_table(rows)
        )

    emit(args, payload, text)
    return 0


def _device_text(device: object) -> str:
    if isinstance(device, dict):
        return f"{device.get('device')} ({device.get('full_name')})"
    return str(device)


def _gpu_present(runtimes: dict) -> bool:
    """A GPU any runtime can use: TensorFlow sees one, ORT has CUDA/ROCm, OpenVINO lists GPU."""
    for info in runtimes.values():
        for device in info.get("devices", []):
            name = device.get("device", "") if isinstance(device, dict) else str(device)
            if "GPU" in name.upper() or name in ("CUDAExecutionProvider", "ROCMExecutionProvider"):
                return True
    return False
