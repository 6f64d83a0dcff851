"""Encrypted model files (issue 10, Deliver 4): AES-256-GCM, decrypted in memory only.

The suite's tiny CNN exported to tflite / openvino / onnx (``shelf_bundles``) is copied, encrypted
and loaded: the outputs must equal the plain bundle's bit for bit on the same runtime; no key, the
wrong key and a ciphertext moved between files or bundles are refused with DecryptionError; and
nothing new appears on disk while an encrypted bundle loads and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sdk import load
from sdk.bundle import Bundle, write_bundle
from sdk.encryption import (
    KEY_ENV,
    KEY_FILE_ENV,
    decrypt_model,
    encrypt_bundle,
    generate_model_key,
    key_id,
    parse_model_key,
    read_model_key,
)
from sdk.enums import ModelFormat, Runtime
from sdk.errors import BundleError, ConfigError, DecryptionError, ManifestError
from sdk.manifest import MANIFEST_NAME, Manifest
from sdk.profiles import RuntimeOptions
from sdk.runtime import SessionOptions, adapter_module, open_session

pytest.importorskip("cryptography")
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CASES = [
    pytest.param(ModelFormat.TFLITE, Runtime.LITERT, marks=pytest.mark.litert, id="tflite-litert"),
    pytest.param(ModelFormat.OPENVINO, Runtime.OPENVINO, marks=pytest.mark.openvino, id="openvino-openvino"),
    pytest.param(ModelFormat.ONNX, Runtime.ONNXRUNTIME, marks=pytest.mark.onnxruntime, id="onnx-onnxruntime"),
    pytest.param(ModelFormat.ONNX, Runtime.OPENVINO, marks=pytest.mark.openvino, id="onnx-openvino"),
]
# What identifies each format's plaintext: the TFLite file identifier, the IR's XML root, the ONNX graph's input.
PLAINTEXT_MARKERS = {ModelFormat.TFLITE: b"TFL3", ModelFormat.OPENVINO: b"<net ", ModelFormat.ONNX: b"image"}


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEY_ENV, KEY_FILE_ENV, "SHELFEDGE_REQUIRE_SIGNATURE", "SHELFEDGE_TRUSTED_KEYS"):
        monkeypatch.delenv(name, raising=False)


def _copy(bundles: dict[ModelFormat, Bundle], fmt: ModelFormat, to: Path) -> Path:
    return Path(shutil.copytree(bundles[fmt].path, to))


def _feed(bundle: Bundle) -> dict[str, np.ndarray]:
    spec = bundle.manifest.inputs[0]
    shape = (2, *spec.shape[1:])
    return {spec.name: np.random.default_rng(0).uniform(-1, 1, shape).astype(spec.dtype)}


def _rename(directory: Path, name: str) -> None:
    manifest = Manifest.load(directory / MANIFEST_NAME)
    write_bundle(directory, manifest.with_changes(name=name))


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("fmt", "runtime"), CASES)
def test_load_succeeds_with_the_key_and_gives_the_plain_bundles_outputs_bit_for_bit(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path, fmt: ModelFormat, runtime: Runtime
) -> None:
    directory = _copy(shelf_bundles, fmt, tmp_path / "bundle")
    plain_files = {name: (directory / name).read_bytes() for name in Bundle.open(directory).model_files}
    encrypted = encrypt_bundle(directory, KEY)
    assert encrypted.manifest.encryption is not None
    assert set(encrypted.manifest.encryption.files) == set(plain_files)
    for name, plain in plain_files.items():
        on_disk = (directory / name).read_bytes()
        assert on_disk.startswith(b"SHELFENC") and plain[:64] not in on_disk
        assert PLAINTEXT_MARKERS[fmt] not in on_disk or PLAINTEXT_MARKERS[fmt] not in plain
    feed = _feed(encrypted)
    with (
        load(shelf_bundles[fmt].path, runtime=runtime) as plain_model,
        load(directory, runtime=runtime, model_key=KEY) as model,
    ):
        expected, got = plain_model.run(feed), model.run(feed)
        details = model.info.details
    assert details["encrypted"] is True and details["encryption_key_id"] == key_id(KEY)
    assert details["decrypt_ms"] >= 0
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


@pytest.mark.parametrize(("fmt", "runtime"), CASES)
def test_adapter_describe_and_bare_step_succeed_from_decrypted_bytes(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path, fmt: ModelFormat, runtime: Runtime
) -> None:
    directory = _copy(shelf_bundles, fmt, tmp_path / "bundle")
    bundle = encrypt_bundle(directory, KEY)
    model_bytes = {directory / name: data for name, data in decrypt_model(bundle, KEY).items()}
    module = adapter_module(runtime)
    assert module.describe(bundle.model_path, model_bytes=model_bytes) == module.describe(shelf_bundles[fmt].model_path)
    feed = _feed(bundle)
    with load(directory, runtime=runtime, model_key=KEY) as model:
        if runtime is Runtime.OPENVINO and fmt is ModelFormat.ONNX:
            return  # the bare loop feeds input 0 by index: covered by the IR case
        _, step = module.bare_step(model.session, bundle.model_path, feed[bundle.manifest.inputs[0].name])
        bare = step(feed[bundle.manifest.inputs[0].name])
        np.testing.assert_array_equal(bare[0], model.run(feed)[bundle.manifest.outputs[0].name])


def test_load_fails_with_no_key_saying_which_key_and_how_to_set_it(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path
) -> None:
    directory = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "bundle")
    encrypt_bundle(directory, KEY)
    with pytest.raises(DecryptionError, match=rf"encrypted \(key id {key_id(KEY)}\).*{KEY_FILE_ENV}"):
        load(directory, runtime="litert")


def test_load_fails_with_the_wrong_key(shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path) -> None:
    directory = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "bundle")
    encrypt_bundle(directory, KEY)
    with pytest.raises(DecryptionError, match=r"wrong key"):
        load(directory, runtime="litert", model_key=OTHER_KEY)


def test_load_succeeds_with_the_key_from_the_environment(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _copy(shelf_bundles, ModelFormat.ONNX, tmp_path / "bundle")
    written = generate_model_key(tmp_path / "keys" / "model.key")
    encrypt_bundle(directory, written.path)
    monkeypatch.setenv(KEY_FILE_ENV, str(written.path))
    with load(directory, runtime="onnxruntime") as model:
        assert model.info.details["encryption_key_id"] == written.key_id
    monkeypatch.delenv(KEY_FILE_ENV)
    monkeypatch.setenv(KEY_ENV, read_model_key(written.path).hex())
    with load(directory, runtime="onnxruntime") as model:
        assert model.info.details["encrypted"] is True


def test_load_fails_with_ciphertexts_swapped_between_files_even_with_hashes_updated(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path
) -> None:
    directory = _copy(shelf_bundles, ModelFormat.OPENVINO, tmp_path / "bundle")
    bundle = encrypt_bundle(directory, KEY)
    xml, weights = (directory / name for name in bundle.model_files)
    xml_data, weights_data = xml.read_bytes(), weights.read_bytes()
    xml.write_bytes(weights_data)
    weights.write_bytes(xml_data)
    write_bundle(directory, bundle.manifest)  # the hashes now match the swapped files
    with pytest.raises(DecryptionError, match=r"does not decrypt 'model.xml': wrong key or tampered"):
        load(directory, runtime="openvino", model_key=KEY)


def test_load_fails_with_a_ciphertext_moved_from_another_bundle_under_the_same_key(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path
) -> None:
    first = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "first")
    second = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "second")
    _rename(second, "another-model")
    encrypt_bundle(first, KEY)
    bundle = encrypt_bundle(second, KEY)
    model_file = bundle.manifest.model_file
    shutil.copyfile(first / model_file, second / model_file)
    write_bundle(second, Manifest.load(second / MANIFEST_NAME))
    with pytest.raises(DecryptionError, match=rf"does not decrypt '{model_file}'"):
        load(second, runtime="litert", model_key=KEY)


@pytest.mark.parametrize(("fmt", "runtime"), CASES)
def test_load_succeeds_without_writing_anything_to_disk(
    shelf_bundles: dict[ModelFormat, Bundle],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: ModelFormat,
    runtime: Runtime,
) -> None:
    directory = _copy(shelf_bundles, fmt, tmp_path / "bundle")
    bundle = encrypt_bundle(directory, KEY)
    watched = tmp_path / "tmp"
    watched.mkdir()
    monkeypatch.setenv("TMPDIR", str(watched))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.chdir(watched)
    before = _snapshot(directory, watched)
    with load(directory, runtime=runtime, model_key=KEY) as model:
        model.run(_feed(bundle))
    # A model cache would write the compiled (plaintext) model: dropped for a model from memory.
    options = SessionOptions(runtime_options=RuntimeOptions(cache_dir=str(watched / "cache")))
    model_bytes = {directory / name: data for name, data in decrypt_model(bundle, KEY).items()}
    manifest = bundle.manifest
    with open_session(runtime, bundle.model_path, manifest.inputs, manifest.outputs, options, model_bytes) as s:
        s.run(_feed(bundle))
        assert s.info.details.get("cache_dir") is None
    assert _snapshot(directory, watched) == before
    for name in bundle.model_files:
        assert PLAINTEXT_MARKERS[fmt] not in (directory / name).read_bytes()[:4096] or fmt is ModelFormat.ONNX


def test_encrypt_then_sign_then_load_succeeds_under_require_signature(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("model_signing")
    from sdk.errors import SignatureError
    from sdk.signing import generate_keypair, sign_bundle

    directory = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "bundle")
    encrypt_bundle(directory, KEY)
    pair = generate_keypair(tmp_path / "keys", "release")
    sign_bundle(directory, pair.private_key)
    monkeypatch.setenv("SHELFEDGE_REQUIRE_SIGNATURE", "1")
    monkeypatch.setenv("SHELFEDGE_TRUSTED_KEYS", str(pair.public_key))
    with load(directory, runtime="litert", model_key=KEY) as model:
        assert model.info.details["signature_verified"] is True and model.info.details["encrypted"] is True
    # Encrypting again would remove the signature (it no longer holds): refused as unsigned.
    directory_two = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "bundle-two")
    sign_bundle(directory_two, pair.private_key)
    encrypt_bundle(directory_two, KEY)
    with pytest.raises(SignatureError):
        load(directory_two, runtime="litert", model_key=KEY)


def test_encrypt_fails_with_reference_formats_and_already_encrypted_bundles(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path
) -> None:
    keras_dir = _copy(shelf_bundles, ModelFormat.KERAS, tmp_path / "keras")
    with pytest.raises(ConfigError, match=r"server-side reference.*tflite, openvino or onnx"):
        encrypt_bundle(keras_dir, KEY)
    directory = _copy(shelf_bundles, ModelFormat.ONNX, tmp_path / "onnx")
    encrypt_bundle(directory, KEY)
    with pytest.raises(BundleError, match=r"already encrypted"):
        encrypt_bundle(directory, KEY)
    with pytest.raises(ConfigError, match=r"not a model key"):
        encrypt_bundle(_copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "t"), b"short")


def test_manifest_fails_with_an_encryption_section_that_breaks_the_schema(
    shelf_bundles: dict[ModelFormat, Bundle], tmp_path: Path
) -> None:
    directory = _copy(shelf_bundles, ModelFormat.TFLITE, tmp_path / "bundle")
    bundle = encrypt_bundle(directory, KEY)
    data = json.loads((directory / MANIFEST_NAME).read_text())
    assert Manifest.from_dict(data) == bundle.manifest  # round trip
    for change, message in (
        ({"algorithm": "AES-128-CBC"}, r"not supported"),
        ({"key_id": "XYZ"}, r"16 lowercase hex"),
        ({"files": ["unlisted.bin"]}, r"'unlisted.bin' is not listed in 'files'"),
        ({"extra": 1}, r"extra"),
    ):
        broken = json.loads(json.dumps(data))
        broken["encryption"].update(change)
        with pytest.raises(ManifestError, match=message):
            Manifest.from_dict(broken)


def test_model_key_file_succeeds_with_mode_0600_and_never_overwrites(tmp_path: Path) -> None:
    written = generate_model_key(tmp_path / "keys" / "model.key")
    assert stat.S_IMODE(os.stat(written.path).st_mode) == 0o600
    key = read_model_key(written.path)
    assert len(key) == 32 and key_id(key) == written.key_id
    with pytest.raises(ConfigError, match=r"never overwritten"):
        generate_model_key(written.path)
    import base64

    assert parse_model_key(base64.b64encode(key).decode(), "test") == key
    assert parse_model_key(key.hex().upper(), "test") == key
    with pytest.raises(ConfigError, match=r"not a model key") as error:
        parse_model_key("00" * 31, "$SHELFEDGE_MODEL_KEY")
    assert "00" * 31 not in str(error.value)  # the message never echoes key material
