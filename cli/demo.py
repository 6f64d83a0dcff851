"""``shelfedge demo``: the kiosk web app on this machine, over bundles only.

Without ``--bundle``/``--recommender`` it serves what ``shelfedge quickstart`` made: the image
bundle converted for the profile (``out/quickstart/convert/<profile>/``, else
``out/quickstart/bundles/shelf_cnn-onnx-fp32``) and the basket recommender converted for it
(``out/quickstart/rec/convert/<profile>/``, else ``out/quickstart/rec/bundles/*-onnx-fp32``).
When none exist it runs ``shelfedge quickstart`` first in a child process: training needs
TensorFlow, and the app process must never import it (the app runs on bundles only).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli import log
from cli._common import QUICKSTART_OUT
from sdk.data import default_data_root
from sdk.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

DEFAULT_PROFILE = "x86-kiosk-cpu"
LOOPBACK = "127.0.0.1"
API_KEY_ENV = "SHELFEDGE_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="image classification bundle (default: the quickstart's, built if absent)")
    parser.add_argument("--recommender", help="basket recommendation bundle (default: the quickstart's)")
    parser.add_argument(
        "--profile", default=DEFAULT_PROFILE, help=f"hardware profile id or YAML path (default {DEFAULT_PROFILE})"
    )
    parser.add_argument(
        "--host",
        help=f"address to listen on (default {LOOPBACK}: this machine only); another address exposes the "
        "kiosk to the network, so it is only used when given here",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--api-key", help=f"require this key (X-API-Key) on the write endpoints (default: ${API_KEY_ENV}, else none)"
    )
    parser.add_argument(
        "--catalogue",
        help="Grocery Store dataset folder for product images and descriptions "
        "(default: $SHELFEDGE_DATA or ../shared/data/grocery when it has classes.csv; else names only)",
    )
    parser.add_argument("--quickstart-out", default=str(QUICKSTART_OUT), help="where the default bundles live")
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="do not run shelfedge quickstart when the default bundles are missing: say so and exit",
    )
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo accepted (default 10 MB)")
    parser.epilog = "example: shelfedge demo  (then open http://127.0.0.1:8000)"


def run(args: argparse.Namespace) -> int:
    # uvicorn and fastapi are the optional `demo` extra: imported when the command runs, so the
    # parser of every other command works without them (an ImportError becomes "install the extra").
    import uvicorn

    host = resolve_host(args.host)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port; pass 1-65535")
    out = Path(args.quickstart_out)
    profile_id = Path(args.profile).stem if args.profile.endswith((".yaml", ".yml")) else args.profile
    image, rec = args.bundle, args.recommender
    if image is None or rec is None:
        found_image, found_rec = default_bundles(out, profile_id)
        if (image is None and found_image is None) or (rec is None and found_rec is None):
            build_default_bundles(out, args.profile, allowed=not args.no_build)
            found_image, found_rec = default_bundles(out, profile_id)
        if image is None and not _is_kiosk(found_image) and not args.no_build:
            build_kiosk_bundle(out)  # the embedding and unknown rule that recognise and enrolment use
            found_image = default_bundles(out, profile_id)[0]
        image = image or found_image
        rec = rec or found_rec
        if image is None or rec is None:
            raise ConfigError(f"shelfedge quickstart ran but left no image or recommender bundle under {out}")
    app = build_app(
        image,
        rec,
        profile=args.profile,
        catalogue=args.catalogue,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
    )
    log(f"shelfedge demo: image bundle {image}, recommender {rec}, profile {args.profile}")
    if not ipaddress.ip_address(host).is_loopback:
        log(f"shelfedge demo: listening on {host}: other machines on the network can reach this kiosk")
    log(f"shelfedge demo: open http://{_url_host(host)}:{args.port}/  (API docs at /docs; Ctrl-C stops)")
    uvicorn.run(app, host=host, port=args.port, log_level="warning", access_log=False)
    return 0


def resolve_host(host: str | None) -> str:
    """The address to listen on: loopback unless ``host`` (from ``--host`` only) says otherwise.

    Raises:
        ConfigError: ``host`` is not an IP address.
    """
    if host is None:
        return LOOPBACK
    if host == "localhost":
        return LOOPBACK
    try:
        return str(ipaddress.ip_address(host))
    except ValueError as e:
        raise ConfigError(
            f"--host {host!r} is not an IP address; pass 127.0.0.1 (this machine), 0.0.0.0 (every interface) "
            "or one of this machine's addresses"
        ) from e


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def default_bundles(out: Path, profile: str) -> tuple[Path | None, Path | None]:
    """The quickstart's image and recommender bundles under ``out``, converted for ``profile`` first."""
    image = (
        _first_bundle(out / "kiosk", "image_classification")
        or _first_bundle(out / "convert" / profile, "image_classification")
        or _bundle_at(out / "bundles" / "shelf_cnn-onnx-fp32")
    )
    rec = _first_bundle(out / "rec" / "convert" / profile, None, items=True)
    if rec is None:
        rec = _first_bundle(out / "rec" / "bundles", None, items=True, suffix="-onnx-fp32")
    return image, rec


