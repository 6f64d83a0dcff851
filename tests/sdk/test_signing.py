"""Signed bundles and the audit log (issue 10, Deliver 3 + 5).

A tiny hand-built ONNX bundle (8x8 image -> mean -> 3 logits, as in test_integrity.py) is
signed with a key made by :func:`generate_keypair`, then broken the ways an attacker would:
one byte of any file flipped, a file swapped with its hash updated in the manifest, a file
added, a signature by another key, a signature that leaves a file out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

import cli
from sdk.audit import AUDIT_LOG_ENV, append_audit
from sdk.bundle import SIGNATURE_NAME, Bundle, sha256_file, write_bundle
from sdk.enums import Layout, ModelFormat, OutputKind, Precision, ResizeMode, Task
from sdk.errors import ConfigError, ProfileError, ShelfedgeError, SignatureError
from sdk.loading import load
from sdk.manifest import MANIFEST_NAME, Manifest, Preprocessing, Provenance
from sdk.profiles import HardwareProfile, load_profile, load_profile_file
from sdk.signing import KeyPair, generate_keypair, sign_bundle, verify_bundle
from sdk.tensors import TensorSpec
from sdk.trust import REQUIRE_SIGNATURE_ENV, TRUSTED_KEYS_ENV

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("model_signing")
SIDE = 8


def _write_bundle(directory: Path, scale: float = 0.1) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(9, dtype=np.float32).reshape(3, 3) * scale
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    directory.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save_model(model, str(directory / "model.onnx"))
    (directory / "labels.txt").write_text("apple\nbanana\nmilk\n")
    manifest = Manifest(
        name="tiny-signed",
        task=Task.IMAGE_CLASSIFICATION,
        format=ModelFormat.ONNX,
        precision=Precision.FP32,
        model_file="model.onnx",
        inputs=(TensorSpec(name="image", shape=(-1, SIDE, SIDE, 3), dtype="float32", layout=Layout.NHWC),),
        outputs=(TensorSpec(name="logits", shape=(-1, 3), dtype="float32", layout=Layout.NC),),
        output_kind=OutputKind.LOGITS,
        preprocessing=Preprocessing(
            size=(SIDE, SIDE), resize_mode=ResizeMode.STRETCH, mean=(127.5,) * 3, std=(127.5,) * 3
        ),
        labels_file="labels.txt",
        provenance=Provenance(source="hand-built", source_sha256="0" * 64, created_utc="2026-12-02T00:00:00Z"),
        files={"model.onnx": "", "labels.txt": ""},
    )
    write_bundle(directory, manifest)
    return directory


@pytest.fixture(autouse=True)
def _no_trust_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (TRUSTED_KEYS_ENV, REQUIRE_SIGNATURE_ENV, AUDIT_LOG_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_keypair(tmp_path / "keys", "release")


@pytest.fixture
def signed(tmp_path: Path, keys: KeyPair) -> Path:
    bundle = _write_bundle(tmp_path / "bundle")
    sign_bundle(bundle, keys.private_key)
    return bundle


def _strict(*trusted: Path, audit_log: Path | None = None) -> HardwareProfile:
    base = load_profile("onnxruntime-cpu")
    return dataclasses.replace(base, require_signature=True, trusted_keys=trusted, audit_log=audit_log)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_sign_and_verify_succeed_with_a_generated_keypair(signed: Path, keys: KeyPair) -> None:
    assert stat.S_IMODE(os.stat(keys.private_key).st_mode) == 0o600
    assert "PRIVATE KEY" in keys.private_key.read_text() and "PUBLIC KEY" in keys.public_key.read_text()
    status = verify_bundle(signed, [keys.public_key])
    assert (status.signed, status.valid, status.key_id, status.reason) == (True, True, keys.key_id, "")
    current = signed.parent / "current"
    current.symlink_to(signed.name)  # a deployment link to the bundle (not inside it) is fine
    assert verify_bundle(current, [keys.public_key]).valid
    signature = json.loads((signed / SIGNATURE_NAME).read_text())
    assert signature["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"  # the Sigstore bundle format
    with load(signed, _strict(keys.public_key)) as model:
        details = model.info.details
        assert (details["signed"], details["signature_verified"], details["signature_key_id"]) == (
            True,
            True,
            keys.key_id,
        )
        assert model.trust is not None and model.trust.valid
        assert model.run({"image": np.ones((1, SIDE, SIDE, 3), np.float32)})["logits"].shape == (1, 3)


def test_load_fails_with_any_byte_of_any_file_flipped_under_require_signature(signed: Path, keys: KeyPair) -> None:
    files = sorted(p.relative_to(signed).as_posix() for p in signed.rglob("*") if p.is_file())
    assert {MANIFEST_NAME, SIGNATURE_NAME, "model.onnx", "labels.txt"} <= set(files)
    for name in files:
        size = (signed / name).stat().st_size
        for offset in sorted({0, size // 2, size - 1}):
            original = (signed / name).read_bytes()
            _flip(signed / name, offset)
            try:
                with pytest.raises(ShelfedgeError):
                    load(signed, _strict(keys.public_key)).close()
                # The signature alone catches it too, whatever the manifest's hashes say.
                assert not verify_bundle(signed, [keys.public_key]).valid, (name, offset)
            finally:
                (signed / name).write_bytes(original)
    assert verify_bundle(signed, [keys.public_key]).valid  # every byte restored: valid again


def test_load_fails_with_a_file_swapped_and_its_hash_updated_in_the_manifest(
    signed: Path, keys: KeyPair, tmp_path: Path
) -> None:
    other = _write_bundle(tmp_path / "other", scale=-0.5)  # a model that answers differently
    (signed / "model.onnx").write_bytes((other / "model.onnx").read_bytes())
    data = json.loads((signed / MANIFEST_NAME).read_text())
    data["files"]["model.onnx"] = sha256_file(signed / "model.onnx")
    (signed / MANIFEST_NAME).write_text(json.dumps(data))
    Bundle.open(signed)  # the hashes agree: only the signature tells
    status = verify_bundle(signed, [keys.public_key])
    assert status.signed and not status.valid and "changed: manifest.json, model.onnx" in status.reason
    with pytest.raises(SignatureError, match=r"refused.*does not match"):
        load(signed, _strict(keys.public_key))
    with load(signed, "onnxruntime-cpu") as model:  # not required: loads, and says so
        assert model.info.details["signed"] is True and model.info.details["signature_verified"] is False


def test_load_fails_with_a_file_added_after_signing_under_require_signature(signed: Path, keys: KeyPair) -> None:
    (signed / "extra.bin").write_bytes(b"not signed")
    with pytest.raises(SignatureError, match="added: extra.bin"):
        load(signed, _strict(keys.public_key))


def test_load_fails_with_a_bundle_signed_by_an_untrusted_key(signed: Path, keys: KeyPair, tmp_path: Path) -> None:
    stranger = generate_keypair(tmp_path / "stranger", "stranger")
    status = verify_bundle(signed, [stranger.public_key])
    assert status.signed and not status.valid and status.key_id == keys.key_id
    with pytest.raises(SignatureError, match=rf"signed by key {keys.key_id[:16]}.*not trusted"):
        load(signed, _strict(stranger.public_key))
    with load(signed, _strict(stranger.public_key, keys.public_key)) as model:  # either key may sign
        assert model.info.details["signature_key_id"] == keys.key_id


def test_load_succeeds_unsigned_without_require_signature(tmp_path: Path, keys: KeyPair) -> None:
    bundle = _write_bundle(tmp_path / "bundle")
    with load(bundle) as model:
        assert model.info.details["signed"] is False and model.info.details["signature_verified"] is False
        assert model.info.to_dict()["details"]["signed"] is False  # in what-ran-where
    with pytest.raises(SignatureError, match="not signed"):
        load(bundle, _strict(keys.public_key))


def test_load_fails_with_require_signature_from_the_environment(
    tmp_path: Path, keys: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _write_bundle(tmp_path / "bundle")
    monkeypatch.setenv(REQUIRE_SIGNATURE_ENV, "1")
    with pytest.raises(SignatureError, match="no trusted public key"):
        load(bundle)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys.public_key))
    with pytest.raises(SignatureError, match="not signed"):
        load(bundle)
    sign_bundle(bundle, keys.private_key)
    load(bundle).close()
    monkeypatch.setenv(REQUIRE_SIGNATURE_ENV, "maybe")
    with pytest.raises(ConfigError, match=REQUIRE_SIGNATURE_ENV):
        load(bundle)


def test_sign_fails_with_a_private_key_inside_the_bundle(tmp_path: Path, keys: KeyPair) -> None:
    bundle = _write_bundle(tmp_path / "bundle")
    inside = bundle / "keys" / "release.pem"
    inside.parent.mkdir()
    inside.write_bytes(keys.private_key.read_bytes())
    with pytest.raises(SignatureError, match="inside the bundle"):
        sign_bundle(bundle, inside)
    with pytest.raises(SignatureError, match=r"'keys/release.pem' holds a PEM private key"):
        sign_bundle(bundle, keys.private_key)  # the key outside, a copy left inside
    assert not (bundle / SIGNATURE_NAME).exists()
    with pytest.raises(ConfigError, match="bundle directory"):
        generate_keypair(bundle, "oops")


def test_sign_fails_with_a_tampered_bundle_and_a_wrong_key_file(signed: Path, keys: KeyPair) -> None:
    with pytest.raises(ConfigError, match="not a PEM private key"):
        sign_bundle(signed, keys.public_key)
    _flip(signed / "labels.txt", 0)
    with pytest.raises(ShelfedgeError, match="sha256"):
        sign_bundle(signed, keys.private_key)  # never bless a tampered bundle


def test_verify_fails_with_a_signature_that_leaves_a_file_out(tmp_path: Path, keys: KeyPair) -> None:
    import model_signing.hashing
    import model_signing.signing

    bundle = _write_bundle(tmp_path / "bundle")
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME, "labels.txt"])
    config = model_signing.signing.Config().set_hashing_config(hashing)
    config.use_elliptic_key_signer(private_key=keys.private_key).sign(bundle, bundle / SIGNATURE_NAME)
    status = verify_bundle(bundle, [keys.public_key])
    assert not status.valid and "labels.txt" in status.reason


def test_write_bundle_removes_a_stale_signature_and_a_listed_signature_is_refused(signed: Path) -> None:
    manifest = Bundle.open(signed).manifest
    write_bundle(signed, manifest)
    assert not (signed / SIGNATURE_NAME).exists()
    (signed / SIGNATURE_NAME).write_text("{}")
    write_bundle(signed, manifest.with_changes(files={**manifest.files}))
    (signed / SIGNATURE_NAME).write_text("{}")
    data = json.loads((signed / MANIFEST_NAME).read_text())
    data["files"][SIGNATURE_NAME] = sha256_file(signed / SIGNATURE_NAME)
    (signed / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ShelfedgeError, match="signs the manifest"):
        Bundle.open(signed)


def test_audit_log_records_each_load(signed: Path, keys: KeyPair, tmp_path: Path) -> None:
    log = tmp_path / "audit" / "loads.jsonl"
    log.parent.mkdir()
    load(signed, _strict(keys.public_key, audit_log=log)).close()
    (signed / "labels.txt").write_text("apple\nbanana\nbread\n")
    with pytest.raises(ShelfedgeError):
        load(signed, _strict(keys.public_key, audit_log=log))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["outcome"] for line in lines] == ["loaded", "refused"]
    ok, refused = lines
    assert ok["event"] == "load" and ok["bundle"] == str(signed.absolute()) and ok["bundle_name"] == "tiny-signed"
    assert ok["manifest_sha256"] == sha256_file(signed / MANIFEST_NAME)
    assert (ok["signed"], ok["signature_valid"], ok["signature_key_id"]) == (True, True, keys.key_id)
    assert (ok["runtime"], ok["profile"], ok["reason"]) == ("onnxruntime", "onnxruntime-cpu", None)
    assert ok["device"] and ok["time"].endswith("Z") and ok["pid"] == os.getpid()
    assert refused["error"] == "BundleError" and "labels.txt" in refused["reason"]
    assert refused["bundle_name"] == "tiny-signed" and refused["manifest_sha256"] == ok["manifest_sha256"]


def test_audit_log_records_a_signature_refusal_from_the_environment(
    signed: Path, keys: KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "env-audit.jsonl"
    monkeypatch.setenv(AUDIT_LOG_ENV, str(log))
    stranger = generate_keypair(tmp_path / "stranger", "stranger")
    with pytest.raises(SignatureError):
        load(signed, _strict(stranger.public_key, audit_log=tmp_path / "ignored.jsonl"))
    (line,) = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["outcome"], line["error"], line["signed"], line["signature_valid"]) == (
        "refused",
        "SignatureError",
        True,
        False,
    )
    assert line["signature_key_id"] == keys.key_id and "not trusted" in line["reason"]
    assert not (tmp_path / "ignored.jsonl").exists()  # the environment overrides the profile


def test_audit_log_unwritable_warns_once_and_loads(
    signed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "no-such-dir" / "audit.jsonl"
    profile = dataclasses.replace(load_profile("onnxruntime-cpu"), audit_log=log)
    with caplog.at_level(logging.WARNING, logger="sdk.audit"):
        for _ in range(3):
            load(signed, profile).close()
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "cannot write the audit log" in caplog.records[0].getMessage()


def test_audit_log_keeps_every_line_whole_from_many_threads(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    record = {"event": "load", "reason": "x" * 1500}

    def writer(index: int) -> None:
        for n in range(50):
            assert append_audit(log, {**record, "thread": index, "n": n})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((line["thread"], line["n"]) for line in lines) == [(i, n) for i in range(8) for n in range(50)]


def test_profile_reads_trust_fields_relative_to_the_file(tmp_path: Path, keys: KeyPair) -> None:
    text = (Path(load_profile("onnxruntime-cpu").source)).read_text()
    path = tmp_path / "profiles" / "onnxruntime-cpu.yaml"
    path.parent.mkdir()
    path.write_text(text + "require_signature: true\ntrusted_keys: [../keys/release.pub]\naudit_log: logs/a.jsonl\n")
    profile = load_profile_file(path)
    assert profile.require_signature and profile.trusted_keys == (keys.public_key.absolute(),)
    assert profile.audit_log == (path.parent / "logs" / "a.jsonl").absolute()
    path.write_text(text + "require_signature: yes please\n")
    with pytest.raises(ProfileError, match="require_signature"):
        load_profile_file(path)


def test_cli_keygen_sign_verify_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUDIT_LOG_ENV, str(tmp_path / "audit.jsonl"))
    bundle = _write_bundle(tmp_path / "bundle")
    assert cli.main(["keygen", "--out", str(tmp_path / "k"), "--name", "ci"]) == 0
    public, private = tmp_path / "k" / "ci.pub", tmp_path / "k" / "ci.pem"
    assert cli.main(["verify", str(bundle), "--trust", str(public)]) == 1
    assert "not signed" in capsys.readouterr().out
    assert cli.main(["sign", str(bundle), "--key", str(private)]) == 0
    assert "signed the 3 files" in capsys.readouterr().out
    assert cli.main(["verify", str(bundle), "--trust", str(public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    _flip(bundle / MANIFEST_NAME, 10)
    assert cli.main(["verify", str(bundle), "--trust", str(public)]) == 1
    assert "NOT valid" in capsys.readouterr().out
    assert cli.main(["verify", str(bundle)]) == 2  # no trusted key given: a usage error
    assert cli.main(["keygen", "--out", str(tmp_path / "k"), "--name", "ci"]) == 2  # never overwrites
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["outcome"]) for e in events] == [
        ("verify", "invalid"),
        ("sign", "signed"),
        ("verify", "valid"),
        ("verify", "invalid"),
    ]
