"""``shelfedge encrypt BUNDLE --key-file K``: encrypt a bundle's model files in place (AES-256-GCM).

The key comes from ``--key-file``, else ``$SHELFEDGE_MODEL_KEY`` (hex or base64), else the file
``$SHELFEDGE_MODEL_KEY_FILE``; make one with ``shelfedge keygen --model-key``. Sign afterwards
(``shelfedge sign``): a signature covers the files as they are, ciphertext included.
"""

from __future__ import annotations

import argparse

from cli import emit
from sdk.encryption import KEY_ENV, KEY_FILE_ENV, encrypt_bundle, resolve_model_key
from sdk.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory (tflite, openvino or self-contained onnx); changed in place")
    parser.add_argument(
        "--key-file",
        default=None,
        metavar="K",
        help=f"the model key file (shelfedge keygen --model-key); default: ${KEY_ENV}, else ${KEY_FILE_ENV}",
    )
    parser.epilog = (
        "example: shelfedge keygen --model-key --out keys && "
        "shelfedge encrypt out/quickstart/bundles/shelf_cnn-tflite-fp32 --key-file keys/shelfedge-model.key"
    )


def run(args: argparse.Namespace) -> int:
    key = resolve_model_key(args.key_file)
    if key is None:
        raise ConfigError(f"no model key: pass --key-file K, or set ${KEY_FILE_ENV} or ${KEY_ENV}")
    bundle = encrypt_bundle(args.bundle, key)
    spec = bundle.manifest.encryption
    assert spec is not None  # encrypt_bundle wrote it
    payload = {"bundle": str(bundle.path), "files": list(spec.files), "key_id": spec.key_id}
    emit(
        args,
        payload,
        f"encrypted {', '.join(spec.files)} of {bundle.path} (AES-256-GCM, key id {spec.key_id}); "
        f"sign it now if devices require signatures: shelfedge sign {bundle.path} --key PRIVATE.pem",
    )
    return 0
