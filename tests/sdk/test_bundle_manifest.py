"""Manifest schema and bundle integrity: strict parsing, hashes checked on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdk.bundle import Bundle, sha256_file, write_bundle
from sdk.enums import Layout, ModelFormat, OutputKind, Precision, Task
from sdk.errors import BundleError, ManifestError
from sdk.manifest import Manifest, Preprocessing, Provenance, Step
from sdk.tensors import Quantization, TensorSpec


def _manifest(**changes: object) -> Manifest:
    base = Manifest(
        name="tiny",
        task=Task.IMAGE_CLASSIFICATION,
        format=ModelFormat.TFLITE,
        precision=Precision.INT8,
        model_file="model.tflite",
        inputs=(
            TensorSpec(
                name="image",
                shape=(-1, 32, 32, 3),
                dtype="uint8",
                layout=Layout.NHWC,
                quantization=Quantization(scale=0.0078125, zero_point=128),
            ),
        ),
        outputs=(TensorSpec(name="logits", shape=(-1, 3), dtype="float32", layout=Layout.NC),),
        output_kind=OutputKind.LOGITS,
        preprocessing=Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3),
        labels_file="labels.txt",
        provenance=Provenance(
            source="tiny.keras",
            source_sha256="0" * 64,
            created_utc="2026-11-24T00:00:00Z",
            steps=(Step(name="export_tflite", config={"optimizations": []}, tool_versions={"tf": "2.21"}),),
        ),
        files={"model.tflite": "", "labels.txt": ""},
    )
    return base.with_changes(**changes)


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    (tmp_path / "model.tflite").write_bytes(b"\x00fake model bytes" * 10)
    (tmp_path / "labels.txt").write_text("apple\nbanana\nmilk\n")
    write_bundle(tmp_path, _manifest())
    return tmp_path


def test_manifest_round_trips_through_json(bundle_dir: Path) -> None:
    opened = Bundle.open(bundle_dir)
    again = Manifest.from_dict(json.loads(opened.manifest.to_json()))
    assert again == opened.manifest
    assert opened.labels == ("apple", "banana", "milk")
    assert opened.manifest.inputs[0].quantization == Quantization(scale=0.0078125, zero_point=128)
    assert opened.manifest.files["model.tflite"] == sha256_file(bundle_dir / "model.tflite")


def test_bundle_open_fails_with_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        Bundle.open(tmp_path / "nope")


def test_bundle_open_fails_with_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        Bundle.open(tmp_path)


def test_bundle_open_fails_with_unknown_manifest_key(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["colour_space"] = "sRGB"
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="unknown key.*'colour_space'"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_unknown_nested_key(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["preprocessing"]["gamma"] = 2.2
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"preprocessing: unknown key.*'gamma'"):
        Bundle.open(bundle_dir)


@pytest.mark.parametrize("key", ["task", "inputs", "provenance", "files", "schema_version"])
def test_bundle_open_fails_with_missing_field(bundle_dir: Path, key: str) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    del data[key]
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"missing required key '{key}'"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_bad_enum_value(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["precision"] = "int3"
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="precision 'int3' is not one of"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_newer_schema_version(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["schema_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema_version 99 is not supported"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_corrupted_manifest_json(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text('{"schema_version": 1, "name": ')
    with pytest.raises(ManifestError, match="not valid JSON"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_tampered_model_file(bundle_dir: Path) -> None:
    model = bundle_dir / "model.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"!")
    with pytest.raises(BundleError, match=r"'model.tflite' has sha256 .* the manifest says"):
        Bundle.open(bundle_dir)
    # Opening without verification is an explicit choice, not a default.
    assert Bundle.open(bundle_dir, verify=False).manifest.name == "tiny"


def test_bundle_open_fails_with_deleted_labels_file(bundle_dir: Path) -> None:
    (bundle_dir / "labels.txt").unlink()
    with pytest.raises(BundleError, match="'labels.txt' listed in the manifest is missing"):
        Bundle.open(bundle_dir)


def test_bundle_open_fails_with_labels_count_mismatch(tmp_path: Path) -> None:
    (tmp_path / "model.tflite").write_bytes(b"m")
    (tmp_path / "labels.txt").write_text("apple\nbanana\n")
    with pytest.raises(ManifestError, match="has 2 labels but output 'logits' has 3 classes"):
        write_bundle(tmp_path, _manifest())


def test_manifest_fails_with_unhashed_model_file() -> None:
    data = _manifest(files={"labels.txt": "a" * 64}).to_dict()
    with pytest.raises(ManifestError, match="'model.tflite' is not listed in 'files'"):
        Manifest.from_dict(data)


def test_manifest_fails_with_path_escaping_the_bundle() -> None:
    data = _manifest().to_dict()
    data["model_file"] = "../../etc/passwd"
    with pytest.raises(ManifestError, match="must be a path relative to the bundle directory"):
        Manifest.from_dict(data)


def test_manifest_fails_with_a_signature_before_signing_exists() -> None:
    data = _manifest(files={"model.tflite": "a" * 64, "labels.txt": "b" * 64}).to_dict()
    data["signature"] = {"alg": "ed25519"}
    with pytest.raises(ManifestError, match="'signature' must be null"):
        Manifest.from_dict(data)


def test_write_bundle_fails_with_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot package 'model.tflite'"):
        write_bundle(tmp_path, _manifest())


def test_manifest_fails_with_zero_std_in_preprocessing() -> None:
    data = _manifest(files={"model.tflite": "a" * 64, "labels.txt": "b" * 64}).to_dict()
    data["preprocessing"]["std"] = [0, 1, 1]
    with pytest.raises(ManifestError, match=r"preprocessing: std must not contain 0"):
        Manifest.from_dict(data)