def _is_kiosk(path: Path | None) -> bool:
    return path is not None and path.parent.name == "kiosk"


def build_kiosk_bundle(out: Path) -> None:
    """``shelfedge kiosk-bundle`` from quickstart's Keras bundle, in a child process (TensorFlow stays out).

    A failure is logged and the demo goes on with the bundle it has (no enrolment, no unknown rule).
    """
    source = out / "bundles" / "shelf_cnn-keras-fp32"
    if not (source / "manifest.json").is_file():
        return
    command = [sys.executable, "-m", "cli", "kiosk-bundle", "--model", str(source), "--out", str(out / "kiosk")]
    log("shelfedge demo: making the kiosk image bundle (embedding + calibrated unknown rule) ...")
    if subprocess.run(command, check=False).returncode != 0:
        log("shelfedge demo: kiosk-bundle failed (see above): serving without enrolment or the unknown rule")


def _bundle_at(path: Path) -> Path | None:
    return path if (path / "manifest.json").is_file() else None


def _first_bundle(folder: Path, task: str | None, *, items: bool = False, suffix: str = "") -> Path | None:
    if not folder.is_dir():
        return None
    for candidate in sorted(folder.iterdir()):
        manifest = candidate / "manifest.json"
        if not manifest.is_file() or not candidate.name.endswith(suffix):
            continue
        if items and not (candidate / "items.npz").is_file():
            continue
        if task is not None:
            try:
                if json.loads(manifest.read_text()).get("task") != task:
                    continue
            except (OSError, ValueError):
                continue
        return candidate
    return None


def build_default_bundles(out: Path, profile: str, *, allowed: bool) -> None:
    """Run ``shelfedge quickstart --out out --profile profile`` in a child process.

    A child process, not ``cli.main`` here: quickstart trains with TensorFlow, which must not be
    loaded in the app's process.

    Raises:
        ConfigError: ``allowed`` is false (the message gives the command), or quickstart failed.
    """
    command = [sys.executable, "-m", "cli", "quickstart", "--out", str(out), "--profile", profile]
    if not allowed:
        raise ConfigError(
            f"no default bundles under {out}; build them first with: shelfedge quickstart --out {out} "
            f"--profile {profile}  (or pass --bundle and --recommender)"
        )
    log(f"shelfedge demo: no bundles under {out} yet: running shelfedge quickstart (training takes minutes) ...")
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise ConfigError(
            f"shelfedge quickstart exited with {result.returncode}; fix what it said, run it again, "
            "or pass --bundle and --recommender"
        )


def build_app(
    image: str | Path,
    rec: str | Path,
    *,
    profile: str | None,
    catalogue: str | None,
    api_key: str | None,
    max_upload_bytes: int,
) -> FastAPI:
    """The kiosk app over ``image`` and ``rec`` (what ``run`` serves), without TensorFlow.

    Raises:
        ConfigError, BundleError, ManifestError, ProfileError, BackendUnavailableError: as
            :func:`demo_app.server.create_app`.
    """
    from demo_app.server import create_app  # the optional `demo` extra, as in run()

    root: Path | None = Path(catalogue) if catalogue else default_data_root()
    if catalogue is None and root is not None and not (root / "classes.csv").is_file():
        root = None
    return create_app(
        image, rec, profile=profile, catalogue_root=root, api_key=api_key, max_upload_bytes=max_upload_bytes
    )
