"""``python -m PositionRegressionADWeb``: start the web viewer.

    python -m PositionRegressionADWeb --data-dir DIR [--host 127.0.0.1] [--port 8080]
        [--model BUNDLE] [--sample SCAN] [--max-upload-mb 512]

It binds 127.0.0.1 unless --host says otherwise, and warns when it is opened wider: the viewer has
no login, so whoever reaches the port can read the scans under --data-dir and run detections.
When the server listens it prints ``PositionRegressionADWeb ready at http://HOST:PORT/`` on stdout
(with --port 0 the system picks a free port). Exit code 2 when the settings cannot be used.

It only parses the command line and starts ``app``; it does not build the page.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from PositionRegressionADWeb.settings import DEFAULT_HOST, DEFAULT_PORT, WebSettings, default_sample_path
from PositionRegressionADWeb.uploads import DEFAULT_MAX_UPLOAD_MB
from ppr.errors import PPRError

READY_LINE = "PositionRegressionADWeb ready at"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PositionRegressionADWeb", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the only folder the page may open scans and model bundles from")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to listen on (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model bundle offered as the default (default: the bundled model)")
    parser.add_argument("--sample", type=Path, default=None,
                        help="scan opened by 'Load the sample head CT' (default: the bundled sample)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest upload accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    return parser


def is_local_host(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wide_open_warning(host: str, data_dir: Path) -> str | None:
    """The warning printed when --host lets other machines in, else ``None``."""
    if is_local_host(host):
        return None
    return (f"warning: --host {host} opens the viewer to other machines. It has no login: anyone who can reach "
            f"this port can view the scans in {data_dir}, upload scans and run detections. Use it only on a "
            "trusted network, or keep the default 127.0.0.1 and reach it through an SSH tunnel.")


def settings_from(args: argparse.Namespace) -> WebSettings:
    from PositionRegressionADWeb.paths import data_folder

    if args.max_upload_mb <= 0:
        raise PPRError("--max-upload-mb must be positive.")
    sample = args.sample or default_sample_path()
    if sample is not None and not sample.is_file():
        raise PPRError(f"The sample scan {sample} does not exist: check --sample.")
    options = {"model_path": args.model.resolve()} if args.model else {}
    return WebSettings(data_dir=data_folder(args.data_dir), sample_path=sample.resolve() if sample else None,
                       max_upload_bytes=int(args.max_upload_mb * 1_000_000), **options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except PPRError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warning = wide_open_warning(args.host, settings.data_dir)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # trame would read this command line as its own; it gets its settings from here only.
    os.environ["TRAME_ARGS"] = ""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        # No display: render offscreen on the CPU through EGL (Mesa llvmpipe).
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

    from PositionRegressionADWeb.app import PositionRegressionWebApp

    app = PositionRegressionWebApp(settings)
    server = app.server
    server.controller.on_server_ready.add(
        lambda **_: print(f"{READY_LINE} http://{args.host}:{server.port}/", flush=True))
    server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
