"""``shelfedge verify BUNDLE --trust PUB.pem``: is the bundle signed by a trusted key, every file intact?

Exit 0: valid. Exit 1: unsigned, signed by an untrusted key, a file changed after signing, or
the bundle fails its integrity checks (the line says which). Exit 2: a usage error (no trusted
key, a key file that is not an EC public key).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import emit
from sdk.audit import append_audit, audit_log_path, bundle_event
from sdk.bundle import SIGNATURE_NAME, Bundle
from sdk.errors import BundleError, ConfigError, ManifestError
from sdk.signing import SignatureStatus, verify_bundle
from sdk.trust import TRUSTED_KEYS_ENV, trust_policy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUB.pem",
        help="a trusted PEM public key (repeatable); default: the keys in $SHELFEDGE_TRUSTED_KEYS",
    )
    parser.epilog = "example: shelfedge verify out/quickstart/bundles/shelf_cnn-tflite-fp32 --trust keys/release.pub"


def run(args: argparse.Namespace) -> int:
    keys = [Path(k) for k in args.trust] or list(trust_policy(None).trusted_keys)
    if not keys:
        raise ConfigError(f"no trusted public key: pass --trust PUB.pem (repeatable) or set ${TRUSTED_KEYS_ENV}")
    try:
        status = verify_bundle(args.bundle, keys)
        if status.valid:  # then the manifest's own checks: hashes, every model file listed
            Bundle.open(args.bundle)
    except (BundleError, ManifestError) as e:
        status = SignatureStatus(signed=(Path(args.bundle) / SIGNATURE_NAME).is_file(), valid=False, reason=str(e))
    event = bundle_event("verify", "valid" if status.valid else "invalid", args.bundle, status=status)
    append_audit(audit_log_path(None), event)
    payload = {"bundle": args.bundle, **status.to_dict()}
    if status.valid:
        text = f"{args.bundle}: signature valid, by trusted key {status.key_id}; every file matches"
    else:
        text = f"{args.bundle}: NOT valid: {status.reason}"
    emit(args, payload, text)
    return 0 if status.valid else 1
