"""Versions of the tools that produced a result, recorded in every manifest and report."""

from __future__ import annotations

import importlib.metadata
import platform

# Distribution names, in the order reports print them.
_TOOLS = (
    "shelfedge",
    "numpy",
    "opencv-python-headless",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "ai-edge-litert",
    "tflite-runtime",
    "openvino",
    "nncf",
    "onnx",
    "onnxruntime",
    "tf2onnx",
)


def tool_versions(names: tuple[str, ...] = _TOOLS) -> dict[str, str]:
    """Installed versions of the given distributions (absent ones are left out) and Python."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def host_info() -> dict[str, object]:
    """The host a result was measured on: CPU model, core count, OS."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }
