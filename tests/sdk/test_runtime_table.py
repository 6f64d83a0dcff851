"""The adapter table: a missing backend is an error that names the extra to install, and every
optional capability the table lists is one the adapter module implements (and no other)."""

from __future__ import annotations

import importlib
import sys

import pytest

from sdk.enums import Runtime
from sdk.errors import BackendUnavailableError, ConfigError
from sdk.runtime import (
    _PROTOCOLS,
    ADAPTERS,
    AsyncSession,
    Capability,
    adapter_module,
    capability_adapter,
    layer_outputs_adapter,
    runtimes_with,
    supports,
)

# runtime -> the importable packages that provide its backend (all blocked together).
BACKEND_PACKAGES = {
    Runtime.LITERT: ("ai_edge_litert", "tflite_runtime", "tensorflow"),
    Runtime.OPENVINO: ("openvino",),
    Runtime.ONNXRUNTIME: ("onnxruntime",),
    Runtime.TENSORFLOW: ("tensorflow",),
}


def _block_backend(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtimes._openvino_core
    import runtimes.litert

    monkeypatch.setattr(runtimes.litert, "_backend_cache", [])
    monkeypatch.setattr(runtimes._openvino_core, "_core_cache", [])
    for package in BACKEND_PACKAGES[runtime]:
        # A None entry in sys.modules makes `import package` raise ImportError.
        monkeypatch.setitem(sys.modules, package, None)
        for name in [m for m in sys.modules if m.startswith(package + ".")]:
            monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("runtime", list(ADAPTERS), ids=lambda r: r.value)
def test_adapter_module_fails_with_missing_backend_naming_the_extra(runtime, monkeypatch) -> None:
    _block_backend(runtime, monkeypatch)
    extra = ADAPTERS[runtime].extra
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'shelfedge\[{extra}\]'"):
        adapter_module(runtime)


def test_adapter_table_succeeds_with_an_extra_for_every_runtime() -> None:
    assert set(ADAPTERS) == set(Runtime)
    assert {entry.extra for entry in ADAPTERS.values()} == {"litert", "openvino", "onnx", "tf"}


@pytest.mark.parametrize("runtime", list(ADAPTERS), ids=lambda r: r.value)
def test_adapter_table_succeeds_listing_exactly_the_capabilities_each_module_implements(runtime) -> None:
    # Importing the adapter module imports no backend, so this holds on a machine without any.
    module = importlib.import_module(ADAPTERS[runtime].module)
    implemented = {c for c, protocol in _PROTOCOLS.items() if isinstance(module, protocol)}
    assert implemented == set(ADAPTERS[runtime].capabilities)
    assert set(_PROTOCOLS) == set(Capability)


def test_capability_adapter_fails_with_a_capability_the_runtime_lacks_naming_those_that_have_it() -> None:
    assert not supports(Runtime.LITERT, Capability.LAYER_OUTPUTS)
    assert Runtime.OPENVINO in runtimes_with(Capability.LAYER_OUTPUTS)
    with pytest.raises(ConfigError, match=r"no layer_outputs capability.*openvino"):
        capability_adapter(Runtime.LITERT, Capability.LAYER_OUTPUTS)


@pytest.mark.parametrize("runtime", runtimes_with(Capability.LAYER_OUTPUTS), ids=lambda r: r.value)
def test_capability_adapter_fails_with_missing_backend_naming_the_extra(runtime, monkeypatch) -> None:
    _block_backend(runtime, monkeypatch)
    with pytest.raises(BackendUnavailableError, match=rf"pip install 'shelfedge\[{ADAPTERS[runtime].extra}\]'"):
        layer_outputs_adapter(runtime)


def test_async_session_protocol_succeeds_only_with_run_async_and_a_request_count() -> None:
    class Plain:
        info = None

        def inputs(self) -> list: ...
        def outputs(self) -> list: ...
        def run(self, feed) -> dict: ...
        def close(self) -> None: ...
        def __enter__(self): ...
        def __exit__(self, *exc) -> None: ...

    class Parallel(Plain):
        async_requests = 2

        def run_async(self, feeds) -> list:
            return [self.run(f) for f in feeds]

    assert not isinstance(Plain(), AsyncSession)
    assert isinstance(Parallel(), AsyncSession)
