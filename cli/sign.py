"""``shelfedge sign BUNDLE --key PRIVATE.pem``: sign every file of a bundle (OpenSSF Model Signing)."""

from __future__ import annotations

import argparse

from cli import emit
from sdk.audit import append_audit, audit_log_path, bundle_event
from sdk.errors import ShelfedgeError
from sdk.signing import SignatureStatus, sign_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory (checked first: a tampered bundle is not signed)")
    parser.add_argument("--key", required=True, help="PEM ECDSA private key (shelfedge keygen), outside the bundle")
    parser.epilog = "example: shelfedge sign out/quickstart/bundles/shelf_cnn-tflite-fp32 --key keys/release.pem"


def run(args: argparse.Namespace) -> int:
    try:
        signed = sign_bundle(args.bundle, args.key)
    except ShelfedgeError as e:
        append_audit(audit_log_path(None), bundle_event("sign", "refused", args.bundle, error=e))
        raise
    status = SignatureStatus(signed=True, valid=True, key_id=signed.key_id)
    event = bundle_event("sign", "signed", args.bundle, bundle_name=signed.bundle_name, status=status)
    append_audit(audit_log_path(None), event)
    payload = {"signature": str(signed.signature), "key_id": signed.key_id, "files": list(signed.files)}
    emit(
        args,
        payload,
        f"signed the {len(signed.files)} files of {args.bundle} (manifest.json included) with key "
        f"{signed.key_id[:16]}… -> {signed.signature}",
    )
    return 0
