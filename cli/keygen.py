"""``shelfedge keygen --out DIR [--name N]``: a new ECDSA P-256 key pair for signing bundles."""

from __future__ import annotations

import argparse

from cli import emit
from sdk.signing import generate_keypair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory for the key files (not a bundle; created if missing)")
    parser.add_argument(
        "--name", default="shelfedge-signing", help="file name stem: NAME.pem (private) and NAME.pub (public)"
    )
    parser.epilog = "example: shelfedge keygen --out ~/.shelfedge/keys --name store-release"


def run(args: argparse.Namespace) -> int:
    pair = generate_keypair(args.out, args.name)
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
