"""What every conversion step shares: its declaration, the metadata it embeds, its lineage record.

A step is a typed config plus a pure function ``run(source, config, out_dir) -> Path``. Its
``ExportStep`` declares which formats, precisions and source kinds it accepts, so a driver can
refuse a request before any work starts; ``run_step`` times it and turns it into the
``sdk.manifest.Step`` that the bundle's provenance records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdk.enums import ModelFormat, OutputKind, Precision, Task
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import SCHEMA_VERSION, Preprocessing, Step
from sdk.versions import tool_versions

if TYPE_CHECKING:
    from converters.export.source import SourceModel

# Key prefix of the metadata embedded in model files (ONNX metadata_props, OpenVINO rt_info).
METADATA_PREFIX = "shelfedge"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelMetadata:
    """What travels inside the model file where the format allows it (see STYLE.md)."""

    task: Task
    output_kind: OutputKind
    preprocessing: Preprocessing | None
    labels: tuple[str, ...] = ()

    def as_properties(self) -> dict[str, str]:
        """String key/values for formats whose metadata is a flat string map."""
        return {
            "schema_version": str(SCHEMA_VERSION),
            "task": self.task.value,
            "output_kind": self.output_kind.value,
            "preprocessing": json.dumps(self.preprocessing.to_dict() if self.preprocessing else None),
            "labels": json.dumps(list(self.labels)),
            "labels_count": str(len(self.labels)),
        }

    def to_record(self) -> dict[str, Any]:
        # Lineage keeps the label count, not the list: the bundle's labels file holds the list,
        # and a 10k-item catalogue must not be copied into every step record.
        return {
            "task": self.task.value,
            "output_kind": self.output_kind.value,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "labels_count": len(self.labels),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportStep:
    """The declaration of one format step: what it accepts and how to run it.

    Attributes:
        name: the step name recorded in provenance, e.g. ``export_tflite``.
        format: the model format it writes.
        precisions: precisions its config may ask for (quantizing steps add theirs).
        source_kinds: source kinds it converts from (``keras`` and/or ``savedmodel``).
        needs_saved_model: it converts from the SavedModel, so the source must export one.
        tools: distributions whose versions the step record carries.
        config_type: the frozen dataclass ``run`` takes.
        run: ``run(source, config, out_dir) -> model file``.
    """

    name: str
    format: ModelFormat
    precisions: frozenset[Precision]
    source_kinds: frozenset[ModelFormat]
    needs_saved_model: bool
    tools: tuple[str, ...]
    config_type: type
    run: Callable[[SourceModel, Any, Path], Path]

    def check_config(self, config: object) -> None:
        """Refuse a config this step cannot honour.

        Raises:
            ConfigError: wrong config type, or a precision the step does not produce.
        """
        if not isinstance(config, self.config_type):
            raise ConfigError(f"{self.name}: config is a {type(config).__name__}, expected {self.config_type.__name__}")
        precision = getattr(config, "precision", Precision.FP32)
        if precision not in self.precisions:
            accepted = ", ".join(sorted(p.value for p in self.precisions))
            raise ConfigError(
                f"{self.name}: precision {precision.value!r} is not produced by this step "
                f"(it writes {accepted}); lower precisions come from the quantize step"
            )

    def check_source(self, kind: ModelFormat, has_saved_model: bool, where: str) -> None:
        """Refuse a source this step cannot convert.

        Raises:
            ConfigError: the source kind is not accepted, or a needed SavedModel is missing.
        """
        if kind not in self.source_kinds:
            accepted = " or ".join(sorted(k.value for k in self.source_kinds))
            raise ConfigError(
                f"{self.name}: format {self.format.value!r} needs a {accepted} source, but {where} is a "
                f"{kind.value} source; drop {self.format.value!r} from formats or pass a {accepted} model"
            )
        if self.needs_saved_model and not has_saved_model:
            raise ConfigError(
                f"{self.name}: the source {where} was loaded without a SavedModel; "
                "load it with load_source(..., saved_model=True)"
            )

    def check(self, source: SourceModel, config: object) -> None:
        """Both checks, against a loaded source (each ``run`` calls this first).

        Raises:
            ConfigError: see ``check_config`` and ``check_source``.
        """
        self.check_config(config)
        self.check_source(source.kind, source.saved_model_dir is not None, source.description)


def run_step(step: ExportStep, source: SourceModel, config: object, out_dir: Path) -> tuple[Path, Step]:
    """Run ``step`` and return the model file with the lineage record of the run.

    Raises:
        ConfigError: the step refuses the source or config.
        ConversionError: the conversion library failed (the cause is chained).
    """
    started = time.perf_counter()
    model_file = step.run(source, config, Path(out_dir))
    seconds = time.perf_counter() - started
    record = Step(
        name=step.name,
        config=config_record(config),
        tool_versions=tool_versions(step.tools),
        seconds=round(seconds, 3),
    )
    return model_file, record


def config_record(config: object) -> dict[str, Any]:
    """A config as plain JSON values, so the in-memory manifest equals the one read back."""
    return json.loads(json.dumps(_plain(config)))


def _plain(value: Any) -> Any:
    if hasattr(value, "to_record"):
        return value.to_record()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


# Op names a library's error message reports as unconvertible, per library wording.
_UNSUPPORTED_OP_PATTERNS = (
    re.compile(r"Custom ops: ([\w, ]+)"),  # TFLite converter
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),  # TFLite converter
    re.compile(r"No conversion rule found for operations: ([\w, ]+)"),  # OpenVINO frontend
    re.compile(r"Tensorflow op \[[^:\]]*: (\w+)\] is not supported"),  # tf2onnx
)


def unsupported_ops(message: str) -> tuple[list[str], list[str]]:
    """The op types an error message says could not be converted, and the phrases saying so."""
    ops: list[str] = []
    phrases: list[str] = []
    for pattern in _UNSUPPORTED_OP_PATTERNS:
        for match in pattern.finditer(message):
            if match.group(0) not in phrases:
                phrases.append(match.group(0))
            for op in match.group(1).split(","):
                op = op.strip()
                if op and op not in ops:
                    ops.append(op)
    return ops, phrases


def layers_for_nodes(node_names: Iterable[str], layer_names: Sequence[str]) -> list[str]:
    """Map TF graph node names (``functional_1/py_scale_1/EagerPyFunc``) to Keras layer names.

    Keras uniquifies each layer's name scope when it traces the model (``conv2d`` runs under
    ``conv2d_1``), so the trailing ``_<n>`` is stripped before the exact name is tried.
    """
    layers = set(layer_names)
    found: list[str] = []
    for node in node_names:
        for part in node.split("/"):
            stripped = re.sub(r"_\d+$", "", part)
            for candidate in (stripped, part):
                if candidate in layers and candidate not in found:
                    found.append(candidate)
                    break
    return found


def conversion_error(
    step: str,
    source: SourceModel,
    error: BaseException,
    *,
    fix: str,
    ops: Sequence[str] = (),
    nodes: Sequence[str] = (),
) -> ConversionError:
    """A ConversionError naming the step, the unconvertible ops and the Keras layers holding them.

    ``ops`` and ``nodes`` are given when the step found them itself; otherwise they are read
    from the library's message and looked up in the SavedModel graph. The caller raises the
    result ``from error`` so the library's exception stays the cause.
    """
    message = str(error)
    found_ops, phrases = unsupported_ops(message)
    ops = list(ops) or found_ops
    where = ""
    if ops:
        nodes = list(nodes) or _nodes_with_ops(source, ops)
        layers = layers_for_nodes(nodes, source.layer_names)
        where = f" op(s) {', '.join(ops)}"
        if layers:
            where = f" layer(s) {', '.join(repr(name) for name in layers)}:" + where
        if nodes:
            where += f" (graph node {nodes[0]})"
        where += " cannot be converted;"
    # Converter messages run to pages of MLIR; the phrase naming the op says what broke.
    cause = "; ".join(phrases) if phrases else _first_lines(message)
    return ConversionError(f"{step}: {source.description}:{where} {type(error).__name__}: {cause}; {fix}")


def _nodes_with_ops(source: SourceModel, ops: Sequence[str]) -> list[str]:
    """The SavedModel graph nodes of the given op types, read from saved_model.pb.

    Parsing the protobuf is milliseconds; ``tf.saved_model.load`` would rebuild every function.
    """
    if source.saved_model_dir is None:
        return []
    try:
        from tensorflow.core.protobuf import saved_model_pb2

        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((source.saved_model_dir / "saved_model.pb").read_bytes())
    except Exception:  # this only enriches a message; the real error is raised anyway
        return []
    nodes: list[str] = []
    for meta_graph in saved.meta_graphs:
        graph = meta_graph.graph_def
        nodes.extend(n.name for n in graph.node if n.op in ops)
        for function in graph.library.function:
            nodes.extend(n.name for n in function.node_def if n.op in ops)
    return list(dict.fromkeys(nodes))


def _first_lines(message: str, limit: int = 400) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = " ".join(lines[:4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Run OpenVINO / NNCF with their usage telemetry off.

    Both send telemetry from background threads unless they think they run in CI; offline that
    stalls the process for seconds. NNCF decides when it is first imported, so import it inside.
    """
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous


def library_error(step: str, subject: Path | str, action: str, error: BaseException, fix: str) -> ConversionError:
    """A ConversionError naming the step, the model, what failed and the library's cause.

    The caller raises it ``from error`` so the library's exception stays attached.
    """
    return ConversionError(f"{step}: {subject}: {action} failed ({type(error).__name__}: {short_cause(error)}); {fix}")


def short_cause(error: BaseException, limit: int = 300) -> str:
    """A library exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
