"""``shelfedge keygen --out DIR [--name N] [--model-key]``: a signing key pair, or a model encryption key.

Without ``--model-key``: a new ECDSA P-256 key pair for signing bundles (``N.pem`` private, ``N.pub``
public). With it: a new 32-byte AES-256 key for encrypting model files (``N.key``, hex, mode 0600).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import emit
from sdk.encryption import KEY_FILE_ENV, generate_model_key
from sdk.errors import ConfigError
from sdk.signing import generate_keypair

_SIGNING_NAME, _MODEL_KEY_NAME = "shelfedge-signing", "shelfedge-model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the key files (not a bundle; created if missing)")
    parser.add_argument(
        "--name",
        default=None,
        help=f"file name stem: NAME.pem (private) and NAME.pub (public), or NAME.key with --model-key "
        f"(default {_SIGNING_NAME}, or {_MODEL_KEY_NAME} with --model-key)",
    )
    parser.add_argument(
        "--model-key",
        action="store_true",
        help="make an AES-256 key for encrypting model files (shelfedge encrypt) instead of a signing key pair",
    )
    parser.epilog = (
        "examples: shelfedge keygen --out ~/.shelfedge/keys --name store-release; "
        "shelfedge keygen --model-key --out ~/.shelfedge/keys"
    )


def run(args: argparse.Namespace) -> int:
    if args.model_key:
        return _model_key(args)
    pair = generate_keypair(args.out, args.name or _SIGNING_NAME)
    payload = {"private_key": str(pair.private_key), "public_key": str(pair.public_key), "key_id": pair.key_id}
    emit(
        args,
        payload,
        lambda: "\n".join(
            [
                f"private key {pair.private_key} (mode 0600: keep it secret, never inside a bundle)",
                f"public key  {pair.public_key} (give it to devices: --trust, trusted_keys or $SHELFEDGE_TRUSTED_KEYS)",
                f"key id      {pair.key_id}",
                f"sign with:  shelfedge sign BUNDLE --key {pair.private_key}",
            ]
        ),
    )
    return 0


def _model_key(args: argparse.Namespace) -> int:
    name = args.name or _MODEL_KEY_NAME
    if Path(name).name != name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name (no directories, not hidden)")
    written = generate_model_key(Path(args.out) / f"{name}.key")
    emit(
        args,
        {"model_key": str(written.path), "key_id": written.key_id},
        lambda: "\n".join(
            [
                f"model key   {written.path} (mode 0600: keep it secret; give it to the devices that run the model)",
                f"key id      {written.key_id}",
                f"encrypt:    shelfedge encrypt BUNDLE --key-file {written.path}",
                f"on devices: {KEY_FILE_ENV}={written.path}",
            ]
        ),
    )
    return 0
