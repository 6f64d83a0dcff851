"""The adapter table: a missing backend is an error that names the extra to install."""

from __future__ import annotations

import sys

import pytest

from sdk.enums import Runtime
from sdk.errors import BackendUnavailableError
from sdk.runtime import ADAPTERS, adapter_module

# runtime -> the importable packages that provide its backend (all blocked together).
BACKEND_PACKAGES = {
    Runtime.LITERT: ("ai_edge_litert", "tflite_runtime", "tensorflow"),
    Runtime.OPENVINO: ("openvino",),
    Runtime.ONNXRUNTIME: ("onnxruntime",),
    Runtime.TENSORFLOW: ("tensorflow",),
}


@pytest.mark.parametrize("runtime", list(ADAPTERS), ids=lambda r: r.value)
def test_adapter_module_fails_with_missing_backend_naming_the_extra(runtime, monkeypatch) -> None:
    import runtimes.litert

    monkeypatch.setattr(runtimes.litert, "_backend_cache", [])
    for package in BACKEND_PACKAGES[runtime]:
        # A None entry in sys.modules makes `import package` raise ImportError.
        monkeypatch.setitem(sys.modules, package, None)
        for name in [m for m in sys.modules if m.startswith(package + ".")]:
            monkeypatch.setitem(sys.modules, name, None)
    extra = ADAPTERS[runtime][1]
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'shelfedge\[{extra}\]'"):
        adapter_module(runtime)


def test_adapter_table_succeeds_with_an_extra_for_every_runtime() -> None:
    assert set(ADAPTERS) == set(Runtime)
    assert {extra for _, extra in ADAPTERS.values()} == {"litert", "openvino", "onnx", "tf"}
