"""Saved reference outputs: round trip in a separate process, tamper detection, input proofs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sdk.errors import BundleError, ConfigError, InputError, ManifestError, ParityError
from sdk.manifest import Preprocessing
from sdk.qa.reference import REFERENCE_JSON, REFERENCE_NPZ, load_reference, save_reference, tensor_sha256

REPO = Path(__file__).resolve().parents[2]
IDS = ["apple/1.jpg", "apple/2.jpg", "milk/1.jpg", "milk/2.jpg"]
PRE = Preprocessing(size=(8, 8), mean=(127.5,) * 3, std=(127.5,) * 3)
INFO = {"runtime": "tensorflow", "device": "CPU", "model_sha256": "ab" * 32}


def _arrays() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    outputs = {
        "StatefulPartitionedCall:0": rng.standard_normal((4, 5)).astype(np.float32),
        "embedding": rng.standard_normal((4, 3)).astype(np.float16),
    }
    return inputs, outputs, np.array([0, 0, 3, 4])


def _save(directory: Path, **changes: object) -> Path:
    inputs, outputs, labels = _arrays()
    kwargs: dict = {
        "inputs": inputs,
        "outputs": outputs,
        "input_ids": IDS,
        "labels": labels,
        "info": INFO,
        "preprocessing": PRE,
    }
    kwargs.update(changes)
    return save_reference(directory, **kwargs)


def test_reference_succeeds_with_round_trip_in_separate_process(tmp_path: Path) -> None:
    inputs, outputs, labels = _arrays()
    _save(tmp_path / "ref")
    # Expected values travel as plain .npy files, independent of the code under test.
    np.save(tmp_path / "inputs.npy", inputs)
    for i, value in enumerate(outputs.values()):
        np.save(tmp_path / f"out{i}.npy", value)
    np.save(tmp_path / "labels.npy", labels)
    script = textwrap.dedent(
        f"""
        import json, numpy as np
        from pathlib import Path
        from sdk.qa.reference import load_reference, tensor_sha256
        base = Path({str(tmp_path)!r})
        ref = load_reference(base / "ref")
        for i, (name, value) in enumerate(ref.outputs.items()):
            expected = np.load(base / f"out{{i}}.npy")
            assert value.dtype == expected.dtype and np.array_equal(value, expected), name
        assert np.array_equal(ref.labels, np.load(base / "labels.npy"))
        assert ref.inputs is None
        ref.check_inputs(np.load(base / "inputs.npy"), "other process", input_ids={IDS!r})
        print(json.dumps({{
            "ids": list(ref.input_ids), "sha256": list(ref.input_sha256), "outputs": list(ref.outputs),
            "output_sha256": [tensor_sha256(v) for v in ref.outputs.values()],
            "preprocessing": ref.preprocessing.to_dict(), "info": dict(ref.info),
        }}))
        """
    )
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ids"] == IDS
    assert seen["sha256"] == [tensor_sha256(x) for x in inputs]
    assert seen["outputs"] == list(outputs)
    assert seen["output_sha256"] == [tensor_sha256(v) for v in outputs.values()]
    assert seen["preprocessing"] == PRE.to_dict()
    assert seen["info"]["device"] == "CPU"
    assert "numpy" in seen["info"]["versions"] and "cpu" in seen["info"]["host"]


def test_load_reference_succeeds_with_saved_inputs(tmp_path: Path) -> None:
    inputs, _, _ = _arrays()
    ref = load_reference(_save(tmp_path, save_inputs=True))
    assert ref.inputs is not None and np.array_equal(ref.inputs, inputs)
    assert not ref.inputs.flags.writeable
    assert ref.output("embedding").shape == (4, 3)
    assert ref.input_shape == (8, 8, 3) and ref.input_dtype == "float32" and ref.num_samples == 4


def test_load_reference_fails_with_tampered_npz(tmp_path: Path) -> None:
    _, outputs, labels = _arrays()
    ref_dir = _save(tmp_path)
    # A valid npz with one value changed: only the recorded hash can tell.
    outputs["StatefulPartitionedCall:0"][0, 0] += 1.0
    np.savez_compressed(ref_dir / REFERENCE_NPZ, output_0=outputs["StatefulPartitionedCall:0"],
                        output_1=outputs["embedding"], labels=labels.astype(np.int64))  # fmt: skip
    with pytest.raises(BundleError, match=r"changed or corrupted.*save the reference again"):
        load_reference(ref_dir)


def test_load_reference_fails_with_unknown_key(tmp_path: Path) -> None:
    ref_dir = _save(tmp_path)
    document = json.loads((ref_dir / REFERENCE_JSON).read_text())
    document["inputs"]["colour"] = "rgb"
    (ref_dir / REFERENCE_JSON).write_text(json.dumps(document))
    with pytest.raises(ManifestError, match=r"inputs: unknown key\(s\) 'colour'"):
        load_reference(ref_dir)


def test_load_reference_fails_with_unsupported_schema_version(tmp_path: Path) -> None:
    ref_dir = _save(tmp_path)
    document = json.loads((ref_dir / REFERENCE_JSON).read_text())
    document["schema_version"] = 99
    (ref_dir / REFERENCE_JSON).write_text(json.dumps(document))
    with pytest.raises(ManifestError, match="schema_version 99"):
        load_reference(ref_dir)


def test_load_reference_fails_with_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such reference directory"):
        load_reference(tmp_path / "nowhere")


def test_check_inputs_fails_with_changed_input_tensor(tmp_path: Path) -> None:
    inputs, _, _ = _arrays()
    ref = load_reference(_save(tmp_path))
    ref.check_inputs(inputs, "same inputs")
    changed = inputs.copy()
    changed[2, 4, 4, 1] += 1e-3
    with pytest.raises(ParityError, match=r"input 2 \('milk/1.jpg'\).*1 of 4.*preprocessing differ"):
        ref.check_inputs(changed, "bundle int8")


def test_check_inputs_fails_with_other_dtype_or_count(tmp_path: Path) -> None:
    inputs, _, _ = _arrays()
    ref = load_reference(_save(tmp_path))
    with pytest.raises(ParityError, match="float16"):
        ref.check_inputs(inputs.astype(np.float16), "fp16 inputs")
    with pytest.raises(ParityError, match="3 inputs given, the reference has 4"):
        ref.check_inputs(inputs[:3], "fewer inputs")
    with pytest.raises(ParityError, match=r"input 1 is 'banana/1\.jpg'"):
        ref.check_inputs(inputs, "other ids", input_ids=[IDS[0], "banana/1.jpg", *IDS[2:]])


def test_check_preprocessing_fails_with_other_mean(tmp_path: Path) -> None:
    ref = load_reference(_save(tmp_path))
    other = Preprocessing(size=(8, 8), mean=(0.0,) * 3, std=(127.5,) * 3)
    with pytest.raises(ParityError, match="mean"):
        ref.check_preprocessing(other, "broken bundle")


def test_save_reference_fails_with_output_of_other_batch(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="3 samples"):
        _save(tmp_path, outputs={"logits": np.zeros((3, 5), np.float32)})


def test_save_reference_fails_with_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"'apple/1\.jpg' appears more than once"):
        _save(tmp_path, input_ids=[IDS[0], IDS[0], IDS[2], IDS[3]])


def test_save_reference_fails_with_info_without_device(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device"):
        _save(tmp_path, info={"runtime": "tensorflow"})


def test_save_reference_fails_with_existing_reference(tmp_path: Path) -> None:
    _save(tmp_path)
    with pytest.raises(ConfigError, match="already holds a reference"):
        _save(tmp_path)
    assert load_reference(_save(tmp_path, overwrite=True)).num_samples == 4


def test_tensor_sha256_succeeds_with_layout_independent_dtype_dependent_hash() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert tensor_sha256(x.T) == tensor_sha256(np.ascontiguousarray(x.T))
    assert tensor_sha256(x) == tensor_sha256(x.astype(">f4"))
    assert tensor_sha256(x) != tensor_sha256(x.reshape(4, 3))
    assert tensor_sha256(x.view(np.int32)) != tensor_sha256(x)
